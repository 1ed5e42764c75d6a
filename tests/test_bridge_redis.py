"""The bridge over Redis Streams: Redis specifics, real worker processes, real restarts.

The reliability scenarios of issue 12 run here against real processes: broadcast to three,
a shared group of three, a SIGKILLed worker, a restarted server, hostile entries.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from waiting import eventually, until

from asignals import AsyncSignal
from asignals.bridge import Bridge, RedisStreams
from asignals.contrib.redis import RedisBridge

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("bridge_worker.py")
FAST: dict[str, Any] = {"claim_idle": 0.5, "block": 0.1, "reconnect_backoff": (0.02, 0.2)}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio is asyncio-only


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def stream(redis: Redis) -> AsyncIterator[str]:
    name = f"asignals-test:{uuid.uuid4().hex}"
    yield name
    await redis.delete(name, f"{name}:dead")


def bridge(url: str, stream: str, *signals: Any, **options: Any) -> RedisBridge:
    return RedisBridge(url, stream=stream, signals=signals, **{**FAST, **options})


async def _pending(redis: Redis, stream: str, group: str) -> int:
    return int((await redis.xpending(stream, group))["pending"])


# -- the shorthand and Redis specifics --------------------------------------------------------


async def test_redis_bridge_is_bridge_over_redis_streams(
    redis_url: str, redis: Redis, stream: str
) -> None:
    sig = AsyncSignal(name="s")
    short = RedisBridge(redis_url, stream=stream, mode="publish", signals=[sig], maxlen=10)
    assert isinstance(short, Bridge) and isinstance(short.transport, RedisStreams)
    assert short.dead_letter_stream == f"{stream}:dead"
    async with short:
        for n in range(500):
            await sig.send(None, n=n)
    assert await redis.xlen(stream) < 500  # maxlen went to the transport (MAXLEN ~ trims)
    with pytest.raises(AttributeError, match=r"read them there.*:dead"):
        short.dead_letters  # noqa: B018


async def test_dead_letters_can_be_replayed_as_they_are(
    redis_url: str, redis: Redis, stream: str
) -> None:
    """A dead letter keeps the envelope in field ``e``: XADD it back and it is delivered."""
    producer, worker = AsyncSignal(name="job"), AsyncSignal(name="job")
    fixed = False
    got: list[int] = []

    def handle(sender: Any, n: int, **kw: Any) -> None:
        if not fixed:
            raise RuntimeError("bug")
        got.append(n)

    worker.connect(handle, weak=False)
    opts: dict[str, Any] = {"mode": "shared", "group": "g", "max_attempts": 1}
    async with (
        bridge(redis_url, stream, worker, **opts),
        bridge(redis_url, stream, producer, mode="publish"),
    ):
        await producer.send(None, n=7)
        await until(lambda: redis.exists(f"{stream}:dead"))
        ((_id, fields),) = await redis.xrange(f"{stream}:dead")
        fixed = True
        await redis.xadd(stream, {"e": fields[b"e"]})
        await eventually(lambda: got == [7])
    assert fields[b"reason"] == b"max_attempts" and fields[b"attempts"] == b"1"


async def test_an_entry_without_the_envelope_field_is_dead_lettered(
    redis_url: str, redis: Redis, stream: str
) -> None:
    """A foreign entry (a pickle in a field of its own) is dead-lettered, never unpickled."""
    payload = pickle.dumps(object())
    sig = AsyncSignal(name="job")
    got: list[Any] = []
    sig.connect(lambda sender, **kw: got.append(kw), weak=False)
    async with bridge(redis_url, stream, sig, mode="shared", group="g"):
        await redis.xadd(stream, {"pickle": payload})
        await until(lambda: _dead_count(redis, stream, 1))
    assert got == []
    ((_id, fields),) = await redis.xrange(f"{stream}:dead")
    assert fields[b"e"] == b"" and fields[b"reason"] == b"undecodable"


async def _dead_count(redis: Redis, stream: str, count: int) -> bool:
    return int(await redis.xlen(f"{stream}:dead")) >= count


# The real-process scenarios (and the server restarts) run on every server transport, in
# test_bridge_processes.py.
