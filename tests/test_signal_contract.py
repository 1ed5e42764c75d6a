"""AsyncSignal's contract: calling, senders, connections, bad input, on asyncio, uvloop and trio."""

from __future__ import annotations

import functools
import gc
import inspect
import sys
import threading
from typing import Any

import anyio
import pytest
from signal_receivers import Sender, async_receiver, sync_receiver

import asignals
from asignals import ANY, AsyncSignal, receiver

pytestmark = pytest.mark.anyio


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
    # slow waits for suspends to finish: only concurrent receivers can finish that way (a
    # 50 ms sleep instead raced suspends once a loaded machine stalled the loop that long).
    suspended = anyio.Event()

    async def slow(sender: Any, **kw: Any) -> str:
        await suspended.wait()
        order.append("slow")
        return "slow"

    async def suspends(sender: Any, **kw: Any) -> str:
        await anyio.sleep(0)
        order.append("suspends")
        suspended.set()
        return "suspends"

    sig.connect(slow)
    sig.connect(sync_receiver)
    sig.connect(suspends)
    sig.connect(async_receiver)
    with anyio.fail_after(30):
        results = await sig.send(None)
    assert results == [
        (slow, "slow"),
        (sync_receiver, "sync"),
        (suspends, "suspends"),
        (async_receiver, "async"),
    ]
    assert order == ["suspends", "slow"]  # they really ran concurrently


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


async def test_sending_from_ever_new_values_does_not_grow_the_cache() -> None:
    sig = AsyncSignal()
    sig.connect(sync_receiver)
    sig.connect(async_receiver, sender="known")
    for i in range(500):
        assert len(await sig.send(f"user-{i}")) == 1
        assert len(await sig.send(i)) == 1
    assert len(await sig.send("known")) == 2
    assert len(sig._value_cache) <= 1


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


# -- bad input ------------------------------------------------------------------------------


def no_kwargs(sender: Any) -> None:
    return None


ORDERS = AsyncSignal(name="orders")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: ORDERS.connect("not callable"), TypeError, "must be callable"),
        (lambda: ORDERS.connect(no_kwargs), TypeError, r"no_kwargs.*\*\*kwargs"),
        (
            lambda: ORDERS.connect(sync_receiver, dispatch_uid=["list"]),
            TypeError,
            "dispatch_uid must be hashable",
        ),
        (lambda: ORDERS.send(), TypeError, "needs a sender"),
        (lambda: ORDERS.send(None, "extra"), TypeError, r"send\(\) takes .* positional argument"),
        (lambda: ORDERS.send_nowait(None, "extra"), TypeError, "only positional argument"),
        (lambda: ORDERS.send(None, signal=1), TypeError, "'signal'"),
        (lambda: ORDERS.send(None, timeout=0), ValueError, "timeout must be positive"),
        (lambda: AsyncSignal(max_concurrency=0), ValueError, "max_concurrency"),
        (
            lambda: ORDERS.connect(async_receiver, sync_to_thread=True),
            TypeError,
            "sync_to_thread",
        ),
        (lambda: ORDERS.disconnect(), TypeError, "disconnect"),
        (lambda: ORDERS.send_nowait(None), RuntimeError, "dispatcher"),
    ],
)
async def test_bad_input_is_refused_with_clear_errors(
    call: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        result = call()
        if inspect.isawaitable(result):
            await result
    assert not ORDERS.has_listeners()


@pytest.mark.parametrize("bad", ["not_a_signal", 42, [AsyncSignal(), "x"]])
def test_receiver_of_something_else_than_signals_names_it(bad: Any) -> None:
    with pytest.raises(TypeError, match="@receiver takes an AsyncSignal") as info:
        receiver(bad)
    assert repr(bad if not isinstance(bad, list) else bad[1]) in str(info.value)


def test_send_nowait_outside_a_loop_says_how_to_open_a_dispatcher() -> None:
    sig = AsyncSignal(name="orders")
    with pytest.raises(RuntimeError) as info:
        sig.send_nowait(None)
    message = str(info.value)
    assert "async with asignals.dispatcher():" in message
    assert "lifespan" in message and "thread" in message


@pytest.mark.parametrize("method", ["send", "send_robust"])
async def test_extra_positional_arguments_get_the_tailored_message(method: str) -> None:
    sig = AsyncSignal(name="orders")
    sig.connect(sync_receiver)
    with pytest.raises(TypeError, match=r"takes the sender as its only positional argument"):
        await getattr(sig, method)(None, 1)


@pytest.mark.parametrize("options", [{"timeout": -1}, {"timeout": 1}, {"concurrent": "no"}])
async def test_background_sends_take_no_dispatch_options_whatever_their_value(
    options: dict[str, Any],
) -> None:
    sig = AsyncSignal(name="orders")
    async with asignals.dispatcher():
        with pytest.raises(TypeError, match="takes no dispatch options"):
            sig.send_nowait(None, **options)
        with pytest.raises(TypeError, match="takes no dispatch options"):
            await sig.send_later(None, **options)


# -- porting from Django and blinker --------------------------------------------------------


async def test_connect_and_disconnect_take_receiver_by_keyword_as_in_django() -> None:
    sig = AsyncSignal()
    assert sig.connect(receiver=sync_receiver) is sync_receiver
    assert await sig.send(None) == [(sync_receiver, "sync")]
    assert sig.disconnect(receiver=sync_receiver) is True
    assert await sig.send(None) == []


async def test_connect_works_as_a_decorator_as_in_blinker() -> None:
    sig = AsyncSignal()

    @sig.connect
    def on_sent(sender: Any, **kwargs: Any) -> str:
        return "decorated"

    assert callable(on_sent)
    gc.collect()  # the name still holds it: a weak connection survives
    assert await sig.send(None) == [(on_sent, "decorated")]


def on_positional(obj: Any, **kwargs: Any) -> None:
    return None


def on_positional_only(sender: Any, /, **kwargs: Any) -> None:
    return None


@pytest.mark.parametrize("fn", [on_positional, on_positional_only])
def test_a_receiver_that_cannot_take_sender_by_keyword_is_refused(fn: Any) -> None:
    sig = AsyncSignal(name="orders")
    with pytest.raises(TypeError, match="signal= and sender= by keyword") as info:
        sig.connect(fn)
    assert fn.__name__ in str(info.value)
    assert not sig.has_listeners()


def test_django_receivers_naming_the_send_arguments_still_connect() -> None:
    sig = AsyncSignal()

    def on_save(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
        return None

    def on_any(signal: Any, sender: Any, **kwargs: Any) -> None:
        return None

    def on_keywords(**kwargs: Any) -> None:
        return None

    for fn in (on_save, on_any, on_keywords):
        assert sig.connect(fn, weak=False) is fn
    assert len(sig.receivers) == 3


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


# -- the instrumentation entry ----------------------------------------------------------------


async def test_the_row_hook_rewrites_the_rows_a_cache_is_filled_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # contrib.opentelemetry puts its timers in front of the receivers through this private hook.
    from asignals import _signal

    fills: list[AsyncSignal] = []

    def shout(**kwargs: Any) -> str:
        return "from the hook"

    def hook(signal: AsyncSignal, rows: tuple[Any, ...]) -> tuple[Any, ...]:
        fills.append(signal)
        return tuple((lambda: shout, mode, entry) for _, mode, entry in rows)

    sig = AsyncSignal(name="orders")
    sig.connect(sync_receiver)
    monkeypatch.setattr(_signal, "_row_hook", hook)
    assert await sig.send(Sender, n=1) == [(shout, "from the hook")]
    assert await sig.send(Sender, n=2) == [(shout, "from the hook")]
    assert fills == [sig]  # once per cache fill, never per send


def test_the_senders_are_documented_methods_of_the_class() -> None:
    for name in ("send", "send_robust", "send_nowait", "send_later", "wait_for"):
        method = getattr(AsyncSignal, name)
        assert method.__qualname__ == f"AsyncSignal.{name}"
        assert method.__doc__ and method.__doc__.strip()
    sig = AsyncSignal()
    assert inspect.iscoroutinefunction(sig.send)
    if sys.version_info >= (3, 12):
        assert inspect.iscoroutinefunction(sig.send_robust)
