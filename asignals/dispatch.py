"""How a send runs the receivers that need awaiting.

``AsyncSignal.send`` runs sync receivers itself and calls :func:`run` for the rest of the list
as soon as one receiver needs awaiting. Three strategies:

- asyncio, no per-receiver options: each coroutine starts as an *eager* task (Python 3.12+), so
  a receiver that finishes without suspending costs no scheduling at all; those that suspend
  are joined with a single future, which is cheaper than ``asyncio.gather`` or a TaskGroup.
  On 3.11 the tasks are created normally.
- trio, or a ``timeout``/``max_concurrency``: an AnyIO task group, each receiver wrapped in its
  own deadline and limiter.
- ``concurrent=False``: receivers awaited one by one, in connection order.

Failure semantics are ``asyncio.TaskGroup``'s in all three: the first failure cancels the
receivers still running, and every failure is raised together in an ``ExceptionGroup``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import types
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._receivers import ASYNC, INLINE, _Entry

if TYPE_CHECKING:
    from .signal import AsyncSignal

logger = logging.getLogger("asignals")

Results = list[tuple[Any, Any]]

if sys.version_info >= (3, 12):

    def _start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
        # Like asyncio.eager_task_factory, but for our tasks only: the coroutine's first step
        # runs now, inside a real task (so current_task() and cancel scopes are right).
        return asyncio.Task(coro, loop=loop, eager_start=True)

else:

    def _start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
        return loop.create_task(coro)


def log_failure(signal: AsyncSignal, entry: _Entry | str, sender: Any, exc: BaseException) -> None:
    name = entry if isinstance(entry, str) else entry.name
    logger.error(
        "Error calling %s in %r.send_robust() (sender=%r): %r",
        name,
        signal,
        sender,
        exc,
        exc_info=exc,
    )


def _group(signal: AsyncSignal, failures: list[tuple[int, BaseException]]) -> BaseExceptionGroup:
    failures.sort(key=lambda f: f[0])
    return BaseExceptionGroup(
        f"{len(failures)} receiver(s) of {signal!r} raised", [exc for _, exc in failures]
    )


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _as_coroutine(awaitable: Any) -> Coroutine[Any, Any, Any]:
    if type(awaitable) is types.CoroutineType:
        return awaitable
    return _await(awaitable)


def _call(
    entry: _Entry, fn: Any, signal: AsyncSignal, sender: Any, named: dict[str, Any], timeout: Any
) -> tuple[bool, Any]:
    """Call one receiver: ``(False, result)`` when done, ``(True, awaitable)`` otherwise."""
    if entry.mode == INLINE:
        result = fn(signal=signal, sender=sender, **named)
        if result is not None and hasattr(type(result), "__await__"):
            return True, result
        return False, result
    if entry.mode == ASYNC:
        return True, fn(signal=signal, sender=sender, **named)
    call = functools.partial(fn, signal=signal, sender=sender, **named)
    return True, anyio.to_thread.run_sync(call, abandon_on_cancel=timeout is not None)


async def run(
    signal: AsyncSignal,
    entries: tuple[_Entry, ...],
    start: int,
    results: Results,
    sender: Any,
    named: dict[str, Any],
    robust: bool,
    concurrent: bool = True,
    timeout: float | None = None,
    max_concurrency: int | None = None,
    carried: tuple[Any, Any] | None = None,
) -> Results:
    """Run ``entries[start:]``, appending to ``results``.

    ``carried`` is ``(receiver, awaitable)`` when the caller already called ``entries[start]``
    (a sync receiver that returned an awaitable).
    """
    if not concurrent:
        return await _run_sequential(
            signal, entries, start, results, sender, named, robust, timeout, carried
        )
    loop = asyncio.events._get_running_loop()
    if loop is not None and timeout is None and max_concurrency is None:
        return await _run_asyncio(
            loop, signal, entries, start, results, sender, named, robust, carried
        )
    return await _run_anyio(
        signal, entries, start, results, sender, named, robust, timeout, max_concurrency, carried
    )


async def _bounded(awaitable: Awaitable[Any], timeout: float | None) -> Any:
    if timeout is None:
        return await awaitable
    with anyio.fail_after(timeout):
        return await awaitable


async def _run_sequential(
    signal: AsyncSignal,
    entries: tuple[_Entry, ...],
    start: int,
    results: Results,
    sender: Any,
    named: dict[str, Any],
    robust: bool,
    timeout: float | None,
    carried: tuple[Any, Any] | None,
) -> Results:
    for index in range(start, len(entries)):
        entry = entries[index]
        try:
            if carried is not None and index == start:
                fn, (pending, value) = carried[0], (True, carried[1])
            else:
                fn = entry.resolve()
                if fn is None:
                    continue
                entry.called = True
                pending, value = _call(entry, fn, signal, sender, named, timeout)
            if pending:
                value = await _bounded(value, timeout)
        except Exception as exc:
            if not robust:
                raise _group(signal, [(index, exc)]) from None
            log_failure(signal, entry, sender, exc)
            value = exc
        results.append((fn, value))
    return results


class _Join:
    """Waits for a set of tasks with one future: woken when all are done, or on a failure."""

    __slots__ = ("remaining", "robust", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, robust: bool) -> None:
        self.remaining = count
        self.robust = robust
        self.waiter: asyncio.Future[None] = loop.create_future()

    def done(self, task: asyncio.Task[Any]) -> None:
        self.remaining -= 1
        if self.waiter.done():
            return
        if self.remaining == 0 or (
            not self.robust and not task.cancelled() and task.exception() is not None
        ):
            self.waiter.set_result(None)


async def _run_asyncio(
    loop: asyncio.AbstractEventLoop,
    signal: AsyncSignal,
    entries: tuple[_Entry, ...],
    start: int,
    results: Results,
    sender: Any,
    named: dict[str, Any],
    robust: bool,
    carried: tuple[Any, Any] | None,
) -> Results:
    tasks: list[tuple[int, _Entry, asyncio.Task[Any]]] = []
    failures: list[tuple[int, BaseException]] = []
    try:
        for index in range(start, len(entries)):
            entry = entries[index]
            try:
                if carried is not None and index == start:
                    fn, pending, value = carried[0], True, carried[1]
                else:
                    fn = entry.resolve()
                    if fn is None:
                        continue
                    entry.called = True
                    pending, value = _call(entry, fn, signal, sender, named, None)
            except Exception as exc:
                if not robust:
                    failures.append((len(results), exc))
                    break
                log_failure(signal, entry, sender, exc)
                value, pending = exc, False
            slot = len(results)
            if pending:
                task = _start_task(loop, _as_coroutine(value))
                if not task.done():
                    tasks.append((slot, entry, task))
                    value = None
                elif task.cancelled():
                    value = None
                elif (error := task.exception()) is None:
                    value = task.result()
                elif robust:
                    log_failure(signal, entry, sender, error)
                    value = error
                else:
                    failures.append((slot, error))
                    results.append((fn, None))
                    break
            results.append((fn, value))
        if tasks:
            await _join(loop, tasks, results, failures, robust, bool(failures), signal, sender)
    finally:
        # Reached with tasks still running only through a BaseException in a sync receiver:
        # they are cancelled, never left behind.
        for _, _, task in tasks:
            if not task.done():
                task.cancel()
    if failures:
        raise _group(signal, failures)
    return results


async def _join(
    loop: asyncio.AbstractEventLoop,
    tasks: list[tuple[int, _Entry, asyncio.Task[Any]]],
    results: Results,
    failures: list[tuple[int, BaseException]],
    robust: bool,
    cancel: bool,
    signal: AsyncSignal,
    sender: Any,
) -> None:
    join = _Join(loop, len(tasks), robust)
    for _, _, task in tasks:
        task.add_done_callback(join.done)
    cancelled = False
    if cancel:
        for _, _, task in tasks:
            task.cancel()
    while join.remaining:
        try:
            await join.waiter
        except asyncio.CancelledError:
            cancelled = True
        if join.remaining:
            if cancelled or join.waiter.done():
                # The caller was cancelled, or a receiver failed: stop the others, then wait
                # for them to finish, as asyncio.TaskGroup does.
                for _, _, task in tasks:
                    task.cancel()
            join.waiter = loop.create_future()
    for slot, entry, task in tasks:
        if task.cancelled():
            continue
        error = task.exception()
        if error is None:
            results[slot] = (results[slot][0], task.result())
        elif robust:
            log_failure(signal, entry, sender, error)
            results[slot] = (results[slot][0], error)
        else:
            failures.append((slot, error))
    if cancelled:
        raise asyncio.CancelledError


async def _run_anyio(
    signal: AsyncSignal,
    entries: tuple[_Entry, ...],
    start: int,
    results: Results,
    sender: Any,
    named: dict[str, Any],
    robust: bool,
    timeout: float | None,
    max_concurrency: int | None,
    carried: tuple[Any, Any] | None,
) -> Results:
    limiter = anyio.Semaphore(max_concurrency) if max_concurrency is not None else None

    async def guarded(slot: int, entry: _Entry, awaitable: Awaitable[Any]) -> None:
        started = False
        try:
            if limiter is not None:
                await limiter.acquire()
            try:
                started = True
                value = await _bounded(awaitable, timeout)
            finally:
                if limiter is not None:
                    limiter.release()
        except Exception as exc:
            if not robust:
                raise
            log_failure(signal, entry, sender, exc)
            value = exc
        finally:
            if not started and isinstance(awaitable, Coroutine):
                awaitable.close()  # cancelled while waiting for the limiter
        results[slot] = (results[slot][0], value)

    async with anyio.create_task_group() as tg:
        for index in range(start, len(entries)):
            entry = entries[index]
            try:
                if carried is not None and index == start:
                    fn, pending, value = carried[0], True, carried[1]
                else:
                    fn = entry.resolve()
                    if fn is None:
                        continue
                    entry.called = True
                    pending, value = _call(entry, fn, signal, sender, named, timeout)
            except Exception as exc:
                if not robust:
                    raise
                log_failure(signal, entry, sender, exc)
                value, pending = exc, False
            results.append((fn, None if pending else value))
            if pending:
                tg.start_soon(guarded, len(results) - 1, entry, value)
    return results
