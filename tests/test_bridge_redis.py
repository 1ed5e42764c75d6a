"""The bridge over Redis Streams: Redis specifics, real worker processes, real restarts.

The reliability scenarios of issue 12 run here against real processes: broadcast to three,
a shared group of three, a SIGKILLed worker, a restarted server, hostile entries.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from asignals import AsyncSignal
from asignals.bridge import Bridge, PublishError, RedisStreams
from asignals.contrib.redis import RedisBridge

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("bridge_worker.py")
FAST: dict[str, Any] = {"claim_idle": 0.5, "block": 0.1, "reconnect_backoff": (0.02, 0.2)}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio is asyncio-only


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


# -- real processes ---------------------------------------------------------------------------


class Worker:
    """A ``tests/bridge_worker.py`` subprocess and the JSON lines it prints."""

    def __init__(self, url: str, stream: str, mode: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "redis", url, stream, mode, *args],
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
        await asyncio.wait_for(self.ready, 15)
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 15)
            except TimeoutError:
                self.kill()
        await self._reader


@pytest.fixture
async def workers() -> AsyncIterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        await w.close()


async def test_broadcast_to_three_processes_loses_and_doubles_nothing(
    redis_url: str, stream: str, workers: list[Worker]
) -> None:
    workers += [Worker(redis_url, stream, "broadcast") for _ in range(3)]
    await asyncio.gather(*(w.started() for w in workers))
    job = AsyncSignal(name="job")
    async with bridge(redis_url, stream, job, mode="publish"):
        await asyncio.gather(*(job.send("api", n=n) for n in range(300)))
        await eventually(lambda: all(len(w.numbers()) >= 300 for w in workers), timeout=15)
        await asyncio.sleep(0.3)
    for w in workers:
        await w.close()
        assert sorted(w.numbers()) == list(range(300))  # every event, once, in each process
        assert {line["sender"] for line in w.lines if "n" in line} == {"api"}


async def test_shared_group_of_three_processes_runs_each_event_once(
    redis_url: str, redis: Redis, stream: str, workers: list[Worker]
) -> None:
    workers += [
        Worker(redis_url, stream, "shared", "--group", "svc", "--work", "0.005") for _ in range(3)
    ]
    await asyncio.gather(*(w.started() for w in workers))
    job = AsyncSignal(name="job")
    async with bridge(redis_url, stream, job, mode="publish"):
        await asyncio.gather(*(job.send(None, n=n) for n in range(300)))
        await eventually(lambda: sum(len(w.numbers()) for w in workers) >= 300, timeout=20)
        await asyncio.sleep(0.5)
    handled = [n for w in workers for n in w.numbers()]
    assert sorted(handled) == list(range(300))  # none lost, none run twice
    assert all(w.numbers() for w in workers)  # all three took a share
    assert await _pending(redis, stream, "svc") == 0


async def test_sigkilled_worker_loses_no_event(
    redis_url: str, redis: Redis, stream: str, workers: list[Worker]
) -> None:
    doomed = Worker(redis_url, stream, "shared", "--group", "svc", "--hang")
    workers.append(doomed)
    await doomed.started()
    job = AsyncSignal(name="job")
    async with bridge(redis_url, stream, job, mode="publish"):
        for n in range(5):
            await job.send(None, n=n)
        await job.send(None, n=5, hang=True)  # the doomed worker is mid-event when killed
        for n in range(6, 30):
            await job.send(None, n=n)
        await eventually(lambda: {"hanging": 5} in doomed.lines)
        doomed.kill()  # SIGKILL: no stop, no acknowledgement, no hand-back
        survivors = [
            Worker(redis_url, stream, "shared", "--group", "svc", "--work", "0.002")
            for _ in range(2)
        ]
        workers.extend(survivors)
        await asyncio.gather(*(w.started() for w in survivors))
        everyone = [doomed, *survivors]
        await eventually(
            lambda: set(n for w in everyone for n in w.numbers()) >= set(range(30)), timeout=15
        )
    handled = [n for w in everyone for n in w.numbers()]
    assert set(handled) == set(range(30))  # 0 lost
    assert handled.count(5) == 1  # the event it died in ran once, on a survivor
    await until(lambda: _no_pending_async(redis, stream))


async def _no_pending_async(redis: Redis, stream: str) -> bool:
    return await _pending(redis, stream, "svc") == 0


async def test_sigterm_during_a_slow_event_stops_after_that_event(
    redis_url: str, stream: str, workers: list[Worker]
) -> None:
    """Issue 8: a stop waits for the event being run, not for events read after it."""
    slow = Worker(redis_url, stream, "shared", "--group", "svc", "--work", "1.0")
    workers.append(slow)
    await slow.started()
    job = AsyncSignal(name="job")
    async with bridge(redis_url, stream, job, mode="publish"):
        for n in range(5):
            await job.send(None, n=n)
        await asyncio.sleep(0.3)  # the worker is inside event 0
        t0 = time.monotonic()
        slow.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.to_thread(slow.proc.wait), 10)
        took = time.monotonic() - t0
        fresh = Worker(redis_url, stream, "shared", "--group", "svc")
        workers.append(fresh)
        await fresh.started()
        await eventually(lambda: sorted(fresh.numbers()) == [1, 2, 3, 4], timeout=5)
    assert slow.numbers() == [0]
    assert took < 2.0, f"SIGTERM during a 1 s event took {took:.1f} s"


async def test_hostile_entries_are_never_unpickled(
    redis_url: str, redis: Redis, stream: str, tmp_path: Path
) -> None:
    """An entry that would run code if unpickled is dead-lettered; the code never runs."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(Exploit())
    sig = AsyncSignal(name="job")
    got: list[Any] = []
    sig.connect(lambda sender, **kw: got.append(kw), weak=False)
    async with bridge(redis_url, stream, sig, mode="shared", group="g"):
        await redis.xadd(stream, {"e": payload})
        await redis.xadd(stream, {"pickle": payload})
        await until(lambda: _dead_count(redis, stream, 2))
    assert not marker.exists()
    assert got == []
    dead = await redis.xrange(f"{stream}:dead")
    assert [f[b"e"] for _, f in dead] == [payload, b""]
    assert all(f[b"reason"] == b"undecodable" for _, f in dead)


async def _dead_count(redis: Redis, stream: str, count: int) -> bool:
    return int(await redis.xlen(f"{stream}:dead")) >= count


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


@pytest.mark.parametrize("mode", ["shared", "broadcast"])
async def test_no_confirmed_event_is_lost_across_a_redis_restart(
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
    assert set(got) == set(range(60))  # at least once; a retried batch may duplicate


async def test_every_waiting_send_fails_within_publish_timeout_whatever_the_backoff(
    private_redis: RedisServer,
) -> None:
    """Issue 8: with the default backoff (up to 5 s) and publish_timeout=1, each send made
    while Redis is down fails 1 s after it started (plus a scheduling margin): queued ones,
    ones waiting for room (max_pending), and unconfirmed ones are dropped in that time."""
    sig, quiet = AsyncSignal(name="s"), AsyncSignal(name="q")
    limit, margin = 1.0, 0.5
    confirmed = RedisBridge(
        private_redis.url, stream="a", mode="publish", signals=[sig], publish_timeout=limit,
        max_pending=3,
    )  # fmt: skip
    unconfirmed = RedisBridge(
        private_redis.url, stream="b", mode="publish", signals=[quiet], publish_timeout=limit,
        confirm=False,
    )  # fmt: skip
    async with confirmed, unconfirmed:
        private_redis.kill()
        await sig.send_robust(None, n=0)  # the first failure starts the long backoff

        async def timed_send(delay: float) -> float:
            await asyncio.sleep(delay)
            started = time.monotonic()
            with pytest.raises(ExceptionGroup) as caught:
                await sig.send(None, n=1)
            assert caught.group_contains(PublishError, match=r"within 1.0s|max_pending")
            return time.monotonic() - started

        waits = await asyncio.gather(*(timed_send(d) for d in (0, 0.1, 0.2, 0.3, 0.6, 1.3, 2.2)))
        started = time.monotonic()
        await quiet.send(None, n=1)
        await asyncio.wait_for(unconfirmed.flush(), limit + margin)  # dropped, not stuck
        dropped_after = time.monotonic() - started
    assert all(limit - 0.05 <= w < limit + margin for w in waits), waits
    assert dropped_after < limit + margin
