"""Sends held for the current request: ``send_after_response`` and what delivers or drops them.

``sig.send_after_response(sender, **kw)`` appends the send to the :data:`Hold` of the request
being served; the code that owns the request (``SignalsMiddleware``) sets :data:`current` to a
fresh list before the request runs, resets it after, and calls :func:`deliver` (each send goes
to ``sig.send_nowait``) or :func:`drop`. This module knows nothing of ASGI: any request handler
(a queue consumer, a CLI command) can do the same.

Why the ``ContextVar`` holds a mutable list and not a tuple replaced on every hold:
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
from contextvars import Context, ContextVar, copy_context
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._signal import AsyncSignal

__all__ = ["CLOSED", "Hold", "current", "deliver", "drop", "hold", "names", "observers"]

_NO_REQUEST: Final = (
    "send_after_response() holds the send until the current request has succeeded, but no "
    "request served by asignals.contrib.asgi.SignalsMiddleware is running here: add it with "
    "`app.add_middleware(SignalsMiddleware)` (FastAPI/Starlette) or wrap the ASGI app in "
    "`SignalsMiddleware(app)`; outside a request, use `sig.send_nowait(...)` instead"
)

HeldSend = tuple["AsyncSignal", Any, dict[str, Any], Context]
#: The held sends of one request, in call order, then :data:`CLOSED` once they were delivered
#: or dropped. A bare list: the middleware makes one per request, and a list costs a fifth of
#: an object with attributes.
Hold = list[Any]
#: The last item of a closed :data:`Hold`.
CLOSED: Final = object()

#: ``observer(signal, sender, kwargs, status, exception)``
DropObserver = Callable[
    ["AsyncSignal", Any, dict[str, Any], int | None, BaseException | None], None
]

#: Called for every dropped send; the pytest recorder adds itself here while it records.
observers: list[DropObserver] = []

#: The hold of the request running in this context; the request's owner sets and resets it.
current: ContextVar[Hold | None] = ContextVar("asignals_held", default=None)


def _name(signal: AsyncSignal) -> str:
    name = getattr(signal, "name", None)
    return str(name) if name else repr(signal)


def hold(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
    """Hold ``signal.send_nowait(sender, **kwargs)`` until the current request has succeeded.

    Raises ``RuntimeError`` outside a request (saying how to add the middleware) and after the
    request's held sends were delivered or dropped (a task that outlived its request).
    """
    held = current.get()
    if held is None:
        raise RuntimeError(_NO_REQUEST)
    if held and held[-1] is CLOSED:
        raise RuntimeError(
            f"send_after_response() of {_name(signal)} after its request had finished (its held "
            f"sends were already delivered or dropped): this code outlived the request, e.g. in "
            f"a task it started; use `sig.send_nowait(...)` there"
        )
    held.append((signal, sender, kwargs, copy_context()))


def names(held: Hold) -> str:
    """The held signals, for log messages: ``order_confirmed, audit``."""
    return ", ".join(_name(send[0]) for send in held if send is not CLOSED)


def deliver(held: Hold) -> list[Exception]:
    """Hand every held send to ``send_nowait``, in call order, each in its own context; close.

    A send that cannot be scheduled (no dispatcher, a full backlog) does not stop the others;
    the errors are returned, in order, for the caller to report.
    """
    sends = held[:]
    held[:] = [CLOSED]
    errors: list[Exception] = []
    for signal, sender, kwargs, context in sends:
        try:
            context.run(signal.send_nowait, sender, **kwargs)
        except Exception as exc:
            errors.append(exc)
    return errors


def drop(held: Hold, status: int | None, exception: BaseException | None) -> None:
    """Forget every held send, the request having failed with ``status`` or ``exception``;
    close."""
    sends = [send for send in held if send is not CLOSED]
    held[:] = [CLOSED]
    if observers:
        for signal, sender, kwargs, _ in sends:
            for observer in list(observers):
                observer(signal, sender, kwargs, status, exception)
