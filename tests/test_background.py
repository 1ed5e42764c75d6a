"""Background dispatch: send_nowait, send_later and the dispatcher, on asyncio, uvloop and trio."""

from __future__ import annotations

import contextvars
import logging
from typing import Any

import anyio
import pytest

import asignals
from asignals import AsyncSignal
from asignals.background import BacklogFull, DispatcherClosed, current_dispatcher, dispatcher

pytestmark = pytest.mark.anyio

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class Recorder:
    """A strongly connected async receiver that records what it saw, optionally slowly."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.seen: list[tuple[Any, dict[str, Any], str]] = []
        self.cancelled = 0

    async def __call__(self, sender: Any, **kwargs: Any) -> str:
        try:
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
            sig.send_nowait("the-sender")
            sig.send_nowait("the-sender")
    assert slow.cancelled == 2 and slow.seen == []
    cancelled = [r for r in caplog.records if "cancelled at the drain deadline" in r.getMessage()]
    assert len(cancelled) == 2
    message = cancelled[0].getMessage()
    assert "slow_signal" in message and "the-sender" in message and "Recorder" in message


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
