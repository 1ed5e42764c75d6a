"""AsyncSignal's contract, on asyncio, asyncio+uvloop and trio."""

from __future__ import annotations

import contextvars
import functools
import gc
import inspect
import logging
import threading
import weakref
from typing import Any

import anyio
import pytest

from asignals import ANY, AsyncSignal, WeakReceiverWarning, receiver

pytestmark = pytest.mark.anyio


def sync_receiver(sender: Any, **kwargs: Any) -> str:
    return "sync"


async def async_receiver(sender: Any, **kwargs: Any) -> str:
    return "async"


class Sender:
    pass


# -- calling and results --------------------------------------------------------------------


async def test_receivers_get_signal_sender_and_kwargs() -> None:
    sig = AsyncSignal(name="order_placed")
    seen: list[tuple[Any, ...]] = []

    def r1(sender: Any, **kwargs: Any) -> None:
        seen.append(("sync", sender, kwargs))

    async def r2(**kwargs: Any) -> None:
        seen.append(("async", kwargs["sender"], kwargs))

    sig.connect(r1)
    sig.connect(r2)
    await sig.send("shop", order=7)
    assert seen == [
        ("sync", "shop", {"signal": sig, "order": 7}),
        ("async", "shop", {"signal": sig, "sender": "shop", "order": 7}),
    ]
    # sender given by keyword, as Django allows
    seen.clear()
    await sig.send(sender="shop", order=8)
    assert [s[1] for s in seen] == ["shop", "shop"]


async def test_results_keep_connection_order_whatever_finishes_first() -> None:
    sig = AsyncSignal()
    order: list[str] = []

    async def slow(sender: Any, **kw: Any) -> str:
        await anyio.sleep(0.05)
        order.append("slow")
        return "slow"

    async def suspends(sender: Any, **kw: Any) -> str:
        await anyio.sleep(0)
        order.append("suspends")
        return "suspends"

    sig.connect(slow)
    sig.connect(sync_receiver)
    sig.connect(suspends)
    sig.connect(async_receiver)
    results = await sig.send(None)
    assert results == [
        (slow, "slow"),
        (sync_receiver, "sync"),
        (suspends, "suspends"),
        (async_receiver, "async"),
    ]
    assert order == ["suspends", "slow"]  # they really ran concurrently


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


async def test_no_receivers_returns_empty_list() -> None:
    sig = AsyncSignal()
    assert await sig.send(Sender) == []
    assert await sig.send_robust(Sender) == []


async def test_callable_kinds() -> None:
    sig = AsyncSignal()

    class SyncCallable:
        def __call__(self, sender: Any, **kw: Any) -> str:
            return "sync-call"

    class AsyncCallable:
        async def __call__(self, sender: Any, **kw: Any) -> str:
            await anyio.sleep(0)
            return "async-call"

    class Methods:
        def m(self, sender: Any, **kw: Any) -> str:
            return "method"

        async def am(self, sender: Any, **kw: Any) -> str:
            return "async-method"

    def returns_awaitable(sender: Any, **kw: Any) -> Any:
        return async_receiver(sender)

    objs = Methods()
    receivers: list[Any] = [
        SyncCallable(),
        AsyncCallable(),
        objs.m,
        objs.am,
        functools.partial(sync_receiver),
        functools.partial(async_receiver),
        returns_awaitable,
    ]
    for r in receivers:
        sig.connect(r, weak=False)
    results = [r for _, r in await sig.send(None)]
    assert results == [
        "sync-call",
        "async-call",
        "method",
        "async-method",
        "sync",
        "async",
        "async",
    ]


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


# -- sender filtering -----------------------------------------------------------------------


async def test_sender_filtering_by_identity_and_by_value() -> None:
    sig = AsyncSignal()
    calls: list[str] = []

    def for_class(sender: Any, **kw: Any) -> None:
        calls.append("class")

    def for_name(sender: Any, **kw: Any) -> None:
        calls.append("name")

    def for_int(sender: Any, **kw: Any) -> None:
        calls.append("int")

    def for_any(sender: Any, **kw: Any) -> None:
        calls.append("any")

    sig.connect(for_class, sender=Sender)
    sig.connect(for_name, sender="orders")
    sig.connect(for_int, sender=1)
    sig.connect(for_any, sender=ANY)

    await sig.send(Sender)
    assert calls == ["class", "any"]
    calls.clear()
    await sig.send("".join(["ord", "ers"]))  # an equal string, not the same object
    assert calls == ["name", "any"]
    calls.clear()
    await sig.send(True)  # bool does not match the int 1
    assert calls == ["any"]
    calls.clear()
    await sig.send(int("1"))
    assert calls == ["int", "any"]
    calls.clear()
    await sig.send(Sender())  # an instance is not its class
    assert calls == ["any"]


async def test_receiver_of_a_collected_sender_does_not_match_its_successor() -> None:
    sig = AsyncSignal()
    calls: list[int] = []

    def r(sender: Any, **kw: Any) -> None:
        calls.append(id(sender))  # not the sender itself: that would keep it alive

    for _ in range(50):  # id() reuse is likely within a few rounds
        s = Sender()
        sig.connect(r, sender=s)
        await sig.send(s)
        del s  # freed at once by reference counting: its id is free for reuse
        t = Sender()
        await sig.send(t)
        del t
    assert len(calls) == 50
    assert sig.receivers == []  # connections for dead senders are gone


async def test_has_listeners_and_receivers_for() -> None:
    sig = AsyncSignal()
    assert not sig.has_listeners()
    sig.connect(sync_receiver, sender=Sender)
    # As in Django: only receivers for any sender count without a sender.
    assert not sig.has_listeners()
    assert sig.has_listeners(Sender)
    sig.connect(async_receiver)
    assert sig.has_listeners()
    assert sig.receivers_for(Sender) == [sync_receiver, async_receiver]
    assert sig.receivers_for("other") == [async_receiver]


# -- connect / disconnect -------------------------------------------------------------------


async def test_dispatch_uid_and_pair_deduplicate_first_wins() -> None:
    sig = AsyncSignal()

    def first(sender: Any, **kw: Any) -> str:
        return "first"

    def second(sender: Any, **kw: Any) -> str:
        return "second"

    sig.connect(first, dispatch_uid="uid")
    sig.connect(second, dispatch_uid="uid")
    sig.connect(sync_receiver)
    sig.connect(sync_receiver)
    assert [r for _, r in await sig.send(None)] == ["first", "sync"]
    assert sig.disconnect(dispatch_uid="uid")
    assert not sig.disconnect(dispatch_uid="uid")
    assert sig.disconnect(sync_receiver)
    assert not sig.disconnect(sync_receiver)
    assert await sig.send(None) == []


async def test_same_receiver_for_two_senders_is_two_connections() -> None:
    sig = AsyncSignal()
    sig.connect(sync_receiver, sender="a")
    sig.connect(sync_receiver, sender="b")
    assert len(await sig.send("a")) == 1
    assert sig.disconnect(sync_receiver, sender="a")
    assert await sig.send("a") == []
    assert len(await sig.send("b")) == 1


async def test_bound_methods_deduplicate_and_disconnect() -> None:
    sig = AsyncSignal()

    class Obj:
        def m(self, sender: Any, **kw: Any) -> int:
            return id(self)

    a, b = Obj(), Obj()
    sig.connect(a.m)
    sig.connect(a.m)  # a fresh bound method object each time, same receiver
    sig.connect(b.m)
    assert len(await sig.send(None)) == 2
    assert sig.disconnect(a.m)
    assert [r for _, r in await sig.send(None)] == [id(b)]


async def test_connect_and_disconnect_inside_a_receiver_affect_later_sends() -> None:
    sig = AsyncSignal()
    calls: list[str] = []

    def late(sender: Any, **kw: Any) -> None:
        calls.append("late")

    def connecting(sender: Any, **kw: Any) -> None:
        calls.append("connecting")
        sig.connect(late)
        sig.disconnect(connecting)

    sig.connect(connecting, weak=False)
    await sig.send(None)
    assert calls == ["connecting"]
    await sig.send(None)
    assert calls == ["connecting", "late"]


async def test_connect_from_threads_while_sending() -> None:
    sig = AsyncSignal()
    receivers = [functools.partial(sync_receiver) for _ in range(200)]
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for r in receivers:
                sig.connect(r, weak=False)
            for r in receivers:
                sig.disconnect(r)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(300):
            results = await sig.send(None)
            assert all(r == "sync" for _, r in results)
            await anyio.sleep(0)
    finally:
        stop.set()
        thread.join()
    assert await sig.send(None) == []


# -- weak references ------------------------------------------------------------------------


async def test_collected_function_disappears_without_disconnect() -> None:
    sig = AsyncSignal()

    def make() -> Any:
        def local(sender: Any, **kw: Any) -> str:
            return "local"

        return local

    fn = make()
    sig.connect(fn)
    assert len(await sig.send(None)) == 1
    del fn
    gc.collect()
    assert await sig.send(None) == []
    assert sig.receivers == []
    assert sig._entries == ()  # the dead connection was cleaned, not just skipped


async def test_bound_method_is_held_weakly() -> None:
    sig = AsyncSignal()

    class Obj:
        async def handle(self, sender: Any, **kw: Any) -> str:
            return "handled"

    obj = Obj()
    ref = weakref.ref(obj)
    sig.connect(obj.handle)
    assert [r for _, r in await sig.send(None)] == ["handled"]
    del obj
    gc.collect()
    assert ref() is None  # the signal did not keep it alive
    assert await sig.send(None) == []


async def test_weak_partial_lives_as_long_as_what_it_wraps() -> None:
    sig = AsyncSignal()

    class Obj:
        def handle(self, sender: Any, tag: str = "", **kw: Any) -> str:
            return tag

    obj = Obj()
    ref = weakref.ref(obj)
    sig.connect(functools.partial(obj.handle, tag="bound"))

    def plain(sender: Any, tag: str = "", **kw: Any) -> str:
        return tag

    sig.connect(functools.partial(plain, tag="plain"))
    gc.collect()
    assert [r for _, r in await sig.send(None)] == ["bound", "plain"]
    del obj
    gc.collect()
    assert ref() is None
    assert [r for _, r in await sig.send(None)] == ["plain"]
    del plain
    gc.collect()
    assert await sig.send(None) == []


async def test_weak_lambda_collected_before_any_send_warns() -> None:
    sig = AsyncSignal(name="lonely")
    with pytest.warns(WeakReceiverWarning, match=r"weak=False"):
        sig.connect(lambda sender, **kw: None)
        gc.collect()
    assert await sig.send(None) == []
    sig.connect(lambda sender, **kw: "kept", weak=False)
    assert [r for _, r in await sig.send(None)] == ["kept"]


async def test_receiver_collected_after_being_called_does_not_warn(
    recwarn: pytest.WarningsRecorder,
) -> None:
    sig = AsyncSignal()

    def local(sender: Any, **kw: Any) -> None:
        return None

    sig.connect(local)
    await sig.send(None)
    del local
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, WeakReceiverWarning)]


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


# -- dispatch options -----------------------------------------------------------------------


async def test_concurrent_false_runs_one_by_one_in_order() -> None:
    log: list[str] = []

    def make(name: str, delay: float) -> Any:
        async def r(sender: Any, **kw: Any) -> str:
            log.append(f"start {name}")
            await anyio.sleep(delay)
            log.append(f"end {name}")
            return name

        return r

    receivers = [make("a", 0.02), make("b", 0)]
    for concurrent_signal in (True, False):
        log.clear()
        sig = AsyncSignal(concurrent=concurrent_signal)
        for r in receivers:
            sig.connect(r)
        results = await sig.send(None, concurrent=False)
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


# -- bad input ------------------------------------------------------------------------------


async def test_bad_input_is_refused_with_clear_errors() -> None:
    sig = AsyncSignal(name="orders")

    def no_kwargs(sender: Any) -> None:
        return None

    with pytest.raises(TypeError, match="must be callable"):
        sig.connect("not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"no_kwargs.*\*\*kwargs"):
        sig.connect(no_kwargs)
    with pytest.raises(TypeError, match="dispatch_uid must be hashable"):
        sig.connect(sync_receiver, dispatch_uid=["list"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a sender"):
        await sig.send()
    with pytest.raises(TypeError, match=r"send\(\) takes .* positional argument"):
        await sig.send(None, "extra")
    with pytest.raises(TypeError, match="only positional argument"):
        sig.send_nowait(None, "extra")
    with pytest.raises(TypeError, match="'signal'"):
        await sig.send(None, signal=1)
    with pytest.raises(ValueError, match="timeout must be positive"):
        await sig.send(None, timeout=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        AsyncSignal(max_concurrency=0)
    with pytest.raises(TypeError, match="sync_to_thread"):
        sig.connect(async_receiver, sync_to_thread=True)
    with pytest.raises(TypeError, match="disconnect"):
        sig.disconnect()
    with pytest.raises(RuntimeError, match="dispatcher"):
        sig.send_nowait(None)


# -- decorator and testing helpers ----------------------------------------------------------


async def test_receiver_decorator_with_one_signal_and_a_list() -> None:
    a, b = AsyncSignal(), AsyncSignal()

    @receiver(a, sender=Sender)
    async def on_a(sender: Any, **kw: Any) -> str:
        return "a"

    @receiver([a, b], dispatch_uid="both")
    def on_both(sender: Any, **kw: Any) -> str:
        return "both"

    assert [r for _, r in await a.send(Sender)] == ["a", "both"]
    assert [r for _, r in await b.send(Sender)] == ["both"]
    assert [r for _, r in await a.send("other")] == ["both"]


async def test_connected_to_and_muted() -> None:
    sig = AsyncSignal()
    with sig.connected_to(lambda sender, **kw: "temp"):
        assert [r for _, r in await sig.send(None)] == ["temp"]
    assert await sig.send(None) == []

    sig.connect(sync_receiver)
    with sig.connected_to(sync_receiver):
        assert len(await sig.send(None)) == 1
    assert len(await sig.send(None)) == 1  # was connected before: stays connected

    with sig.muted():
        assert await sig.send(None) == []
    assert len(await sig.send(None)) == 1


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


async def test_sending_from_ever_new_values_does_not_grow_the_cache() -> None:
    sig = AsyncSignal()
    sig.connect(sync_receiver)
    sig.connect(async_receiver, sender="known")
    for i in range(500):
        assert len(await sig.send(f"user-{i}")) == 1
        assert len(await sig.send(i)) == 1
    assert len(await sig.send("known")) == 2
    assert len(sig._value_cache) <= 1


async def test_a_weak_bound_method_whose_instance_goes_first_does_not_warn(
    recwarn: pytest.WarningsRecorder,
) -> None:
    sig = AsyncSignal()

    class Subscriber:  # e.g. one per websocket connection
        def __init__(self) -> None:
            sig.connect(self.on_event)

        def on_event(self, sender: Any, **kw: Any) -> None:
            return None

    subscribers = [Subscriber() for _ in range(3)]
    del subscribers
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, WeakReceiverWarning)]
    assert sig.receivers == []


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
