"""The bridge over Redis Streams: Redis specifics, real worker processes, real restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pydantic
import pytest
from redis.asyncio import Redis

from asignals import AsyncSignal
from asignals.contrib.redis import DecodeError, EncodeError, JsonCodec, PublishError, RedisBridge

WORKER = Path(__file__).with_name("bridge_worker.py")
FAST = {"claim_idle": 0.2, "block": 0.1, "reconnect_backoff": (0.02, 0.2)}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio is asyncio-only


@dataclasses.dataclass
class Point:
    x: int
    y: int
    at: dt.datetime


class Money(pydantic.BaseModel):
    amount: Decimal
    currency: str


class Colour(enum.Enum):
    RED = "red"


class Order:
    """A sender class, as a model class would be for post_save."""


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> None:
    """Like :func:`eventually`, for conditions that need a Redis round trip."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


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


# -- codec ------------------------------------------------------------------------------------


def test_codec_round_trips_builtin_and_registered_types() -> None:
    codec = JsonCodec()
    codec.register(Point)
    codec.register(Money)
    codec.register(Colour)
    value = {
        "when": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        "day": dt.date(2024, 5, 1),
        "id": uuid.UUID(int=7),
        "price": Decimal("10.10"),
        "raw": b"\x00\xff",
        "pair": (1, "a"),
        "tags": {"x"},
        "by_int": {1: "one"},
        "tricky": {"$t": "not a tag"},
        "point": Point(1, 2, dt.datetime(2024, 1, 1)),
        "money": Money(amount=Decimal("2.5"), currency="EUR"),
        "colour": Colour.RED,
        "plain": [1, 2.5, None, True, "s"],
    }
    wire = json.loads(json.dumps(codec.encode(value)))
    assert codec.decode(wire) == value


def test_codec_refuses_unregistered_types_by_name() -> None:
    codec = JsonCodec()
    with pytest.raises(EncodeError, match=r"Point.*register"):
        codec.encode({"p": Point(1, 2, dt.datetime(2024, 1, 1))})
    with pytest.raises(DecodeError, match=r"unknown type name 'os\.system'"):
        codec.decode({"$t": "os.system", "v": "rm -rf /"})
    with pytest.raises(TypeError, match="not a dataclass"):
        codec.register(Order)


# -- broadcast --------------------------------------------------------------------------------


# -- shared (consumer group) ------------------------------------------------------------------


# -- lifecycle --------------------------------------------------------------------------------


def test_bad_configuration_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="needs group="):
        RedisBridge(mode="shared")
    with pytest.raises(ValueError, match="mode must be"):
        RedisBridge(mode="fanout")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no name"):
        RedisBridge().attach(AsyncSignal())


# -- real processes ---------------------------------------------------------------------------


class Worker:
    """A ``tests/bridge_worker.py`` subprocess and the JSON lines it prints."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(WORKER.parent.parent)},
        )
        self.lines: list[Any] = []
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self._reader = loop.run_in_executor(None, self._read, loop)

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == "ready":
                loop.call_soon_threadsafe(self.ready.set_result, None)
            else:
                self.lines.append(json.loads(line))

    def numbers(self) -> list[int]:
        return [line["n"] for line in self.lines if "n" in line]

    async def started(self) -> Worker:
        await asyncio.wait_for(self.ready, 10)
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 10)
            except TimeoutError:
                self.kill()
        await self._reader


@pytest.fixture
async def workers() -> AsyncIterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        await w.close()


@pytest.mark.anyio
async def test_two_processes_both_see_a_broadcast_event(
    redis_url: str, stream: str, workers: list[Worker]
) -> None:
    workers += [Worker(redis_url, stream, "broadcast") for _ in range(2)]
    await asyncio.gather(*(w.started() for w in workers))
    job = AsyncSignal(name="job")
    async with bridge(redis_url, stream, job, mode="publish"):
        await job.send("api", n=1)
        await eventually(lambda: all(w.lines for w in workers))
    for w in workers:
        await w.close()
        assert w.lines == [{"pid": w.proc.pid, "sender": "api", "n": 1}]


@pytest.mark.anyio
async def test_event_of_a_killed_worker_is_redelivered_to_another(
    redis_url: str, redis: Redis, stream: str, workers: list[Worker]
) -> None:
    doomed = Worker(redis_url, stream, "shared", "svc", "--hang")
    workers.append(doomed)
    await doomed.started()
    job = AsyncSignal(name="job")
    async with bridge(redis_url, stream, job, mode="publish"):
        await job.send(None, n=1, hang=True)
        await job.send(None, n=2)
        await eventually(lambda: {"hanging": 1} in doomed.lines)
        survivor = Worker(redis_url, stream, "shared", "svc")
        workers.append(survivor)
        await survivor.started()
        doomed.kill()  # SIGKILL mid-event: event 1 is pending on a dead consumer
        await eventually(lambda: sorted(survivor.numbers()) in ([1], [1, 2]), timeout=5)
        await eventually(lambda: 2 in doomed.numbers() + survivor.numbers())
    assert survivor.numbers().count(1) == 1
    await until(lambda: _no_pending(redis, stream, "svc"))


async def _no_pending(redis: Redis, stream: str, group: str) -> bool:
    return (await redis.xpending(stream, group))["pending"] == 0


# -- Redis going away -------------------------------------------------------------------------


class RedisServer:
    """A private ``redis-server`` with an append-only file, so a restart keeps the streams."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.dir = directory
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--dir"]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), *options, str(self.dir)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            probe = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            )
            if probe.stdout.strip() == "PONG":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: Redis gets no chance to shut down cleanly."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_redis(free_port: int, tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["shared", "broadcast"])
async def test_no_acknowledged_event_is_lost_across_a_redis_restart(
    private_redis: RedisServer, mode: str
) -> None:
    stream = "events"
    producer, consumer = AsyncSignal(name="job"), AsyncSignal(name="job")
    got: list[int] = []
    consumer.connect(lambda sender, n, **kw: got.append(n), weak=False)
    options: dict[str, Any] = {"mode": mode, "group": "svc"} if mode == "shared" else {}
    async with (
        bridge(private_redis.url, stream, consumer, **options),
        bridge(private_redis.url, stream, producer, mode="publish", publish_timeout=10),
    ):
        for n in range(20):
            await producer.send(None, n=n)
        private_redis.kill()
        # Sends while Redis is down wait for it (up to publish_timeout) instead of failing.
        during = asyncio.gather(*(producer.send(None, n=n) for n in range(20, 40)))
        await asyncio.sleep(0.3)
        private_redis.start()
        await asyncio.wait_for(during, 10)
        for n in range(40, 60):
            await producer.send(None, n=n)
        await eventually(lambda: set(got) >= set(range(60)), timeout=10)
    assert set(got) == set(range(60))  # at least once; a retried pipeline may duplicate


@pytest.mark.anyio
async def test_send_fails_after_publish_timeout_while_redis_is_down(
    private_redis: RedisServer,
) -> None:
    sig = AsyncSignal(name="s")
    async with bridge(private_redis.url, "events", sig, mode="publish", publish_timeout=0.3):
        private_redis.kill()
        started = time.monotonic()
        with pytest.raises(ExceptionGroup) as caught:
            await sig.send(None, n=1)
        assert time.monotonic() - started < 3
    assert caught.group_contains(PublishError, match="within 0.3s")
