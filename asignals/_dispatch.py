"""How a send runs the receivers that need awaiting. Private: nothing here knows AsyncSignal.

``AsyncSignal.send``/``send_robust`` (one loop, ``asignals._signal._send``) run sync receivers
themselves and call :func:`run` with the rest of their rows as soon as one receiver needs
awaiting, or with all of them when dispatch options are set. The entry point::

    await run(signal, rows, start, results, named, robust,
              concurrent=True, timeout=None, max_concurrency=None) -> results

- ``signal``: only used in messages (``repr``) and logs;
- ``rows``: ``(getter, mode, entry)`` tuples (:data:`asignals._receivers.Row`): ``getter()`` is
  the receiver or None once collected, ``mode`` ``INLINE``/``ASYNC``/``THREAD``, ``entry.name``
  its readable name. A row whose getter returns a wrapper of the receiver runs the wrapper;
- ``start``: the first row to run; ``results``: the ``(receiver, result)`` pairs of the rows
  before it, extended in place and returned in connection order;
- ``named``: the keyword arguments every receiver gets, ``signal`` and ``sender`` included;
- ``robust``: ``send_robust``'s handling (log with :func:`log_failure`, return the exception)
  instead of ``send``'s (raise :func:`group` of every failure).

A receiver's failure outside a batch goes through :func:`failed`; one past its ``timeout`` is
a :class:`ReceiverTimeout`.

The default strategy is built around one observation: most async receivers finish without
ever suspending, and a task per receiver (``gather``, a TaskGroup, even an eager task) costs
several times the receiver itself. So a *driver* works through the rows with ``yield from``,
which runs a coroutine at the cost of a plain ``await``. Only when a receiver really suspends
does the driver start the receivers after it, each in its own task (as ``gather`` would), and
carry on with the suspended one in the task it started in, so ``current_task()``, cancel
scopes and ``asyncio.timeout`` always belong to the task the receiver runs in:

- asyncio: the driver runs in the sending task itself, so a send whose receivers never
  suspend creates no task at all. On Python 3.12+ the tasks start eagerly.
- trio: the same; the AnyIO task group the later receivers start in is opened at the first
  suspension, and slotted in under any cancel scope the suspended receiver entered, so that
  the scopes nest as trio requires (see :func:`_run_trio`). After a suspension every later
  receiver gets a task.
- ``timeout`` / ``max_concurrency``: one AnyIO task per receiver, each with its deadline and
  limiter. ``concurrent=False``: receivers awaited one by one, in connection order.

Context variables follow Django 5.1+: receivers run in the caller's context, except those
started in tasks, which share one copy of it; what they change there is copied back into the
caller's context when the send returns. A receiver finishes in the context it started in.

Failure semantics are ``asyncio.TaskGroup``'s everywhere: the first failure cancels the
receivers still running, and every failure is raised together in an ``ExceptionGroup``.
"""

# Receivers and their results are Any by nature here, and pyright's strict mode reports
# ``type(value)`` of an Any as partially unknown: these two rules only repeat that.
# pyright: reportUnknownArgumentType=false, reportUnknownVariableType=false

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import itertools
import logging
import operator
import sys
import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import anyio.to_thread

from ._receivers import ASYNC, INLINE, THREAD, Row, _Entry

logger = logging.getLogger("asignals")

Results = list[tuple[Any, Any]]

_EAGER = sys.version_info >= (3, 12)
_Task = asyncio.Task


_COROUTINE = types.CoroutineType
_PENDING: Any = (None, None)  # a result slot whose receiver is still running
#: Results no receiver returns as an awaitable: a set lookup instead of an attribute lookup.
NOT_AWAITABLE: Final = frozenset({int, str, bool, float, bytes, tuple, list, dict, set})
_UNSET: Any = object()
_HOLE: Final = "\x00hole"  # a key no keyword argument can spell (see _split)


class _Shared:
    """The context a send's tasks share, and what it held when they started."""

    __slots__ = ("base", "context")

    def __init__(self) -> None:
        self.share()

    def share(self) -> None:
        self.base = contextvars.copy_context()
        self.context = self.base.copy()

    def restore(self) -> None:
        """Copy into the current context what the tasks changed, and nothing else.

        Comparing with the caller's values instead would undo what the caller's own code (or a
        receiver running in the caller's context) set meanwhile.
        """
        base = self.base
        for var, value in self.context.items():
            if base.get(var, _UNSET) is not value:
                var.set(value)


class ReceiverTimeout(TimeoutError):
    """A receiver ran past the send's ``timeout`` and was cancelled.

    A ``TimeoutError``, so ``except* TimeoutError`` catches it; its message names the receiver
    and the limit, and ``send_robust`` logs it as one line instead of a traceback of the
    library's internals.
    """

    def __init__(self, receiver: str, limit: float) -> None:
        super().__init__(f"receiver {receiver} did not finish within timeout={limit}s")
        self.receiver = receiver
        self.limit = limit


def log_failure(signal: object, entry: _Entry, sender: Any, exc: BaseException) -> None:
    """``send_robust``'s report of one receiver's exception, on the ``asignals`` logger."""
    if isinstance(exc, ReceiverTimeout):
        logger.error(
            "%s in %r.send_robust() (sender=%r) timed out after %ss and was cancelled",
            entry.name,
            signal,
            sender,
            exc.limit,
        )
        return
    logger.error(
        "Error calling %s in %r.send_robust() (sender=%r): %r",
        entry.name,
        signal,
        sender,
        exc,
        exc_info=exc,
    )


def group(signal: object, failures: list[BaseException]) -> BaseExceptionGroup:
    """The one exception ``send`` raises when receivers failed, whatever the loop and option."""
    return BaseExceptionGroup(f"{len(failures)} receiver(s) of {signal!r} raised", failures)


def failed(signal: object, entry: _Entry, sender: Any, exc: Exception, robust: bool) -> Any:
    """A receiver raised ``exc`` where nothing else is running: the cold path of a send.

    ``send`` raises the group; ``send_robust`` logs the failure and returns it as the result.
    """
    if not robust:
        raise group(signal, [exc]) from None
    log_failure(signal, entry, sender, exc)
    return exc


def _shielded(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is inside a shielded AnyIO cancel scope right now.

    ``Task.cancel()`` would break through such a shield (AnyIO delivers its own cancellations
    only outside shields), and the receiver's own exception, raised once it leaves the shield,
    would be lost. AnyIO offers no public way to ask, so this reads its task state and assumes
    "not shielded" if that ever changes. Only called after a receiver failed.
    """
    backend = sys.modules.get("anyio._backends._asyncio")
    states = getattr(backend, "_task_states", None)
    try:
        state = states.get(task) if states is not None else None
        scope = getattr(state, "cancel_scope", None)
        while scope is not None:
            if getattr(scope, "_shield", False):
                return True
            scope = getattr(scope, "_parent_scope", None)
    except Exception:
        return False
    return False


def _in_thread(fn: Any, named: dict[str, Any], abandon: bool) -> Coroutine[Any, Any, Any]:
    return anyio.to_thread.run_sync(functools.partial(fn, **named), abandon_on_cancel=abandon)


class _Batch(_Shared):
    """The async part of one send: its rows, its results, and any tasks running receivers.

    Receivers append their results in order until one suspends; from then on each takes its
    place in ``results`` (a placeholder) when it starts, so the list stays in connection order
    whichever receiver finishes first.

    Only what the driver needs is set up front; the task bookkeeping is set by ``prepare`` when
    a receiver first suspends, so that a send whose receivers never suspend stays cheap. A
    batch is also the context its tasks share (a :class:`_Shared`) and their done callback
    (:meth:`__call__`): one object per send that suspends, not three.
    """

    __slots__ = (
        "doomed",
        "failures",
        "later",
        "named",
        "ours",
        "parent",
        "parent_busy",
        "rest",
        "results",
        "robust",
        "running",
        "signal",
        "task_group",
        "waiter",
    )
    # The results of the receivers _split started, in order; while a receiver runs in an
    # asyncio task its slot holds (receiver, task, entry) instead, the task's value is taken
    # at the end (see collect()). So no map from tasks to slots: a done task's slot is only
    # looked for when it failed.
    later: list[tuple[Any, ...]]

    def __init__(
        self,
        signal: object,
        rows: tuple[Row, ...],
        start: int,
        named: dict[str, Any],
        robust: bool,
        results: Results,
    ) -> None:
        self.signal = signal
        # The rows not started yet: the driver takes them one by one, and _split takes all
        # that are left when the driver suspends (so the driver stops after that receiver).
        self.rest = itertools.islice(rows, start, None) if start else iter(rows)
        self.named = named
        self.robust = robust
        self.results = results

    def prepare(
        self, parent: asyncio.Task[Any] | None, task_group: anyio.abc.TaskGroup | None
    ) -> None:
        self.parent = parent
        self.task_group = task_group
        # The context every task of this send runs in: one copy of the caller's, shared, and
        # what they change in it copied back when the send returns (Django's semantics).
        self.share()
        self.failures: list[BaseException] = []
        self.running = 0  # asyncio tasks whose done callback has not run yet
        self.waiter: asyncio.Future[None] | None = None
        self.parent_busy = False
        self.ours = False  # we cancelled the parent task because a receiver failed
        # The tasks cancel_all() cancelled: made by the first cancel_all(), a cold path.
        self.doomed: set[asyncio.Task[Any]] | None = None

    def settle(self, slot: int, fn: Any, entry: _Entry, task: asyncio.Task[Any]) -> None:
        """Take a finished task's outcome into its slot."""
        try:
            self.later[slot] = (fn, task.result())
        except BaseException as error:
            self.ended(slot, fn, entry, error)

    def ended(self, slot: int, fn: Any, entry: _Entry, error: BaseException) -> None:
        """A task of the batch raised ``error`` (or was cancelled): put it where it belongs.

        Takes the error as raised by the one ``task.result()`` that read it: a second call
        raises it with a traceback that starts afresh, without the receiver's own frames.
        """
        if isinstance(error, asyncio.CancelledError):
            self.later[slot] = (fn, None)
        elif isinstance(error, Exception):
            self.later[slot] = (fn, self.caught(entry, error))
        else:
            self.fail(error)

    def caught(self, entry: _Entry, error: Exception) -> Any:
        """A receiver of the batch raised ``error``; return what goes in its slot.

        ``send_robust`` logs it and returns it; ``send`` keeps it for the group and cancels
        the receivers still running (the slot's value no longer matters).
        """
        if self.robust:
            log_failure(self.signal, entry, self.named["sender"], error)
            return error
        self.fail(error)
        return None

    def __call__(self, task: asyncio.Task[Any]) -> None:
        """A task of the batch is done: the batch is its tasks' done callback."""
        self.running -= 1
        try:
            task.result()  # its value stays in the task until collect() takes it
        except BaseException as error:  # failed or cancelled: the cold path
            for slot, pending in enumerate(self.later):
                if len(pending) == 3 and pending[1] is task:
                    self.ended(slot, pending[0], pending[2], error)
                    break
        if not self.running and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def collect(self) -> Results:
        """The send's results, in connection order, once every receiver has finished."""
        results = self.results
        # A 3-tuple is (receiver, task, entry) of a task that succeeded.
        results += [p if len(p) == 2 else (p[0], p[1].result()) for p in self.later]
        return results

    def fail(self, error: BaseException) -> None:
        """Keep ``error`` for the group; the first one cancels the others.

        On trio they are cancelled through the task group, whose scope respects shields and
        whose own ``ExceptionGroup`` never sees a receiver's exception: ``send`` raises the same
        group on every loop.
        """
        self.failures.append(error)
        if len(self.failures) == 1:
            if self.task_group is not None:
                self.task_group.cancel_scope.cancel()
            else:
                self.cancel_all()

    def cancel_all(self) -> None:
        """Cancel every receiver still running, as AnyIO would: never through a shield.

        A receiver inside a shielded AnyIO scope is cancelled once it leaves it (retried on
        each loop iteration, as AnyIO does), so an exception it raises meanwhile is kept.
        """
        retry = False
        doomed = self.doomed
        if doomed is None:
            doomed = self.doomed = set()
        for pending in self.later:
            if len(pending) != 3:
                continue
            task = pending[1]
            if task in doomed or task.done():
                continue
            if _shielded(task):
                retry = True
                continue
            doomed.add(task)
            task.cancel()
        if self.parent_busy and self.parent is not None and not self.ours:
            if _shielded(self.parent):
                retry = True
            else:
                self.ours = True
                self.parent.cancel()
        if retry:
            asyncio.get_running_loop().call_soon(self.cancel_all)


async def _one(batch: _Batch, slot: int, fn: Any, mode: int, entry: _Entry) -> None:
    """A trio task for one receiver (asyncio tasks run the receiver's coroutine directly)."""
    try:
        value = await _invoke(fn, mode, batch.named, None, entry)
    except Exception as exc:
        value = batch.caught(entry, exc)
    batch.later[slot] = (fn, value)


def _split(batch: _Batch, loop: asyncio.AbstractEventLoop | None) -> None:
    """The driver is suspended in a receiver: start every receiver after it now.

    Sync receivers run inline; the others each get a task, as with ``asyncio.gather`` (a
    driver per task would make them start one loop iteration after another).
    """
    named = batch.named
    # Every ``fn(**named)`` copies ``named`` into a dict for the call. CPython makes that
    # copy by cloning the key table of ``named`` (a new allocation each time) if ``named`` has
    # never had a key deleted, and from its free list of small tables otherwise. The clones
    # pile up on that free list while each suspended receiver holds a table taken from it
    # (its ``**kwargs``), so a send to N suspending receivers would hold N tables more at its
    # peak. One deleted key (the contents and order of ``named`` stay the same) makes the
    # copies use the free list: 120 bytes less per receiver, for some 50-100 ns more per call.
    named[_HOLE] = None
    del named[_HOLE]
    # Their results, in order, go after the suspended receiver's, which the driver appends.
    # The list is made once with a slot per row left: appending would make it grow by steps
    # to up to twice that. (An islice of the rows gives no hint: that list grows.)
    size = operator.length_hint(batch.rest)
    results: list[tuple[Any, ...]] = [_PENDING] * size
    batch.later = results
    slot = 0
    started = 0  # asyncio tasks with a done callback: counted once, none can run meanwhile
    task_group = batch.task_group
    context = batch.context
    eager = _EAGER
    # Without a task factory, loop.create_task() only calls Task() (asyncio's in Python code,
    # uvloop's then renaming the task it made): calling Task() directly saves that per task.
    direct = loop is not None and loop.get_task_factory() is None
    try:
        for get, mode, entry in batch.rest:
            if batch.failures:
                collections.deque(batch.rest, maxlen=0)  # nor may the driver start any
                return
            fn = get()
            if fn is None:
                continue
            if slot == size:
                results.append(_PENDING)
                size += 1
            if task_group is not None:
                # trio: no receiver may run before the suspended one's trap reaches trio (it
                # has already registered the sending task to be woken), so every one gets a
                # task.
                task_group.start_soon(_run_in, _one(batch, slot, fn, mode, entry), context)
                slot += 1
                continue
            try:
                # A sync receiver runs inline, in the caller's context.
                value: Any = fn(**named) if mode != THREAD else _in_thread(fn, named, False)
                if mode == INLINE and (
                    value is None
                    or type(value) in NOT_AWAITABLE
                    or not hasattr(type(value), "__await__")
                ):
                    results[slot] = (fn, value)
                    slot += 1
                    continue
            except Exception as exc:
                results[slot] = (fn, batch.caught(entry, exc))
                slot += 1
                continue
            if type(value) is not _COROUTINE:
                value = _wrap(value)
            task: asyncio.Task[Any]
            # Named after the receiver, which shows in a dump of the running tasks and costs
            # no string per task (asyncio formats a "Task-<n>" for a task without a name).
            if eager:
                # The task's first step runs now, inside the task (as with
                # eager_task_factory, but for our tasks only, whatever factory the
                # application set).
                task = _Task(  # type: ignore[call-arg,unused-ignore]
                    value,
                    loop=loop,
                    name=entry.name,
                    context=context,
                    eager_start=True,  # pyright: ignore[reportCallIssue]
                )
                if task.done():  # it ran to the end already
                    batch.settle(slot, fn, entry, task)
                    slot += 1
                    continue
            elif direct:
                task = _Task(value, loop=loop, name=entry.name, context=context)
            else:
                task = loop.create_task(value, name=entry.name, context=context)  # type: ignore[union-attr]  # pyright: ignore[reportOptionalMemberAccess]
            results[slot] = (fn, task, entry)
            slot += 1
            started += 1
            task.add_done_callback(batch)
    finally:
        del results[slot:]  # the slots of rows that were dead or never started
        batch.running += started


async def _wrap(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _as_coroutine(value: Any) -> Coroutine[Any, Any, Any]:
    if type(value) is _COROUTINE:
        coroutine: Coroutine[Any, Any, Any] = value
        return coroutine
    return _wrap(value)


def _drive(batch: _Batch) -> Generator[Any, Any, None]:
    """Run the batch's receivers in order, storing results in their slots.

    ``yield from`` runs a coroutine at the cost of a plain ``await`` and passes its suspension
    straight up to whoever steps this generator, which then calls :func:`_split` so that the
    rest do not wait.
    """
    named = batch.named
    results = batch.results
    for get, mode, entry in batch.rest:
        fn = get()
        if fn is None:
            continue
        value: Any
        try:
            if mode == ASYNC:
                value = fn(**named)
                if type(value) is _COROUTINE:
                    value = yield from value  # type: ignore[misc]
                else:  # an async-marked callable may return any awaitable
                    value = yield from value.__await__()
            elif mode == THREAD:
                value = yield from _in_thread(fn, named, False).__await__()
            else:
                value = fn(**named)
                if value is not None and hasattr(type(value), "__await__"):
                    value = yield from _as_coroutine(value)  # type: ignore[misc]
        except Exception as exc:
            if not batch.robust:
                raise
            log_failure(batch.signal, entry, named["sender"], exc)
            value = exc
        # If this receiver suspended, _split took every row after it: the loop ends here.
        results.append((fn, value))


if not TYPE_CHECKING:  # a coroutine to the interpreter (it yields from coroutines), a
    # generator to the type checkers (it is stepped by hand)
    _drive = types.coroutine(_drive)


@types.coroutine
def _resume(
    gen: Generator[Any, Any, Any], value: Any, context: contextvars.Context | None
) -> Generator[Any, Any, Any]:
    """Carry on stepping ``gen``, which has just yielded ``value`` (in ``context``, if given)."""
    while True:
        try:
            sent = yield value
        except BaseException as exc:
            try:
                value = gen.throw(exc) if context is None else context.run(gen.throw, exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                value = gen.send(sent) if context is None else context.run(gen.send, sent)
            except StopIteration as stop:
                return stop.value


async def _run_in(coro: Coroutine[Any, Any, Any], context: contextvars.Context) -> Any:
    """Run ``coro`` inside ``context``: AnyIO's ``start_soon`` takes no context argument."""
    try:
        value = context.run(coro.send, None)
    except StopIteration as stop:
        return stop.value
    return await _resume(coro, value, context)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


@types.coroutine
def run(
    signal: object,
    rows: tuple[Row, ...],
    start: int,
    results: Results,
    named: dict[str, Any],
    robust: bool,
    concurrent: bool = True,
    timeout: float | None = None,
    max_concurrency: int | None = None,
) -> Generator[Any, Any, Results]:
    """Run ``rows[start:]``; return ``results`` extended with theirs, in connection order.

    Awaited like a coroutine function. It is a generator-based coroutine so that it can step
    the driver and wait for the tasks itself: a send that suspends then keeps one frame for
    all of it, not one per step (the driver's stepper and the waiting would each be one).
    """
    # The other strategies' results come back in ``results`` (a local more would cost each
    # suspended send 8 bytes; yield from gives them no type, the parameter does).
    if not concurrent:
        results = yield from _run_sequential(signal, rows, start, results, named, robust, timeout)
        return results
    if timeout is not None or max_concurrency is not None:
        results = yield from _run_bounded(
            signal, rows, start, results, named, robust, timeout, max_concurrency
        )
        return results
    batch = _Batch(signal, rows, start, named, robust, results)
    loop = asyncio.events._get_running_loop()
    if loop is None:
        results = yield from _run_trio(batch)
        return results

    # The first driver runs in the sending task, in the caller's context, as inline code does.
    driver = _drive(batch)
    try:
        # A for loop, not driver.send(None): the end of a generator costs no StopIteration
        # there, and most sends end here, with no receiver suspended and no task needed.
        for value in driver:  # noqa: B007 - the first suspension, carried on below
            break
        else:
            return results
    except Exception as exc:
        raise group(signal, [exc]) from None
    batch.prepare(asyncio.current_task(), None)
    batch.parent_busy = True
    # Few locals, as in _send: the generator holds them all for as long as the send runs.
    cancelled: BaseException | None = None
    fatal: BaseException | None = None
    try:
        _split(batch, loop)
        # The held receiver carries on in the caller's context, where it started (a token it
        # set there must reset there): what _resume() does, inline.
        while True:
            try:
                value = yield value
            except BaseException as exc:
                value = driver.throw(exc)
            else:
                value = driver.send(value)
    except StopIteration:
        pass
    except asyncio.CancelledError as exc:
        cancelled = exc
    except Exception as exc:
        batch.parent_busy = False  # fail() must not cancel the task that is running it
        batch.fail(exc)
    except BaseException as exc:
        # KeyboardInterrupt, SystemExit...: nothing may keep running behind it.
        batch.parent_busy = False
        driver.close()
        batch.cancel_all()
        fatal = exc
    finally:
        batch.parent_busy = False
    try:
        # A cancellation is the caller's unless we asked for it because a receiver failed
        # (and, as in asyncio.TaskGroup, uncancel() tells whether someone else asked too).
        if fatal is None and batch.ours and batch.parent is not None:
            if batch.parent.uncancel() > 0:
                cancelled = cancelled or asyncio.CancelledError()
            else:
                cancelled = None
        if fatal is None and cancelled is not None:
            batch.cancel_all()
        # Wait for every task; if the caller is cancelled meanwhile, cancel them first.
        while batch.running:
            batch.waiter = loop.create_future()
            try:
                yield from batch.waiter
            except asyncio.CancelledError as exc:
                cancelled = exc  # the original: AnyIO scopes recognise theirs by its message
                batch.cancel_all()
    finally:
        batch.restore()
    if cancelled is not None:
        raise cancelled
    if fatal is not None:
        raise fatal
    if batch.failures:
        raise group(signal, batch.failures)
    return batch.collect()


async def _run_trio(batch: _Batch) -> Results:
    """trio: the driver runs in the sending task; a nursery opens only if a receiver suspends.

    trio requires cancel scopes to close in the reverse order they opened, and the receiver
    that suspends may have done so inside scopes of its own (``trio.sleep(1)`` itself waits
    inside one). So the nursery the later receivers start in is opened at that suspension,
    before its trap reaches trio, and put where it would be had it been opened before the
    driver started: between the send's cancel status and the receiver's outermost scope (see
    :func:`_open_late`). The held receiver's scopes then close into the nursery's, which closes
    last, and a sibling's failure cancels the held receiver through it, as a task group opened
    first would.

    That reads trio's private task state; where it is not as expected (checked once, by
    :func:`_find_late_opener`), the group is opened before the driver starts, as a plain
    ``async with`` (:func:`_run_trio_early`).
    """
    open_late = _late_opener if _late_opener is not None else _find_late_opener()
    if not open_late:  # not trio, or a trio whose state _open_late does not know
        return await _run_trio_early(batch)
    try:
        task = sys.modules["trio"].lowlevel.current_task()
    except RuntimeError:  # no trio run either: AnyIO raises its own error about that
        return await _run_trio_early(batch)
    status = task._cancel_status  # the send's: the one the receivers start in
    driver = _drive(batch)
    try:
        for value in driver:  # noqa: B007 - as in run()
            break
        else:
            return batch.results
    except Exception as exc:
        raise group(batch.signal, [exc]) from None
    task_group = anyio.create_task_group()
    if not open_late(task_group, task, status):
        # The receiver left a scope the send started in (by calling its __exit__ itself): no
        # nursery can nest under the send's scopes any more, so the rest run after it, in turn.
        try:
            await _resume(driver, value, None)
        except Exception as exc:
            raise group(batch.signal, [exc]) from None
        return batch.results
    batch.prepare(None, task_group)
    try:
        # The body of ``async with task_group``, which _open_late entered.
        try:
            _split(batch, None)
            try:
                await _resume(driver, value, None)
            except Exception as exc:
                batch.fail(exc)
        except BaseException as exc:
            if not await task_group.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await task_group.__aexit__(None, None, None)
    finally:
        batch.restore()  # after the group: its tasks have all finished
    if batch.failures:
        raise group(batch.signal, batch.failures)
    return batch.collect()


#: :func:`_open_late`, KI-protected (a KeyboardInterrupt must not land while it moves trio's
#: state), once trio's task state is known to be as it expects; False if it is not.
_late_opener: Any = None


def _find_late_opener() -> Any:
    global _late_opener
    trio = sys.modules.get("trio")
    if trio is None:
        return False  # not running on trio: not cached, trio may run later
    run = getattr(getattr(trio, "_core", None), "_run", None)
    status = getattr(getattr(run, "CancelStatus", None), "parent", None)
    task = getattr(run, "Task", None)
    protect = getattr(getattr(trio, "lowlevel", None), "enable_ki_protection", None)
    supported = (
        isinstance(status, property)
        and status.fset is not None
        and all(
            hasattr(task, name)
            for name in ("_cancel_status", "_child_nurseries", "_activate_cancel_status")
        )
        and hasattr(getattr(run, "CancelScope", None), "_cancel_status")
    )
    _late_opener = protect(_open_late) if supported and protect is not None else False
    return _late_opener


def _open_late(task_group: anyio.abc.TaskGroup, task: Any, status: Any) -> bool:
    """Enter ``task_group`` in ``task`` as if it had been entered where the send's ``status``
    was active, although the receiver suspended at this moment may have entered scopes since.

    The receiver's trap has not reached trio yet, so the task is still running and nothing
    can be delivered to it meanwhile. Returns False, changing nothing, if the task is no longer
    inside ``status`` at all.
    """
    held = task._cancel_status  # the receiver's innermost scope, or the send's own
    outer = None  # the receiver's outermost scope's status
    inner: set[Any] = set()
    current = held
    while current is not status:
        if current is None:
            return False
        inner.add(current)
        outer = current
        current = current.parent
    if outer is not None:
        # Enter the group's scope as if it came first: in the send's status.
        task._activate_cancel_status(status)
    # Neither trio's nursery nor AnyIO's group suspends on entering (their __aenter__ awaits
    # nothing): run it to its end here, so that the receiver's trap is the next thing trio sees.
    entering = task_group.__aenter__()
    try:
        entering.send(None)
    except StopIteration:
        pass
    else:  # pragma: no cover - a trio or AnyIO that would need a new design here
        entering.close()
        raise RuntimeError("asignals: entering a task group suspended on this trio version")
    if outer is not None:
        # The receiver's scopes now nest in the group's, and its nursery list gets ours
        # before any it opened: each closes into (and pops off) the right one.
        outer.parent = task._cancel_status
        task._activate_cancel_status(held)
        nurseries = task._child_nurseries
        ours = nurseries.pop()
        at = len(nurseries)
        while at and nurseries[at - 1].cancel_scope._cancel_status in inner:
            at -= 1
        nurseries.insert(at, ours)
    return True


async def _run_trio_early(batch: _Batch) -> Results:
    """trio, where :func:`_open_late` cannot work: the group is opened before the driver."""
    driver = _drive(batch)
    prepared = False
    try:
        async with anyio.create_task_group() as task_group:
            try:
                for value in driver:  # noqa: B007 - as in run()
                    break
                else:
                    return batch.results
            except Exception as exc:
                # Raised after the group, so that trio does not wrap it in a group of its own.
                batch.failures = [exc]
            else:
                batch.prepare(None, task_group)
                prepared = True
                _split(batch, None)
                try:
                    await _resume(driver, value, None)
                except Exception as exc:
                    batch.fail(exc)
    finally:
        if prepared:
            batch.restore()  # after the group: its tasks have all finished
    if batch.failures:
        raise group(batch.signal, batch.failures)
    return batch.collect()


async def _bounded(awaitable: Awaitable[Any], timeout: float | None, entry: _Entry) -> Any:
    if timeout is None:
        return await awaitable
    with anyio.move_on_after(timeout) as scope:
        return await awaitable
    if scope.cancelled_caught:
        raise ReceiverTimeout(entry.name, timeout)
    return None  # the receiver swallowed its cancellation and returned nothing


def _call(fn: Any, mode: int, named: dict[str, Any], timeout: float | None) -> Any:
    if mode == THREAD:
        return _in_thread(fn, named, timeout is not None)
    return fn(**named)


async def _invoke(
    fn: Any, mode: int, named: dict[str, Any], timeout: float | None, entry: _Entry
) -> Any:
    """The per-receiver step outside the driver: call it, await what it returned (bounded)."""
    value = _call(fn, mode, named, timeout)
    if value is not None and hasattr(type(value), "__await__"):
        value = await _bounded(value, timeout, entry)
    return value


async def _run_sequential(
    signal: object,
    rows: tuple[Row, ...],
    start: int,
    results: Results,
    named: dict[str, Any],
    robust: bool,
    timeout: float | None,
) -> Results:
    for get, mode, entry in rows[start:]:
        fn = get()
        if fn is None:
            continue
        try:
            value = await _invoke(fn, mode, named, timeout, entry)
        except Exception as exc:
            value = failed(signal, entry, named["sender"], exc, robust)
        results.append((fn, value))
    return results


async def _run_bounded(
    signal: object,
    rows: tuple[Row, ...],
    start: int,
    results: Results,
    named: dict[str, Any],
    robust: bool,
    timeout: float | None,
    max_concurrency: int | None,
) -> Results:
    limiter = anyio.Semaphore(max_concurrency) if max_concurrency is not None else None
    failures: list[BaseException] = []
    sender = named["sender"]

    def fail(entry: _Entry, exc: Exception, tg: anyio.abc.TaskGroup) -> Any:
        if robust:
            log_failure(signal, entry, sender, exc)
            return exc
        failures.append(exc)  # the group's scope cancels the others, never through a shield
        tg.cancel_scope.cancel()
        return None

    async def guarded(
        slot: int, entry: _Entry, awaitable: Awaitable[Any], tg: anyio.abc.TaskGroup
    ) -> None:
        started = False
        try:
            if limiter is not None:
                await limiter.acquire()
            try:
                started = True
                value = await _bounded(awaitable, timeout, entry)
            finally:
                if limiter is not None:
                    limiter.release()
        except Exception as exc:
            value = fail(entry, exc, tg)
        finally:
            if not started and isinstance(awaitable, Coroutine):
                awaitable.close()  # cancelled while waiting for the limiter
        results[slot] = (results[slot][0], value)

    shared = _Shared()
    try:
        async with anyio.create_task_group() as tg:
            for get, mode, entry in rows[start:]:
                fn = get()
                if fn is None:
                    continue
                try:
                    value = _call(fn, mode, named, timeout)
                except Exception as exc:
                    value = fail(entry, exc, tg)
                    if failures:
                        break
                if value is not None and hasattr(type(value), "__await__"):
                    results.append((fn, None))
                    tg.start_soon(
                        _run_in, guarded(len(results) - 1, entry, value, tg), shared.context
                    )
                else:
                    results.append((fn, value))
    finally:
        shared.restore()
    if failures:
        raise group(signal, failures)
    return results
