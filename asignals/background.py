"""The background dispatcher: what runs ``send_nowait`` sends, bounds them and drains them.

A send the caller should not wait for (``sig.send_nowait(sender, **kw)``, ``await
sig.send_later(...)``, a held ``send_after_response``) is a task of a :class:`Dispatcher`. Open
one around the program with ``async with asignals.dispatcher():``, or give a Starlette/FastAPI
app ``lifespan=asignals.contrib.asgi.lifespan``: every task on that event loop then finds it,
request handlers included. It bounds how many sends may be pending (``max_pending``), and
leaving the block, normally or with an exception, waits for every one of them (up to
``drain_timeout``, after which the rest are cancelled and each is logged), so nothing scheduled
is lost silently at shutdown. Once shutdown began it accepts only the sends its own running
receivers chain; every other caller gets :class:`DispatcherClosed`.

The most used names are re-exported from :mod:`asignals`. See
[Background sends](../guides/background.md).
"""

from __future__ import annotations

import asyncio
import logging
import reprlib
import sys
import weakref
from contextvars import ContextVar, Token, copy_context
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.from_thread

from ._receivers import describe

if TYPE_CHECKING:
    from ._signal import AsyncSignal

__all__ = [
    "DEFAULT_MAX_PENDING",
    "BacklogFull",
    "Dispatcher",
    "DispatcherClosed",
    "current_dispatcher",
    "dispatcher",
    "submit",
    "submit_wait",
]

logger = logging.getLogger("asignals.background")

# How it works.
#
# Finding "the current dispatcher" is the subtle part. ASGI servers run the lifespan in one task
# and every request in tasks created from the server's context, not the lifespan's, so a
# ``ContextVar`` set when the lifespan opens the dispatcher is invisible to request handlers.
# Each open dispatcher is therefore also registered against its event loop (the asyncio loop, or
# trio's token): any task on that loop finds the first one opened there. A ``ContextVar`` takes
# precedence, so an explicitly nested ``async with dispatcher()`` captures the sends made inside
# its block, and a background receiver's own ``send_nowait`` goes to the dispatcher running it.
#
# Once the exit has begun, a dispatcher accepts only sends made *while one of its background sends
# runs* (by its receivers, the tasks they start and the threads they call into): those are part of
# the work being drained. Every other task is refused with :class:`DispatcherClosed`, also a task
# created inside the ``async with`` block, which inherits the block's ``ContextVar``: a periodic
# producer would otherwise keep the drain going for ever. So the background send's own task sets a
# second ``ContextVar`` (``_running_in``) to a record that is marked finished when that send ends.
# After the exit, a send on the same loop still raises :class:`DispatcherClosed`: the last
# dispatcher closed on each loop is remembered (its description only, keyed weakly by the loop,
# forgotten when a new dispatcher opens there), not the generic "no dispatcher" error.
#
# ``send_nowait`` from a thread (a FastAPI/Starlette ``def`` endpoint runs in a worker thread of
# ``anyio.to_thread``) hops to the event loop with ``anyio.from_thread.run_sync`` and waits for the
# submit there, in the calling thread's context. That costs a round trip to the loop, but keeps the
# contract of the loop's thread: ``BacklogFull``, ``DispatcherClosed`` and "no dispatcher" are
# raised to the caller at once. Remembering each dispatcher's loop and calling
# ``loop.call_soon_threadsafe`` would return sooner, but would drop those errors into the loop's
# exception handler, i.e. lose a send silently, and would need a guess of which loop is meant. A
# thread AnyIO did not start cannot find the loop: it gets a ``RuntimeError`` showing how to hand
# the send over.

DEFAULT_MAX_PENDING: Final[int] = 10_000
"""The default ``max_pending`` of :func:`dispatcher`: background sends scheduled and unfinished.

Large enough that an ordinary app never meets it, small enough that a producer outrunning its
receivers fails with :class:`BacklogFull` long before the pending sends exhaust memory. Pass
``max_pending=`` to :func:`dispatcher` (or to ``make_lifespan``) to choose another bound.
"""

_NO_DISPATCHER: Final = (
    "send_nowait() needs a running dispatcher: wrap your program in "
    "`async with asignals.dispatcher():`, or give your FastAPI/Starlette app "
    "`lifespan=asignals.contrib.asgi.lifespan`"
)
_NO_LOOP: Final = (
    "send_nowait() found no event loop: background sends run on a dispatcher inside a running "
    "event loop. Open one with `async with asignals.dispatcher():` around your program (or give "
    "your FastAPI/Starlette app `lifespan=asignals.contrib.asgi.lifespan`), and call "
    "send_nowait() on the event loop's thread, or in a worker thread started by "
    "anyio.to_thread.run_sync (as FastAPI and Starlette run `def` endpoints). From a thread of "
    "your own, take `token = anyio.lowlevel.current_token()` on the loop and call "
    "`anyio.from_thread.run_sync(functools.partial(sig.send_nowait, sender, key=value), "
    "token=token)` (AnyIO >= 4.11), or run the thread with `await anyio.to_thread.run_sync(...)`"
)

_NEW: Final = 0
_OPEN: Final = 1
_CLOSING: Final = 2
_CLOSED: Final = 3

# The dispatcher of an explicit ``async with`` block, or of the background send running now.
_current: ContextVar[Dispatcher | None] = ContextVar("asignals_dispatcher", default=None)
# The background send running now: set only in its own task (inherited by what it starts).
_running_in: ContextVar[_Run | None] = ContextVar("asignals_background_send", default=None)
# Open (or draining) dispatchers by event loop, in the order they were entered.
_by_loop: dict[object, list[Dispatcher]] = {}
# The last dispatcher closed on each loop, described, until a new one opens there.
_closed_on: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


class BacklogFull(RuntimeError):
    """Raised by ``send_nowait`` when the dispatcher already has ``max_pending`` sends pending.

    It means the receivers cannot keep up with the sends: nothing was scheduled, and the
    caller decides what to do. Use ``await sig.send_later(...)`` instead where the producer can
    wait for room (back-pressure), raise ``max_pending`` in :func:`dispatcher` if the burst is
    expected, or catch it to shed load. A ``RuntimeError``, so code written for "no
    dispatcher" errors catches it too.
    """


class DispatcherClosed(RuntimeError):
    """Raised by a background send made once the dispatcher has begun to shut down, or after.

    While a dispatcher drains on exit, it accepts only the sends chained by its own running
    background receivers (they are part of the work being drained); any other task, a
    periodic producer for instance, gets this error, so the drain cannot go on for ever.
    After the exit, a send on the same event loop gets it too, rather than the generic "no
    dispatcher". Send before shutdown, ``await sig.send(...)`` instead, or open a new
    dispatcher. A ``RuntimeError``, as the "no dispatcher" error is.
    """


class _Run:
    """One background send while it runs: sends made under it may join its dispatcher's drain."""

    __slots__ = ("active", "dispatcher")

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.active = True


def _closed_error(description: str) -> DispatcherClosed:
    return DispatcherClosed(
        f"send_nowait() after shutdown: {description} has shut down and accepts no new "
        f"background sends; send before shutdown, `await sig.send(...)` instead, or open a new "
        f"dispatcher with `async with asignals.dispatcher():`"
    )


def _loop_key() -> object | None:
    """What identifies the running event loop: the asyncio loop or the trio token."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            token: object = trio.lowlevel.current_trio_token()
            return token
        except RuntimeError:
            pass
    return None


class Dispatcher:
    """Owns background sends: their tasks, a bounded backlog and a drain on exit.

    Create it with :func:`dispatcher` (the same arguments) and enter it once with ``async
    with``; ``sig.send_nowait(...)`` inside the block, and from any task or AnyIO worker
    thread on the same event loop, schedules there. Its counters are for monitoring and
    tests: expose ``pending`` as a gauge, check ``peak_pending`` against ``max_pending``.
    :func:`current_dispatcher` finds the one in use.

    Cancelling the ``async with`` block does not cancel the pending sends: the drain on exit
    decides their fate (``drain_timeout``), on asyncio and trio alike. On trio the block must
    be exited in the task that entered it, as for any nursery.

    :param max_pending: the most background sends scheduled and not finished at once
        (``None``: unbounded); see :func:`dispatcher`.
    :param drain_timeout: seconds the exit waits for pending sends before cancelling them
        (``None``: as long as they take); see :func:`dispatcher`.
    :raises ValueError: ``max_pending`` is not a positive int or ``None``, or
        ``drain_timeout`` is negative.
    """

    def __init__(
        self,
        *,
        max_pending: int | None = DEFAULT_MAX_PENDING,
        drain_timeout: float | None = None,
    ) -> None:
        if max_pending is not None and (
            isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1
        ):
            raise ValueError(f"max_pending must be a positive int or None; got {max_pending!r}")
        if drain_timeout is not None and not drain_timeout >= 0:
            raise ValueError(f"drain_timeout must be >= 0 seconds or None; got {drain_timeout!r}")
        self.max_pending: int | None = max_pending
        """The bound on pending sends: past it ``send_nowait`` raises, ``send_later`` waits.

        ``None`` for no bound. Fixed when the dispatcher is entered: change it before that.
        """
        self.drain_timeout: float | None = drain_timeout
        """Seconds the exit waits for pending sends before cancelling and logging them.

        ``None`` waits as long as they take. Read at exit, so it may be changed before then
        (to shorten the drain when shutdown must be quick).
        """
        self.pending: int = 0
        """Background sends scheduled and not finished yet (running or waiting to run).

        The backlog's current size: a number that keeps growing means the receivers are
        slower than the sends. Zero once the exit has drained.
        """
        self.peak_pending: int = 0
        """The highest ``pending`` reached so far: how close the backlog came to its bound."""
        self.submitted: int = 0
        """How many background sends this dispatcher has accepted in all."""
        self._state = _NEW
        self._waiting = 0  # send_later callers blocked on a full backlog
        self._deadline_passed = False
        self._loop: object = None
        self._token: Token[Dispatcher | None] | None = None
        # Plain asyncio tasks, or a trio nursery: an AnyIO task group costs 5-10x more per send.
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._nursery_cm: Any = None
        self._nursery: Any = None
        self._trio_scope: Any = None  # trio.CancelScope
        self._scopes: set[Any] = set()  # the shields of the trio sends running now
        self._room: anyio.Semaphore | None = None
        self._idle: anyio.Event | None = None
        self._cancelled: type[BaseException] = BaseException

    def __repr__(self) -> str:
        state = ("new", "open", "draining", "closed")[self._state]
        return (
            f"<asignals.Dispatcher {state} pending={self.pending} "
            f"max_pending={self.max_pending} drain_timeout={self.drain_timeout}>"
        )

    # -- the context manager ---------------------------------------------------------------

    async def __aenter__(self) -> Dispatcher:
        if self._state != _NEW:
            raise RuntimeError(
                f"{self!r} was already entered; a dispatcher can be used for one "
                f"`async with` only: create a new one with asignals.dispatcher()"
            )
        loop = _loop_key()
        if isinstance(loop, asyncio.AbstractEventLoop):
            self._aloop = loop
        else:
            import trio

            self._trio_scope = trio.CancelScope
            self._nursery_cm = trio.open_nursery()
            self._nursery = await self._nursery_cm.__aenter__()
        self._loop = loop
        self._cancelled = anyio.get_cancelled_exc_class()
        self._idle = anyio.Event()
        if self.max_pending is not None:
            self._room = anyio.Semaphore(self.max_pending)
        self._state = _OPEN
        _by_loop.setdefault(loop, []).append(self)
        if loop is not None:
            _closed_on.pop(loop, None)
        self._token = _current.set(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _CLOSING
        try:
            # Drain even when the block is being cancelled: a queued send is never dropped
            # silently. drain_timeout bounds this.
            with anyio.CancelScope(shield=True):
                await self._drain()
        finally:
            self._state = _CLOSED
            self._unregister()
        # Every send has finished (or was cancelled at the deadline and has unwound).
        if self._nursery_cm is not None:
            await self._nursery_cm.__aexit__(None, None, None)

    def _unregister(self) -> None:
        if self._loop is not None:
            _closed_on[self._loop] = repr(self)
        stack = _by_loop.get(self._loop)
        if stack is not None:
            if self in stack:
                stack.remove(self)
            if not stack:
                _by_loop.pop(self._loop, None)
        if self._token is not None:
            try:
                _current.reset(self._token)
            except ValueError:
                # Exited from another context than it was entered in (some test runners
                # run fixture setup and teardown in different tasks): just stop pointing here.
                if _current.get() is self:
                    _current.set(None)
            self._token = None

    async def _drain(self) -> None:
        assert self._idle is not None
        if self.pending == 0 and self._waiting == 0:
            return
        if self.drain_timeout is None:
            await self._idle.wait()
            return
        with anyio.move_on_after(self.drain_timeout):
            await self._idle.wait()
        if self.pending or self._waiting:
            self._deadline_passed = True
            logger.warning(
                "asignals dispatcher: drain deadline of %ss passed with %d background send(s) "
                "still running; cancelling them",
                self.drain_timeout,
                self.pending,
            )
            for scope in list(self._scopes):
                scope.cancel()
            for task in list(self._tasks):
                task.cancel()
            await self._idle.wait()

    # -- scheduling -------------------------------------------------------------------------

    def _check_accepting(self) -> None:
        if self._state == _OPEN:
            return
        if self._state == _CLOSING:
            run = _running_in.get()
            if run is not None and run.active and run.dispatcher is self:
                return  # chained from one of this dispatcher's running sends: drained too
            raise DispatcherClosed(
                f"send_nowait() after shutdown began: {self!r} is draining and accepts only "
                f"the sends its own background receivers chain; await sig.send(...) instead, "
                f"or send before shutdown"
            )
        if self._state == _NEW:
            raise RuntimeError(f"{self!r} is not entered yet: use `async with` first")
        raise _closed_error(repr(self))

    def submit(self, signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
        """Schedule ``signal.send_robust(sender, **kwargs)`` on this dispatcher, now.

        The step under ``send_nowait``, for code that holds a dispatcher and wants to schedule
        on that one, not on whichever is current (an integration that opens its own). Unlike
        ``send_nowait`` it does not check the keyword arguments against a typed signal's spec,
        and it keeps ``kwargs`` itself until the send runs: do not change the dict afterwards.

        :param signal: the signal to send.
        :param sender: the sender, as for :meth:`~asignals.AsyncSignal.send`.
        :param kwargs: the keyword arguments of the send.
        :raises BacklogFull: ``max_pending`` sends are already pending.
        :raises DispatcherClosed: the dispatcher is shutting down (and the caller is not one of
            its running sends) or has shut down.
        :raises RuntimeError: the dispatcher was not entered yet.
        """
        self._check_accepting()
        room = self._room
        if room is not None:
            try:
                room.acquire_nowait()
            except anyio.WouldBlock:
                raise BacklogFull(
                    f"{self.max_pending} background sends are already pending on {self!r}; "
                    f"`await {signal!r}.send_later(...)` waits for room, or raise max_pending "
                    f"in asignals.dispatcher(max_pending=...)"
                ) from None
        self._spawn(signal, sender, kwargs)

    async def submit_wait(self, signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
        """Like :meth:`submit`, but wait for room when the backlog is full: ``send_later``'s step.

        :raises DispatcherClosed: the dispatcher is shutting down or has shut down, also when
            that happened while this call waited for room.
        :raises RuntimeError: the dispatcher was not entered yet.
        """
        self._check_accepting()
        room = self._room
        if room is not None:
            try:
                room.acquire_nowait()  # room now: no checkpoint, so a producer can fill it
            except anyio.WouldBlock:
                self._waiting += 1
                try:
                    await room.acquire()
                finally:
                    self._waiting -= 1
            if self._state == _CLOSED:
                room.release()
                raise DispatcherClosed(f"{self!r} closed while send_later() waited for room")
        self._spawn(signal, sender, kwargs)

    def _spawn(self, signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
        self.pending += 1
        self.submitted += 1
        if self.pending > self.peak_pending:
            self.peak_pending = self.pending
        # Both ways of starting a task copy the caller's context: receivers see its variables.
        if self._aloop is not None:
            task = self._aloop.create_task(self._run(signal, sender, kwargs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._nursery.start_soon(self._run_shielded, signal, sender, kwargs)

    async def _run_shielded(self, signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
        # A trio nursery's children are cancelled with the scope around the `async with`;
        # asyncio tasks are not. Shield each send so both backends drain alike; the drain
        # deadline cancels these scopes.
        with self._trio_scope(shield=True) as scope:
            self._scopes.add(scope)
            try:
                await self._run(signal, sender, kwargs)
            finally:
                self._scopes.discard(scope)

    async def _run(self, signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
        _current.set(self)  # chained sends from receivers come back here
        run = _Run(self)
        _running_in.set(run)  # ...and are accepted while this send runs, even in the drain
        try:
            await signal.send_robust(sender, **kwargs)
        except self._cancelled:
            self._log_cancelled(signal, sender, kwargs)
            raise
        except Exception:
            logger.exception(
                "asignals: background send of %r (sender=%r) failed outside any receiver",
                signal,
                sender,
            )
        finally:
            run.active = False
            self.pending -= 1
            if self._room is not None:
                self._room.release()
            if self.pending == 0 and self._waiting == 0 and self._state != _OPEN:
                assert self._idle is not None
                self._idle.set()

    def _log_cancelled(self, signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
        try:
            names = ", ".join(describe(r) for r in signal.receivers_for(sender)) or "none"
        except Exception:
            names = "unknown"
        why = (
            f"at the drain deadline ({self.drain_timeout}s)"
            if self._deadline_passed
            else "before it finished (the dispatcher was cancelled)"
        )
        logger.error(
            "asignals: background send of %r (sender=%r, kwargs=%s) cancelled %s; receivers: %s",
            signal,
            sender,
            _bounded_repr(kwargs),
            why,
            names,
        )


def _bounded_repr(kwargs: dict[str, Any]) -> str:
    """The keyword arguments of a lost send, short enough for one log line whatever they hold."""
    try:
        return _REPR.repr(kwargs)
    except Exception:  # a value whose __repr__ raises must not hide the rest of the line
        return f"<{len(kwargs)} keyword argument(s), unprintable>"


_REPR = reprlib.Repr()
_REPR.maxdict = 10
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlevel = 3


def dispatcher(
    *, max_pending: int | None = DEFAULT_MAX_PENDING, drain_timeout: float | None = None
) -> Dispatcher:
    """The supervisor of background sends, as an async context manager: open it around your app.

    ``async with asignals.dispatcher():`` is what makes ``sig.send_nowait(...)``,
    ``send_later`` and held ``send_after_response`` sends work, inside the block and from any
    task on the same event loop (ASGI request handlers run in tasks the lifespan did not
    start, and still find it). Leaving the block, normally or with an exception, waits for
    every pending send, so nothing scheduled is lost at shutdown. In a Starlette or FastAPI
    app, ``lifespan=asignals.contrib.asgi.lifespan`` opens one for the app's lifetime.

    Nested dispatchers are allowed: sends made inside the inner block, and by its background
    receivers, go to the inner one. Each dispatcher can be entered once.

    :param max_pending: the most background sends scheduled and not finished at once: past
        it ``send_nowait`` raises :class:`BacklogFull` and ``send_later`` waits for room.
        ``None`` means unbounded (only when the producer is bounded some other way).
    :param drain_timeout: seconds the exit waits for pending sends; those still running then
        are cancelled and each is logged at ERROR on ``asignals.background`` with its
        receivers. ``None`` waits as long as they take; set it where the process must stop
        within a deadline (a container's grace period).
    :returns: a new, not yet entered :class:`Dispatcher`.
    :raises ValueError: a bad ``max_pending`` or ``drain_timeout``.
    """
    return Dispatcher(max_pending=max_pending, drain_timeout=drain_timeout)


def current_dispatcher() -> Dispatcher | None:
    """The dispatcher ``send_nowait`` would use here and now, or ``None``.

    For code that must decide between a background send and a direct one (a library that
    may run with or without a dispatcher), and for reading the counters of the one in use.
    ``None`` when no dispatcher is open on this event loop, while the one found drains, and
    off the event loop's thread (even in a worker thread, where ``send_nowait`` still works).
    """
    try:
        found = _find(_loop_key())
    except RuntimeError:
        return None
    return found if found._state == _OPEN else None


def _find(loop: object | None) -> Dispatcher:
    found = _current.get()
    if found is not None and found._state in (_OPEN, _CLOSING) and found._loop is loop:
        return found
    if loop is None:
        raise RuntimeError(_NO_LOOP)
    stack = _by_loop.get(loop)
    if not stack:
        closed = _closed_on.get(loop)
        if closed is not None:
            raise _closed_error(closed)
        raise RuntimeError(_NO_DISPATCHER)
    found = stack[0]
    if found._state != _OPEN:
        found._check_accepting()
    return found


def submit(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
    """Schedule ``signal.send_robust(sender, **kwargs)`` on the current dispatcher.

    What ``send_nowait`` does once it has checked its arguments, for integrations that
    already hold the sender and a keyword-argument dict (a bridge delivering a decoded
    event): the keyword names are not checked against a typed signal's spec, and ``kwargs``
    is kept until the send runs, so do not change it afterwards. From a worker thread started
    by AnyIO it hops to the event loop and waits for the submit there.

    :raises RuntimeError: no dispatcher on this event loop, or no event loop reachable.
    :raises BacklogFull: the dispatcher's backlog is full.
    :raises DispatcherClosed: the dispatcher is shutting down or has shut down.
    """
    loop = _loop_key()
    if loop is None:
        _submit_from_thread(signal, sender, kwargs)
    else:
        _find(loop).submit(signal, sender, kwargs)


def _submit_from_thread(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
    """:func:`submit` from a worker thread of ``anyio.to_thread``, on its event loop's thread.

    Waits until the loop ran the submit, so its errors are raised here, in the caller's thread.
    """
    context = copy_context()  # the receivers see this thread's context variables

    def on_loop() -> Exception | None:
        try:
            context.run(submit, signal, sender, kwargs)
        except Exception as exc:  # handed back so it is not mistaken for AnyIO's own error
            return exc
        return None

    try:
        error = anyio.from_thread.run_sync(on_loop)
    except RuntimeError as exc:
        # Not a thread AnyIO started (NoEventLoopError), or its event loop has finished.
        raise RuntimeError(_NO_LOOP) from exc
    if error is not None:
        raise error


async def submit_wait(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
    """Like :func:`submit`, but wait for room when the backlog is full: ``send_later``'s step."""
    await _find(_loop_key()).submit_wait(signal, sender, kwargs)
