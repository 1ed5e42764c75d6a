"""How a send runs its receivers: concurrency, contexts, failures, options, on every loop."""

from __future__ import annotations

import contextvars
import functools
import gc
import inspect
import logging
import threading
from typing import Any

import anyio
import pytest
from signal_receivers import Sender, async_receiver, sync_receiver

from asignals import AsyncSignal

pytestmark = pytest.mark.anyio


# -- concurrency ----------------------------------------------------------------------------


async def test_async_receivers_run_concurrently() -> None:
    sig = AsyncSignal()
    event = anyio.Event()

    async def waiter(sender: Any, **kw: Any) -> str:
        with anyio.fail_after(2):
            await event.wait()
        return "woken"

    async def setter(sender: Any, **kw: Any) -> str:
        await anyio.sleep(0)
        event.set()
        return "set"

    sig.connect(waiter)
    sig.connect(setter)
    assert [r for _, r in await sig.send(None)] == ["woken", "set"]


async def test_suspending_receivers_start_together() -> None:
    sig = AsyncSignal()

    async def waits(sender: Any, **kw: Any) -> None:
        await anyio.sleep(0.05)

    receivers = [functools.partial(waits) for _ in range(20)]
    for fn in receivers:
        sig.connect(fn, weak=False)
    start = anyio.current_time()
    await sig.send(None)
    assert anyio.current_time() - start < 0.5  # 20 x 0.05 s would be 1 s one by one


async def test_sync_receivers_after_a_suspended_one_still_run_in_order() -> None:
    sig = AsyncSignal()
    log: list[str] = []

    async def suspends(sender: Any, **kw: Any) -> str:
        log.append("suspends:start")
        await anyio.sleep(0.01)
        log.append("suspends:end")
        return "a"

    def after(sender: Any, **kw: Any) -> str:
        log.append("after")
        return "b"

    sig.connect(suspends)
    sig.connect(after)
    assert [r for _, r in await sig.send(None)] == ["a", "b"]
    assert log.index("suspends:start") < log.index("after")


# -- context variables ----------------------------------------------------------------------


async def test_contextvars_of_the_caller_are_visible() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    sig = AsyncSignal()

    def sync_r(sender: Any, **kw: Any) -> str:
        return var.get()

    async def async_r(sender: Any, **kw: Any) -> str:
        value = var.get()
        var.set("changed by receiver")
        await anyio.sleep(0)
        return value

    sig.connect(sync_r)
    sig.connect(async_r)
    var.set("request-42")
    assert [r for _, r in await sig.send(None)] == ["request-42", "request-42"]
    # As in Django 5.1+: receivers share the caller's context, and what they set is visible
    # to the caller once the send returns.
    assert var.get() == "changed by receiver"


@pytest.mark.parametrize("options", [{}, {"concurrent": False}])
async def test_receivers_in_turn_share_the_callers_context(options: dict[str, Any]) -> None:
    """As in Django 5.1+: what one receiver sets, the next sees, and so does the caller."""
    var: contextvars.ContextVar[int] = contextvars.ContextVar("counter")
    sig = AsyncSignal()
    seen: list[int] = []

    async def bump(sender: Any, **kw: Any) -> None:
        var.set(var.get() + 1)
        seen.append(var.get())

    def sync_bump(sender: Any, **kw: Any) -> None:
        var.set(var.get() + 1)
        seen.append(var.get())

    receivers = [functools.partial(bump), sync_bump, functools.partial(bump)]
    for fn in receivers:
        sig.connect(fn, weak=False)
    var.set(1)
    await sig.send(None, **options)
    assert seen == [2, 3, 4]
    assert var.get() == 4


@pytest.mark.parametrize("options", [{}, {"timeout": 5}, {"concurrent": False}])
async def test_what_concurrent_receivers_set_reaches_the_caller(options: dict[str, Any]) -> None:
    names = ["held", "task", "sync"]
    variables = {n: contextvars.ContextVar[str](n, default="unset") for n in names}
    sig = AsyncSignal()

    def setter(name: str, suspend: bool) -> Any:
        async def r(sender: Any, **kw: Any) -> None:
            if suspend:
                await anyio.sleep(0.01)
            variables[name].set("set")

        return r

    def sync_setter(sender: Any, **kw: Any) -> None:
        variables["sync"].set("set")

    receivers = [setter("held", True), setter("task", True), sync_setter]
    for fn in receivers:
        sig.connect(fn, weak=False)
    await sig.send(None, **options)
    assert {n: v.get() for n, v in variables.items()} == dict.fromkeys(names, "set")


async def test_a_token_set_before_suspending_resets_after_it() -> None:
    """structlog/OpenTelemetry style: var.set(), await, var.reset(token)."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("span", default="root")
    sig = AsyncSignal()

    async def traced(sender: Any, **kw: Any) -> str:
        token = var.set("inside")
        await anyio.sleep(0.01)
        var.reset(token)
        return "traced"

    sig.connect(traced)
    sig.connect(async_receiver)  # not the last one: the send hands the rest to tasks
    assert [r for _, r in await sig.send(None)] == ["traced", "async"]
    assert var.get() == "root"


async def test_a_nested_send_does_not_undo_what_others_set() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("Y", default="unset")
    outer, inner = AsyncSignal(), AsyncSignal()

    async def slow_inner(sender: Any, **kw: Any) -> None:
        await anyio.sleep(0.05)

    inner.connect(slow_inner)
    inner.connect(async_receiver)

    async def first(sender: Any, **kw: Any) -> None:
        await anyio.sleep(0)

    async def nests(sender: Any, **kw: Any) -> str:
        await inner.send(None)
        return var.get()

    async def sets(sender: Any, **kw: Any) -> None:
        await anyio.sleep(0.01)
        var.set("set by a receiver")

    for fn in (first, nests, sets):
        outer.connect(fn)
    var.set("caller")
    results = await outer.send(None)
    assert results[1][1] == "set by a receiver"
    assert var.get() == "set by a receiver"


# -- failures -------------------------------------------------------------------------------


async def test_send_raises_a_group_and_cancels_siblings() -> None:
    sig = AsyncSignal()
    cancelled = anyio.Event()

    async def hangs(sender: Any, **kw: Any) -> None:
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    async def fails(sender: Any, **kw: Any) -> None:
        await anyio.sleep(0)
        raise ValueError("boom")

    sig.connect(hangs)
    sig.connect(fails)
    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await sig.send(None)
    assert [type(e) for e in info.value.exceptions] == [ValueError]
    assert cancelled.is_set()


async def test_a_lone_sync_failure_is_still_a_group() -> None:
    sig = AsyncSignal()

    def fails(sender: Any, **kw: Any) -> None:
        raise KeyError("k")

    sig.connect(fails)
    caught = []
    try:
        await sig.send(None)
    except* KeyError as group:
        caught.extend(group.exceptions)
    assert [type(e) for e in caught] == [KeyError]


async def test_send_robust_returns_and_logs_failures(caplog: pytest.LogCaptureFixture) -> None:
    sig = AsyncSignal(name="robust")

    def fails(sender: Any, **kw: Any) -> None:
        raise ValueError("sync")

    class Failing:
        async def __call__(self, sender: Any, **kw: Any) -> None:
            await anyio.sleep(0)
            raise RuntimeError("instance")

    async def slow_ok(sender: Any, **kw: Any) -> str:
        await anyio.sleep(0.02)
        return "ok"

    failing_partial = functools.partial(fails)
    failing_instance = Failing()
    sig.connect(failing_partial, weak=False)
    sig.connect(failing_instance, weak=False)
    sig.connect(slow_ok)
    with caplog.at_level(logging.ERROR, logger="asignals"):
        results = await sig.send_robust("shop")
    assert results[0][0] is failing_partial and isinstance(results[0][1], ValueError)
    assert results[1][0] is failing_instance and isinstance(results[1][1], RuntimeError)
    assert results[2] == (slow_ok, "ok")  # not cancelled by the others' failures
    messages = [r.getMessage() for r in caplog.records]
    assert any("functools.partial(" in m and "fails" in m for m in messages)
    assert any("Failing instance" in m for m in messages)
    assert all("robust" in m for m in messages)


async def test_cancelling_the_sender_cancels_receivers_and_propagates() -> None:
    sig = AsyncSignal()
    started = anyio.Event()
    cancelled = anyio.Event()

    async def hangs(sender: Any, **kw: Any) -> None:
        started.set()
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    sig.connect(hangs)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sig.send_robust, None)
        with anyio.fail_after(2):
            await started.wait()
        tg.cancel_scope.cancel()
    assert cancelled.is_set()


# -- every receiver error in one group, on every loop and option ----------------------------


MODES = [
    pytest.param({}, id="driver"),
    pytest.param({"timeout": 5}, id="timeout"),
    pytest.param({"max_concurrency": 3}, id="max_concurrency"),
]


def shielded_failure(index: int, delay: float) -> Any:
    async def fails(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(0)
        with anyio.CancelScope(shield=True):
            await anyio.sleep(delay)
        raise ValueError(index)

    fails.__qualname__ = f"fails{index}"
    return fails


@pytest.mark.parametrize("options", MODES)
async def test_failures_raised_while_cancelled_are_all_in_the_group(
    options: dict[str, Any],
) -> None:
    sig = AsyncSignal(name="orders")
    receivers = [shielded_failure(i, 0.01 + 0.03 * i) for i in range(3)]
    for fn in receivers:
        sig.connect(fn)
    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await sig.send(None, **options)
    assert sorted(e.args[0] for e in info.value.exceptions) == [0, 1, 2]
    assert str(info.value).startswith("3 receiver(s) of <AsyncSignal 'orders'> raised")


async def test_failures_after_a_suspended_first_receiver_are_all_in_the_group() -> None:
    # The first receiver holds the sending task; the others run in tasks started after it.
    sig = AsyncSignal(name="orders")
    receivers = [shielded_failure(i, 0.04 - 0.015 * i) for i in range(3)]
    for fn in receivers:
        sig.connect(fn)
    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await sig.send(None)
    assert sorted(e.args[0] for e in info.value.exceptions) == [0, 1, 2]


@pytest.mark.parametrize(
    "options",
    [*MODES, pytest.param({"concurrent": False}, id="sequential")],
)
async def test_one_group_shape_for_every_option(options: dict[str, Any]) -> None:
    sig = AsyncSignal(name="orders")

    async def late(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(0)
        raise KeyError("late")

    sig.connect(late)
    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await sig.send(None, **options)
    assert type(info.value) is ExceptionGroup
    assert str(info.value) == "1 receiver(s) of <AsyncSignal 'orders'> raised (1 sub-exception)"
    assert [type(e) for e in info.value.exceptions] == [KeyError]


@pytest.mark.parametrize("concurrent", [True, False])
async def test_a_timeout_is_a_timeout_error_in_the_same_group(concurrent: bool) -> None:
    sig = AsyncSignal(name="orders")

    async def slow(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(5)

    sig.connect(slow)
    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await sig.send(None, timeout=0.02, concurrent=concurrent)
    assert type(info.value) is ExceptionGroup
    assert str(info.value).startswith("1 receiver(s) of <AsyncSignal 'orders'> raised")
    (error,) = info.value.exceptions
    assert isinstance(error, TimeoutError)
    assert "slow" in str(error) and "0.02" in str(error)


async def test_a_robust_timeout_is_logged_as_one_line(caplog: pytest.LogCaptureFixture) -> None:
    sig = AsyncSignal(name="orders")

    async def slow(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(5)

    sig.connect(slow)
    with caplog.at_level(logging.WARNING, logger="asignals"), anyio.fail_after(5):
        ((_, result),) = await sig.send_robust("shop", timeout=0.02)
    assert isinstance(result, TimeoutError)
    (record,) = caplog.records
    message = record.getMessage()
    assert record.exc_info is None and "\n" not in message
    assert "slow" in message and "'orders'" in message and "'shop'" in message
    assert "0.02" in message


# -- dispatch options -----------------------------------------------------------------------


@pytest.mark.parametrize("signal_concurrent", [True, False])
async def test_concurrent_false_runs_one_by_one_in_order(signal_concurrent: bool) -> None:
    log: list[str] = []

    def make(name: str, delay: float) -> Any:
        async def r(sender: Any, **kw: Any) -> str:
            log.append(f"start {name}")
            await anyio.sleep(delay)
            log.append(f"end {name}")
            return name

        return r

    receivers = [make("a", 0.02), make("b", 0)]
    sig = AsyncSignal(concurrent=signal_concurrent)
    for r in receivers:
        sig.connect(r)
    results = await sig.send(None, concurrent=False)  # the call's option wins
    assert [r for _, r in results] == ["a", "b"]
    assert log == ["start a", "end a", "start b", "end b"]


async def test_timeout_cancels_the_late_receiver() -> None:
    sig = AsyncSignal(timeout=0.05)
    late_cancelled = anyio.Event()

    async def late(sender: Any, **kw: Any) -> None:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            late_cancelled.set()
            raise

    sig.connect(late)
    sig.connect(async_receiver)
    with anyio.fail_after(2):
        results = await sig.send_robust(None)
    assert isinstance(results[0][1], TimeoutError)
    assert results[1][1] == "async"
    assert late_cancelled.is_set()
    with anyio.fail_after(2), pytest.raises(ExceptionGroup) as info:
        await sig.send(None, timeout=0.01)
    assert any(isinstance(e, TimeoutError) for e in info.value.exceptions)
    # the per-call value wins over the signal's
    sig.disconnect(late)
    assert await sig.send(None, timeout=1) == [(async_receiver, "async")]


async def test_max_concurrency_caps_running_receivers() -> None:
    sig = AsyncSignal()
    running = 0
    peak = 0

    async def r(sender: Any, **kw: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1

    receivers = [functools.partial(r) for _ in range(8)]
    for fn in receivers:
        sig.connect(fn, weak=False)
    results = await sig.send(None, max_concurrency=2)
    assert len(results) == 8
    assert peak == 2


async def test_sync_to_thread_runs_in_a_worker_thread() -> None:
    sig = AsyncSignal()
    loop_thread = threading.get_ident()

    def blocking(sender: Any, **kw: Any) -> int:
        return threading.get_ident()

    def inline(sender: Any, **kw: Any) -> int:
        return threading.get_ident()

    sig.connect(blocking, sync_to_thread=True)
    sig.connect(inline)
    (_, in_thread), (_, on_loop) = await sig.send(None)
    assert in_thread != loop_thread
    assert on_loop == loop_thread


# -- resources ------------------------------------------------------------------------------


async def test_sends_leave_no_reference_cycles() -> None:
    sig = AsyncSignal()

    async def suspends(sender: Any, **kw: Any) -> None:
        await anyio.sleep(0)

    sig.connect(sync_receiver)
    sig.connect(async_receiver)
    sig.connect(suspends)
    await sig.send(Sender)  # warm caches
    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            await sig.send(Sender)
            await sig.send_robust(Sender)
        found = gc.collect()
    finally:
        gc.enable()
    # Allow the event loop's own bookkeeping, but not a cycle per send.
    assert found < 50


# -- the dispatch machinery: suspension, task identity, failures across tasks ---------------


async def test_cancel_scopes_inside_receivers_belong_to_their_own_task() -> None:
    """A receiver's deadline must cancel that receiver, never the sender or a sibling."""
    sig = AsyncSignal()

    def make(deadline: float, work: float) -> Any:
        async def r(sender: Any, **kw: Any) -> str:
            with anyio.fail_after(deadline):
                await anyio.sleep(work)
            return "done"

        return r

    receivers = [make(1, 0.01), make(0.02, 1), make(1, 0.01), make(1, 0)]
    for fn in receivers:
        sig.connect(fn)
    with anyio.fail_after(3):
        results = await sig.send_robust(None)
    assert results[0][1] == "done"
    assert isinstance(results[1][1], TimeoutError)
    assert [r for _, r in results[2:]] == ["done", "done"]
    await anyio.sleep(0)  # the sending task was not left cancelled


async def test_a_failure_in_one_task_cancels_receivers_in_the_others() -> None:
    sig = AsyncSignal()
    cancelled: list[str] = []

    def hanging(name: str) -> Any:
        async def r(sender: Any, **kw: Any) -> None:
            try:
                await anyio.sleep(10)
            except anyio.get_cancelled_exc_class():
                cancelled.append(name)
                raise

        return r

    async def fails_later(sender: Any, **kw: Any) -> None:
        await anyio.sleep(0.01)
        raise ValueError("late failure")

    receivers = [hanging("first"), fails_later, hanging("third")]
    for fn in receivers:
        sig.connect(fn)
    with anyio.fail_after(3), pytest.raises(ExceptionGroup) as info:
        await sig.send(None)
    assert [str(e) for e in info.value.exceptions] == ["late failure"]
    assert sorted(cancelled) == ["first", "third"]
    await anyio.sleep(0)  # the sender is usable afterwards: our cancellation was undone


@pytest.mark.parametrize("position", [0, 1])
async def test_sender_is_usable_after_a_receiver_failed_after_suspending(position: int) -> None:
    sig = AsyncSignal()

    async def fails(sender: Any, **kw: Any) -> None:
        await anyio.sleep(0)
        raise ValueError("after suspending")

    async def waits(sender: Any, **kw: Any) -> None:
        await anyio.sleep(0.01)

    receivers: list[Any] = [waits]
    receivers.insert(position, fails)
    for fn in receivers:
        sig.connect(fn)
    with pytest.raises(ExceptionGroup):
        await sig.send(None)
    with anyio.fail_after(1):
        await anyio.sleep(0.01)  # no cancellation left pending on the sending task
    assert await sig.send_robust("other") != []


async def test_cancel_scopes_around_send_see_their_own_cancellation() -> None:
    sig = AsyncSignal()

    async def slow(sender: Any, **kw: Any) -> None:
        await anyio.sleep(5)

    sig.connect(slow)
    sig.connect(slow, dispatch_uid="second")  # two receivers: the send starts a task
    with anyio.move_on_after(0.05) as scope:
        await sig.send(None)
    assert scope.cancelled_caught
    with pytest.raises(TimeoutError), anyio.fail_after(0.05):
        await sig.send(None)
    await anyio.sleep(0)  # and the task is not left cancelled


async def test_a_base_exception_leaves_no_receiver_running() -> None:
    sig = AsyncSignal()
    log: list[str] = []

    async def held(sender: Any, **kw: Any) -> None:
        try:
            await anyio.sleep(0.05)
        finally:
            log.append("held stopped")

    async def child(sender: Any, **kw: Any) -> None:
        await anyio.sleep(0.05)
        log.append("child ran on after the send")

    def stop(sender: Any, **kw: Any) -> None:
        raise SystemExit(3)

    for fn in (held, child, stop):
        sig.connect(fn)
    with pytest.raises((SystemExit, BaseExceptionGroup)):  # trio's nursery wraps it
        await sig.send(None)
    assert log == ["held stopped"]
    await anyio.sleep(0.1)
    assert log == ["held stopped"]


@pytest.mark.skipif(
    not hasattr(inspect, "markcoroutinefunction"), reason="markcoroutinefunction is new in 3.12"
)
async def test_an_async_marked_callable_may_return_any_awaitable() -> None:
    """Framework wrappers mark plain functions as coroutine functions (asgiref does)."""

    class Later:
        def __await__(self) -> Any:
            yield from anyio.sleep(0).__await__()
            return "later"

    def returns_later(sender: Any, **kw: Any) -> Later:
        return Later()

    marked = inspect.markcoroutinefunction(returns_later)  # type: ignore[attr-defined,unused-ignore]
    sig = AsyncSignal()
    sig.connect(marked)
    assert [r for _, r in await sig.send(None)] == ["later"]
    sig.connect(async_receiver)  # no longer the last receiver: it goes through the driver
    assert [r for _, r in await sig.send(None)] == ["later", "async"]
