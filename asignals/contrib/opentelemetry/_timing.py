"""Receivers behind a timer, in the rows the core's send loop runs.

While instrumented, the rows a traced signal's receiver cache is filled with have a
:class:`Timer` for getter: per send, it hands the core a :class:`Timing` of the receiver (or
None once the receiver is gone, as the plain getter would), which records when the receiver
started and ended and what it raised, into the :class:`Sending` of the instrumented send that
is running. The spans and the duration histogram are recorded from those after the send, with
the real times, without a span opened per receiver while it runs. A timing keeps its row's
mode (sync, async, thread), so the core runs it exactly as it would the receiver itself.

The first timing of a send also starts the send's span (``Session.begin``): at that
moment the core has checked the call's arguments and found a receiver, so a send that raises
``TypeError`` or reaches nobody records nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from contextvars import ContextVar, Token
from time import time_ns
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from ._core import ASYNC

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ._core import Row
    from ._session import Session, SignalInfo


class Sending(list["Timing"]):
    """One instrumented send: the timings of the receivers the core fetched, in that order,
    and what its span needs. A list itself, filled in by ``Session.send``: one object and no
    ``__init__`` call per send."""

    __slots__ = (
        "args",
        "background",
        "begun",
        "context",
        "info",
        "named",
        "robust",
        "span",
        "token",
    )

    info: SignalInfo
    args: tuple[Any, ...]
    named: dict[str, Any]
    robust: bool
    background: bool
    begun: bool  # set by ``Session.begin``, as the core fetches the first receiver
    span: Span | None
    context: Context | None  # the send's span made current: where its receivers run
    token: Token[Context] | None


#: The instrumented send running in this context; set by :meth:`Session.send` around the core's.
current: ContextVar[Sending | None] = ContextVar("asignals_otel_sending", default=None)


class Timer:
    """The getter of one row while instrumented: the row's receiver, behind a timing."""

    __slots__ = ("attributes", "begin", "name", "receiver", "timing")

    def __init__(self, session: Session, info: SignalInfo, row: Row) -> None:
        get, mode, entry = row
        self.begin = session.begin
        self.receiver = get
        self.name: str = entry.name
        self.attributes = info.receiver_attributes(entry.name)
        self.timing: type[Timing] = Async if mode == ASYNC else Sync

    def get(self) -> Any:
        fn = self.receiver()
        if fn is None:
            return None
        sending = current.get()
        if sending is None:
            return fn  # a send outside the instrumentation (one racing uninstrument())
        if not sending.begun:
            self.begin(sending)
        # Kept from here, not by the timing itself: a timing that referred to its send would
        # make a reference cycle per send, left to the garbage collector.
        timing = self.timing(fn, self, sending.context)
        sending.append(timing)
        return timing


def wrapped(session: Session, info: SignalInfo, rows: tuple[Row, ...]) -> tuple[Row, ...]:
    """The rows with a :class:`Timer` for getter, their modes and entries unchanged."""
    return tuple((Timer(session, info, row).get, row[1], row[2]) for row in rows)


def _enter(context: Context | None) -> Token[Context] | None:
    """Make the send's span current where the core started a task before the span existed.

    With ``timeout=`` or ``max_concurrency=``, the core copies the context for its tasks before
    it calls the first receiver; the receivers' own sends must still be children of the send.
    """
    if context is None or otel_context.get_current() is context:
        return None
    return otel_context.attach(context)


class Timing:
    """One receiver of one send: its start and end (epoch ns, 0 until then: a timing the core
    fetched but did not call), its error, and whether it was cancelled (by a failing sibling,
    a ``timeout``, the caller). ``context``: the send's, where its span is current."""

    __slots__ = ("cancelled", "context", "end", "error", "fn", "start", "timer")

    def __init__(self, fn: Any, timer: Timer, context: Context | None) -> None:
        self.fn = fn
        self.timer = timer
        self.context = context
        self.start = 0
        self.end = 0
        self.error: Exception | None = None
        self.cancelled = False

    def __call__(self, **named: Any) -> Any:
        """Run the receiver with ``named``, timing it."""
        raise NotImplementedError

    async def _awaited(self, awaitable: Awaitable[Any] | None, named: dict[str, Any]) -> Any:
        """Await ``awaitable`` in the send's context, timing it to its end; given None, call the
        (async) receiver first, timing it from its start."""
        token = _enter(self.context)
        try:
            if awaitable is None:
                self.start = time_ns()
                running: Awaitable[Any] = self.fn(**named)
            else:
                running = awaitable
            return await running
        except Exception as exc:
            self.error = exc
            raise
        except BaseException:
            self.cancelled = True
            raise
        finally:
            self.end = time_ns()
            if token is not None:
                otel_context.detach(token)


class Sync(Timing):
    """A sync receiver (inline or in a thread); an awaitable it returns is timed to its end."""

    __slots__ = ()

    def __call__(self, **named: Any) -> Any:
        self.start = time_ns()
        try:
            value = self.fn(**named)
        except Exception as exc:
            self.error = exc
            self.end = time_ns()
            raise
        except BaseException:
            self.cancelled = True
            self.end = time_ns()
            raise
        if value is not None and hasattr(type(value), "__await__"):  # pyright: ignore[reportUnknownArgumentType] - type() of an Any
            return self._awaited(value, named)
        self.end = time_ns()
        return value


class Async(Timing):
    """An async receiver: the coroutine the core runs times the receiver's own."""

    __slots__ = ()

    def __call__(self, **named: Any) -> Coroutine[Any, Any, Any]:
        return self._awaited(None, named)
