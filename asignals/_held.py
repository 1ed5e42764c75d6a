"""Sends held for the current request: ``send_after_response`` and what delivers or drops them.

``sig.send_after_response(sender, **kw)`` appends the send to the :class:`Hold` of the request
being served; the server-side code that owns the request (``SignalsMiddleware``) later calls
:func:`deliver` (each send goes to ``sig.send_nowait``) or :func:`drop`. This module knows
nothing of ASGI: any request handler (a queue consumer, a CLI command) can open a hold with
:func:`begin` and close it with :func:`end`.

Why the ``ContextVar`` holds a mutable :class:`Hold` and not a tuple replaced on every hold:
frameworks run parts of one request in *copies* of its context. Starlette runs a ``def``
endpoint through ``anyio.to_thread.run_sync``, which calls it in ``copy_context()`` in a worker
thread; ``BaseHTTPMiddleware`` runs the rest of the app in a child task, which also copies the
context. A copy shares the object the variable points to, so an append made there is seen by
the middleware; a value *set* there would be lost with the copy.

Each held send keeps a ``copy_context()`` of the moment of the call and is handed over inside
it, so its receivers see the context variables (request id, tracing span) of that moment, as
with ``send_nowait`` called there. A ``Context`` copy is a constant-time snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Context, ContextVar, Token, copy_context
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .signal import AsyncSignal

__all__ = ["Hold", "begin", "deliver", "drop", "end", "hold", "observers"]

_NO_REQUEST: Final = (
    "send_after_response() holds the send until the current request has succeeded, but no "
    "request served by asignals.contrib.asgi.SignalsMiddleware is running here: add it with "
    "`app.add_middleware(SignalsMiddleware)` (FastAPI/Starlette) or wrap the ASGI app in "
    "`SignalsMiddleware(app)`; outside a request, use `sig.send_nowait(...)` instead"
)

HeldSend = tuple["AsyncSignal", Any, dict[str, Any], Context]
#: ``observer(signal, sender, kwargs, status, exception)``
DropObserver = Callable[
    ["AsyncSignal", Any, dict[str, Any], int | None, BaseException | None], None
]

#: Called for every dropped send; the pytest recorder adds itself here while it records.
observers: list[DropObserver] = []


class Hold:
    """The sends held for one request, in call order; closed once delivered or dropped."""

    __slots__ = ("closed", "sends")

    def __init__(self) -> None:
        self.sends: list[HeldSend] = []
        self.closed = False

    def names(self) -> str:
        """The held signals, for log messages: ``order_confirmed, audit``."""
        return ", ".join(_name(signal) for signal, _, _, _ in self.sends)


_current: ContextVar[Hold | None] = ContextVar("asignals_held", default=None)


def _name(signal: AsyncSignal) -> str:
    name = getattr(signal, "name", None)
    return str(name) if name else repr(signal)


def hold(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
    """Hold ``signal.send_nowait(sender, **kwargs)`` until the current request has succeeded.

    Raises ``RuntimeError`` outside a request (saying how to add the middleware) and after the
    request's held sends were delivered or dropped (a task that outlived its request).
    """
    current = _current.get()
    if current is None:
        raise RuntimeError(_NO_REQUEST)
    if current.closed:
        raise RuntimeError(
            f"send_after_response() of {_name(signal)} after its request had finished (its held "
            f"sends were already delivered or dropped): this code outlived the request, e.g. in "
            f"a task it started; use `sig.send_nowait(...)` there"
        )
    current.sends.append((signal, sender, kwargs, copy_context()))


def begin() -> tuple[Hold, Token[Hold | None]]:
    """Open a hold for the request about to run here; give the token back to :func:`end`."""
    current = Hold()
    return current, _current.set(current)


def end(token: Token[Hold | None]) -> None:
    """Stop holding sends in this context (the hold itself stays as delivered or dropped)."""
    _current.reset(token)


def deliver(current: Hold) -> list[Exception]:
    """Hand every held send to ``send_nowait``, in call order, each in its own context.

    A send that cannot be scheduled (no dispatcher, a full backlog) does not stop the others;
    the errors are returned, in order, for the caller to report.
    """
    current.closed = True
    errors: list[Exception] = []
    for signal, sender, kwargs, context in current.sends:
        try:
            context.run(signal.send_nowait, sender, **kwargs)
        except Exception as exc:
            errors.append(exc)
    current.sends = []
    return errors


def drop(current: Hold, status: int | None, exception: BaseException | None) -> None:
    """Forget every held send: the request failed with ``status`` or ``exception``."""
    current.closed = True
    if observers:
        for signal, sender, kwargs, _ in current.sends:
            for observer in list(observers):
                observer(signal, sender, kwargs, status, exception)
    current.sends = []
