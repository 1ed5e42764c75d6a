"""``AsyncSignal.wait_for``: the next matching send, in-process, background or bridged."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import asignals
from asignals import AsyncSignal

pytestmark = pytest.mark.anyio


class Order:
    pass


async def test_returns_the_kwargs_of_the_next_matching_send() -> None:
    sig = AsyncSignal(name="orders")
    found: list[dict[str, Any]] = []

    async def wait() -> None:
        found.append(await sig.wait_for(Order, where=lambda total, **kw: total > 100, timeout=5))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        await sig.send(Order, total=5)  # too small
        await sig.send("api", total=500)  # another sender
        assert found == []
        assert await sig.send(Order, total=200) == []  # no receiver: nothing connected for it
        await sig.send(Order, total=300)  # after the first match: not seen
    assert found == [{"total": 200}]
    assert not sig.has_listeners(Order) and sig.receivers == []


async def test_any_sender_and_value_senders() -> None:
    sig = AsyncSignal()
    async with anyio.create_task_group() as tg:
        results: dict[str, dict[str, Any]] = {}

        async def wait(key: str, sender: Any) -> None:
            results[key] = await sig.wait_for(sender, timeout=5)

        tg.start_soon(wait, "any", asignals.ANY)
        tg.start_soon(wait, "by_value", "shop")
        await anyio.wait_all_tasks_blocked()
        await sig.send("sh" + "op", n=1)  # an equal string, not the same object
    assert results == {"any": {"n": 1}, "by_value": {"n": 1}}


async def test_sees_background_sends() -> None:
    sig = AsyncSignal()
    async with asignals.dispatcher():
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                found: list[dict[str, Any]] = []

                async def wait() -> None:
                    found.append(await sig.wait_for(timeout=5))

                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                sig.send_nowait(Order, n=2)
    assert found == [{"n": 2}]


async def test_times_out_and_cancelling_leaves_nothing_behind() -> None:
    sig = AsyncSignal()
    with pytest.raises(TimeoutError):
        await sig.wait_for(timeout=0.01)
    with anyio.move_on_after(0.01):
        await sig.wait_for()
    assert sig._waiters == ()  # nothing left for later sends to check
    assert await sig.send(None) == []


async def test_an_error_in_where_is_raised_from_wait_for_not_into_the_send() -> None:
    sig = AsyncSignal()
    errors: list[BaseException] = []

    async def wait() -> None:
        try:
            await sig.wait_for(where=lambda **kw: 1 / 0, timeout=5)
        except ZeroDivisionError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert await sig.send(None, n=1) == []
    assert len(errors) == 1


async def test_typed_signal_wait_for_names_are_checked_first() -> None:
    @asignals.signal
    def placed(sender: type[Order], *, total: int) -> None: ...

    async with anyio.create_task_group() as tg:
        found: list[dict[str, Any]] = []

        async def wait() -> None:
            found.append(await placed.wait_for(Order, timeout=5))

        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(TypeError):
            await placed.send(Order, totl=1)  # type: ignore[call-arg]
        await placed.send(Order, total=1)
    assert found == [{"total": 1}]


# -- bridged sends ---------------------------------------------------------------------------


@pytest.fixture
async def stream(redis_url: str) -> AsyncIterator[str]:
    from redis.asyncio import Redis

    name = f"asignals-test:{uuid.uuid4().hex}"
    yield name
    client = Redis.from_url(redis_url)
    await client.delete(name, f"{name}:dead")
    await client.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis.asyncio is asyncio-only
async def test_sees_sends_a_bridge_delivers_from_elsewhere(redis_url: str, stream: str) -> None:
    from asignals.contrib.redis import RedisBridge

    here = AsyncSignal(name="order_placed")
    there = AsyncSignal(name="order_placed")  # the same signal in "another process"
    fast = {"claim_idle": 0.2, "block": 0.1}
    async with (
        asignals.dispatcher(),
        RedisBridge(redis_url, stream=stream, signals=[here], **fast),
        RedisBridge(redis_url, stream=stream, signals=[there], **fast),
    ):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                found: list[dict[str, Any]] = []

                async def wait() -> None:
                    found.append(await there.wait_for("shop", where=lambda n, **kw: n == 2))

                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                await here.send("shop", n=1)
                await here.send("shop", n=2)
    assert found == [{"n": 2}]
