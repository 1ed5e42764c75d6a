"""The replacements ``instrument()`` puts on ``AsyncSignal`` and ``asignals.background``.

Each is built for one :class:`Session` around the original it replaces, and ``uninstrument()``
puts the originals back: an uninstrumented program runs the core's own methods, unchanged.

Background sends: ``send_nowait`` / ``send_later`` reach the dispatcher through
``asignals.background.submit`` / ``submit_wait``, which start the background send's task in the
caller's context, so the span that scheduled it is the parent of its span whenever it runs
(after the response, too). To tell that send from the ones its receivers make, the submit marks
the context for the task it creates; the task's first ``send_robust`` (the background send
itself) takes the mark off its own copy of the context.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

from ._core import AsyncSignal
from ._metrics import Metrics
from ._session import Results, Send, Session

Submit = Callable[[AsyncSignal[..., Any], Any, dict[str, Any]], None]
SubmitWait = Callable[[AsyncSignal[..., Any], Any, dict[str, Any]], Coroutine[Any, Any, None]]


class _Scheduled:
    """The mark a submit leaves in the context of the background send it schedules."""

    __slots__ = ("submitting",)

    def __init__(self) -> None:
        # True while the submit that set it runs: a ``send_nowait`` from a worker thread hops
        # to the event loop and calls ``submit`` again there, with this mark in its context.
        self.submitting = True


_scheduled: ContextVar[_Scheduled | None] = ContextVar("asignals_otel_scheduled", default=None)


def wrap_send(session: Session, original: Send, robust: bool) -> Send:
    """``send`` or ``send_robust`` with a span, for the signals the session traces."""
    method = "send_robust" if robust else "send"

    def send(self: AsyncSignal[..., Any], *args: Any, **named: Any) -> Coroutine[Any, Any, Results]:
        if robust and _scheduled.get() is not None:
            _scheduled.set(None)  # in the background send's own task: its context only
            return _background(session, original, self, args, named)
        if not session.traces(self):
            return original(self, *args, **named)
        return session.send(self, original, args, named, robust, False)

    send.__name__ = method
    send.__qualname__ = f"AsyncSignal.{method}"
    functools.update_wrapper(send, original, assigned=("__doc__",), updated=())
    return send


async def _background(
    session: Session,
    original: Send,
    signal: AsyncSignal[..., Any],
    args: tuple[Any, ...],
    named: dict[str, Any],
) -> Results:
    """The background send: a span marked as such, then its outcome and the pending count."""
    metrics = session.metrics
    outcome = "cancelled"
    name = session.info(signal).name
    try:
        if session.traces(signal):
            results = await session.send(signal, original, args, named, True, True)
        else:
            results = await original(signal, *args, **named)
        outcome = "completed"
        for _, value in results:
            if isinstance(value, Exception):
                outcome = "failed"
                break
        return results
    except Exception:
        outcome = "failed"
        raise
    finally:
        metrics.pending -= 1
        Metrics.count(metrics.finished, (name, outcome))


class _Scheduling:
    """Around one submit: the pending count, and the mark for the task it starts."""

    __slots__ = ("_mark", "_metrics", "_token")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def __enter__(self) -> None:
        self._mark = _Scheduled()
        self._token = _scheduled.set(self._mark)
        self._metrics.pending += 1

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self._metrics.pending -= 1  # refused: nothing was scheduled
        self._mark.submitting = False
        _scheduled.reset(self._token)


def wrap_submit(session: Session, original: Submit) -> Submit:
    """``asignals.background.submit`` counting the pending send and marking its context."""

    def submit(signal: AsyncSignal[..., Any], sender: Any, kwargs: dict[str, Any]) -> None:
        current = _scheduled.get()
        if current is not None and current.submitting:
            original(signal, sender, kwargs)  # the hop to the loop of a submit from a thread
            return
        with _Scheduling(session.metrics):
            original(signal, sender, kwargs)

    functools.update_wrapper(submit, original, assigned=("__doc__",), updated=())
    return submit


def wrap_submit_wait(session: Session, original: SubmitWait) -> SubmitWait:
    """``asignals.background.submit_wait`` (``send_later``), as :func:`wrap_submit`."""

    async def submit_wait(
        signal: AsyncSignal[..., Any], sender: Any, kwargs: dict[str, Any]
    ) -> None:
        with _Scheduling(session.metrics):
            await original(signal, sender, kwargs)

    functools.update_wrapper(submit_wait, original, assigned=("__doc__",), updated=())
    return submit_wait
