"""Background dispatch: send_nowait, send_later and the dispatcher, on asyncio, uvloop and trio."""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
import weakref
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

import asignals
from asignals import AsyncSignal, background
from asignals.background import BacklogFull, DispatcherClosed, current_dispatcher, dispatcher

pytestmark = pytest.mark.anyio

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class Recorder:
    """A strongly connected async receiver that records what it saw, optionally slowly."""

    def __init__(self, delay: float = 0.0, held: anyio.Event | None = None) -> None:
        self.delay = delay
        self.held = held  # set: each call waits until it is set, instead of the delay
        self.seen: list[tuple[Any, dict[str, Any], str]] = []
        self.cancelled = 0

    async def __call__(self, sender: Any, **kwargs: Any) -> str:
        try:
            if self.held is not None:
                await self.held.wait()
            else:
                await anyio.sleep(self.delay)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        kwargs.pop("signal")
        self.seen.append((sender, kwargs, request_id.get()))
        return "ok"


def make_signal(rec: Recorder, name: str = "sig") -> AsyncSignal:
    sig = AsyncSignal(name=name)
    sig.connect(rec, weak=False)
    return sig


async def test_send_nowait_outside_a_dispatcher_says_how_to_start_one() -> None:
    sig = make_signal(Recorder())
    with pytest.raises(RuntimeError, match=r"async with asignals\.dispatcher\(\)"):
        sig.send_nowait("s")
    with pytest.raises(RuntimeError, match="dispatcher"):
        await sig.send_later("s")
    assert current_dispatcher() is None


async def test_send_nowait_returns_at_once_and_exit_drains_every_send() -> None:
    rec = Recorder(delay=0.05)
    sig = make_signal(rec)
    async with asignals.background.dispatcher() as d:
        assert current_dispatcher() is d
        for i in range(20):
            assert sig.send_nowait("orders", n=i) is None
        assert rec.seen == []  # nothing ran yet: send_nowait did not wait
        assert d.pending == 20
    assert sorted(kw["n"] for _, kw, _ in rec.seen) == list(range(20))
    assert d.pending == 0 and d.peak_pending == 20 and d.submitted == 20


async def test_exit_with_an_exception_still_drains() -> None:
    rec = Recorder(delay=0.05)
    sig = make_signal(rec)
    with pytest.raises(ZeroDivisionError):
        async with dispatcher():
            sig.send_nowait("s", n=1)
            1 / 0  # noqa: B018
    assert [kw for _, kw, _ in rec.seen] == [{"n": 1}]


async def test_a_cancelled_block_still_drains() -> None:
    rec = Recorder(delay=0.05)
    sig = make_signal(rec)
    with anyio.move_on_after(0.01):
        async with dispatcher():
            sig.send_nowait("s", n=1)
            await anyio.sleep(5)
    assert len(rec.seen) == 1


async def test_drain_deadline_cancels_and_logs_each_send(caplog: pytest.LogCaptureFixture) -> None:
    slow = Recorder(delay=30)
    sig = make_signal(slow, name="slow_signal")
    with anyio.fail_after(5):
        async with dispatcher(drain_timeout=0.05):
            sig.send_nowait("the-sender", order_id=7)
            sig.send_nowait("the-sender", order_id=8, blob="x" * 100_000)
    assert slow.cancelled == 2 and slow.seen == []
    cancelled = [r for r in caplog.records if "cancelled at the drain deadline" in r.getMessage()]
    assert len(cancelled) == 2
    message = cancelled[0].getMessage()
    assert "slow_signal" in message and "the-sender" in message and "Recorder" in message
    # Which work was lost: the arguments, in a repr bounded whatever they hold.
    messages = sorted(r.getMessage() for r in cancelled)
    assert any("kwargs={'order_id': 7}" in m for m in messages)
    (long,) = [m for m in messages if "'order_id': 8" in m]
    assert "blob" in long and len(long) < 500


async def test_backlog_full_raises_and_send_later_waits_for_room() -> None:
    rec = Recorder(delay=0.02)
    sig = make_signal(rec)
    async with dispatcher(max_pending=2) as d:
        sig.send_nowait("s", n=1)
        sig.send_nowait("s", n=2)
        with pytest.raises(
            BacklogFull, match=r"2 background sends are already pending.*send_later"
        ):
            sig.send_nowait("s", n=3)
        assert isinstance(BacklogFull(), RuntimeError)
        await sig.send_later("s", n=3)  # waits until one of the first two finished
        assert len(rec.seen) >= 1
        assert d.peak_pending == 2
    assert sorted(kw["n"] for _, kw, _ in rec.seen) == [1, 2, 3]


async def test_receivers_see_the_callers_context_variables() -> None:
    rec = Recorder(delay=0.01)
    sig = make_signal(rec)
    async with dispatcher():
        for rid in ("a", "b"):
            token = request_id.set(rid)
            sig.send_nowait("s")
            request_id.reset(token)
        request_id.set("changed-after")
    assert sorted(seen for _, _, seen in rec.seen) == ["a", "b"]


async def test_background_failures_are_logged_with_signal_sender_and_receiver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_receiver(sender: Any, **kwargs: Any) -> None:
        raise ValueError("smtp down")

    rec = Recorder()
    sig = AsyncSignal(name="order_confirmed")
    sig.connect(broken_receiver, weak=False)
    sig.connect(rec, weak=False)
    with caplog.at_level(logging.ERROR, logger="asignals"):
        async with dispatcher():
            sig.send_nowait("shop-42")
    assert len(rec.seen) == 1  # the other receiver still ran
    [record] = [r for r in caplog.records if "broken_receiver" in r.getMessage()]
    message = record.getMessage()
    assert "order_confirmed" in message and "shop-42" in message
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


async def test_a_dispatcher_cannot_be_entered_twice() -> None:
    d = dispatcher()
    async with d:
        with pytest.raises(RuntimeError, match="already entered"):
            async with d:
                pass
    with pytest.raises(RuntimeError, match="already entered"):
        async with d:
            pass


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        dispatcher(max_pending=0)
    with pytest.raises(ValueError, match="drain_timeout"):
        dispatcher(drain_timeout=-1)


async def test_other_tasks_find_the_dispatcher_and_are_refused_once_shutdown_began() -> None:
    """Like a server: the dispatcher lives in the lifespan task; requests are other tasks whose
    context never saw it."""
    rec = Recorder(delay=0.1)
    sig = make_signal(rec)
    opened, first_sent, leaving = anyio.Event(), anyio.Event(), anyio.Event()
    errors: list[BaseException] = []

    async def request_task() -> None:
        await opened.wait()
        sig.send_nowait("request", n=1)  # found through the event loop, not the context
        first_sent.set()
        await leaving.wait()  # runs again only once the dispatcher's exit has begun
        try:
            sig.send_nowait("request", n=2)
        except RuntimeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(request_task)  # its context is copied before the dispatcher exists
        async with dispatcher():
            opened.set()
            await first_sent.wait()
            leaving.set()  # the next checkpoint is inside __aexit__
    assert [kw for _, kw, _ in rec.seen] == [{"n": 1}]
    [error] = errors
    assert isinstance(error, DispatcherClosed)
    assert "after shutdown began" in str(error)


async def test_sends_chained_from_background_receivers_are_drained_too() -> None:
    rec = Recorder(delay=0.02)
    second = make_signal(rec, name="second")
    first = AsyncSignal(name="first")

    async def relay(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(0.02)
        second.send_nowait(sender, relayed=True)  # while the dispatcher is already draining

    first.connect(relay, weak=False)
    async with dispatcher():
        first.send_nowait("s")
    assert [kw for _, kw, _ in rec.seen] == [{"relayed": True}]


async def test_a_nested_dispatcher_owns_the_sends_of_its_block() -> None:
    rec = Recorder(delay=0.05)
    sig = make_signal(rec)
    async with dispatcher() as outer:
        async with dispatcher() as inner:
            assert current_dispatcher() is inner
            sig.send_nowait("s")
        assert len(rec.seen) == 1  # the inner exit waited for it
        assert current_dispatcher() is outer
        assert outer.submitted == 0
    assert current_dispatcher() is None


async def test_a_send_after_the_dispatcher_closed_says_it_shut_down() -> None:
    rec = Recorder()
    sig = make_signal(rec)
    async with dispatcher() as d:
        sig.send_nowait("s", n=1)
    with pytest.raises(DispatcherClosed, match="has shut down") as caught:
        sig.send_nowait("s", n=2)
    assert "closed" in str(caught.value) and "async with asignals.dispatcher()" in str(caught.value)
    with pytest.raises(DispatcherClosed, match="has shut down"):
        await sig.send_later("s", n=3)
    assert current_dispatcher() is None
    # Nothing piles up: one description (not the dispatcher) per loop, keyed weakly.
    assert isinstance(background._closed_on, weakref.WeakKeyDictionary)
    assert all(isinstance(v, str) for v in background._closed_on.values())
    size = len(background._closed_on)
    for _ in range(20):
        async with dispatcher():
            pass
    assert len(background._closed_on) == size
    assert repr(d) in str(caught.value)
    # A new dispatcher on the loop takes over; once it closes, sends are refused again.
    async with dispatcher():
        sig.send_nowait("s", n=5)
    with pytest.raises(DispatcherClosed, match="has shut down"):
        sig.send_nowait("s", n=6)
    assert [kw["n"] for _, kw, _ in rec.seen] == [1, 5]


async def test_during_the_drain_only_sends_chained_by_background_receivers_are_accepted() -> None:
    """A task started inside the block inherits the block's context; it must not be able to
    keep the drain going. A background receiver's chained sends (from its own task or a
    worker thread it runs in) are part of the work drained."""
    rec = Recorder()
    second = make_signal(rec, name="second")
    first = AsyncSignal(name="first")

    async def relay(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(0.1)  # the drain has begun by now
        second.send_nowait(sender, via="send_nowait")
        await second.send_later(sender, via="send_later")

    def threaded_relay(sender: Any, **kwargs: Any) -> None:
        time.sleep(0.1)  # the drain has begun by now
        second.send_nowait(sender, via="worker thread")

    first.connect(relay, weak=False)
    first.connect(threaded_relay, weak=False, sync_to_thread=True)
    refused: list[BaseException] = []
    produced = 0

    async def producer() -> None:  # a periodic producer, started inside the block
        nonlocal produced
        while True:
            try:
                second.send_nowait("producer", via="producer")
            except DispatcherClosed as exc:
                refused.append(exc)
                return
            produced += 1
            await anyio.sleep(0.01)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, dispatcher():
            first.send_nowait("s")
            tg.start_soon(producer)
            await anyio.sleep(0.03)
    [error] = refused
    assert "after shutdown began" in str(error)
    vias = [kw["via"] for _, kw, _ in rec.seen]
    assert vias.count("producer") == produced >= 1
    assert sorted(v for v in vias if v != "producer") == [
        "send_later",
        "send_nowait",
        "worker thread",
    ]


async def test_a_task_outliving_its_background_send_is_refused_during_the_drain() -> None:
    rec = Recorder()
    late = make_signal(rec, name="late")
    slow = make_signal(Recorder(delay=0.2), name="slow")  # keeps the drain going
    spawner_signal = AsyncSignal(name="spawner")
    refused: list[BaseException] = []

    async def leftover() -> None:
        await anyio.sleep(0.05)  # its background send has finished by now
        try:
            late.send_nowait("leftover")
        except DispatcherClosed as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:

        async def spawner(sender: Any, **kwargs: Any) -> None:
            tg.start_soon(leftover)  # inherits this send's context, but not its lifetime

        spawner_signal.connect(spawner, weak=False)
        async with dispatcher():
            slow.send_nowait("s")
            spawner_signal.send_nowait("s")
    assert len(refused) == 1 and rec.seen == []


async def test_send_nowait_from_an_anyio_worker_thread_runs_on_the_loop() -> None:
    # Held, not slow: a 50 ms delivery could be over before the next thread call on a loaded
    # machine, and then there was no backlog to refuse.
    held = anyio.Event()
    rec = Recorder(held=held)
    sig = make_signal(rec)
    request_id.set("from-thread")
    with pytest.raises(RuntimeError, match=r"async with asignals\.dispatcher\(\)"):
        await anyio.to_thread.run_sync(functools.partial(sig.send_nowait, "s", n=0))
    async with dispatcher(max_pending=1) as d:
        await anyio.to_thread.run_sync(functools.partial(sig.send_nowait, "s", n=1))
        assert d.pending == 1
        with pytest.raises(BacklogFull):  # raised in the thread, to the caller
            await anyio.to_thread.run_sync(functools.partial(sig.send_nowait, "s", n=2))
        held.set()
    assert rec.seen == [("s", {"n": 1}, "from-thread")]
    with pytest.raises(DispatcherClosed, match="has shut down"):
        await anyio.to_thread.run_sync(functools.partial(sig.send_nowait, "s", n=3))


async def test_a_thread_anyio_did_not_start_gets_a_working_workaround() -> None:
    rec = Recorder()
    sig = make_signal(rec)
    errors: list[BaseException] = []

    def plain_thread(token: Any) -> None:
        try:
            sig.send_nowait("s", n=1)
        except RuntimeError as exc:
            errors.append(exc)
        if token is not None:  # the workaround the message shows
            anyio.from_thread.run_sync(functools.partial(sig.send_nowait, "s", n=2), token=token)

    has_tokens = hasattr(anyio.lowlevel, "current_token")  # AnyIO >= 4.11
    async with dispatcher():
        token = anyio.lowlevel.current_token() if has_tokens else None
        thread = threading.Thread(target=plain_thread, args=(token,))
        thread.start()
        await anyio.to_thread.run_sync(thread.join)
    [error] = errors
    message = str(error)
    assert type(error) is RuntimeError
    assert "anyio.to_thread.run_sync" in message
    assert "functools.partial(sig.send_nowait, sender, key=value), token=token)" in message
    assert [kw["n"] for _, kw, _ in rec.seen] == ([2] if has_tokens else [])
