"""The Redis Streams bridge against real Redis servers and real worker processes."""

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

WORKER = Path(__file__).with_name("redis_worker.py")
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


@pytest.mark.anyio
async def test_broadcast_reaches_other_process_once_and_never_echoes(
    redis_url: str, redis: Redis, stream: str
) -> None:
    here, there = AsyncSignal(name="placed"), AsyncSignal(name="placed")
    local: list[Any] = []
    remote: list[Any] = []
    here.connect(lambda sender, **kw: local.append((sender, kw)), weak=False)
    there.connect(lambda sender, **kw: remote.append((sender, kw)), weak=False)
    a, b = bridge(redis_url, stream, here), bridge(redis_url, stream, there)
    a.codec.register(Point)
    b.codec.register(Point)
    async with a, b:
        point = Point(1, 2, dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        await here.send("orders", point=point, total=Decimal("9.99"))
        await eventually(lambda: len(remote) == 1)
        await asyncio.sleep(0.3)  # give any echo or duplicate time to show up
    assert remote == [("orders", {"signal": there, "point": point, "total": Decimal("9.99")})]
    assert len(local) == 1  # the sending process ran its receivers once, not again from Redis
    assert await redis.xlen(stream) == 1  # the receiving side did not re-publish it


@pytest.mark.anyio
async def test_senders_travel_by_registered_name(redis_url: str, stream: str) -> None:
    here, there = AsyncSignal(name="saved"), AsyncSignal(name="saved")
    got: list[Any] = []
    there.connect(lambda sender, **kw: got.append(("Order", kw["n"])), sender=Order, weak=False)
    there.connect(lambda sender, **kw: got.append((sender, kw["n"])), sender=7, weak=False)
    a = bridge(redis_url, stream, here, senders={"order": Order})
    b = bridge(redis_url, stream, there, senders={"order": Order})
    async with a, b:
        await here.send(Order, n=1)
        await here.send(7, n=2)
        await here.send("other", n=3)  # nobody listens to this sender over there
        await eventually(lambda: len(got) == 2)
        with pytest.raises(ExceptionGroup) as caught:
            await here.send(object(), n=4)
    assert sorted(got, key=str) == [("Order", 1), (7, 2)]
    assert caught.group_contains(EncodeError, match="register_sender")


@pytest.mark.anyio
async def test_unencodable_kwarg_fails_the_send_with_its_name(redis_url: str, stream: str) -> None:
    sig = AsyncSignal(name="s")
    async with bridge(redis_url, stream, sig, mode="publish"):
        with pytest.raises(ExceptionGroup) as caught:
            await sig.send(None, point=Point(1, 2, dt.datetime(2024, 1, 1)))
    assert caught.group_contains(EncodeError, match="'point'.*Point")


@pytest.mark.anyio
async def test_send_from_a_remote_receiver_is_a_new_event(redis_url: str, stream: str) -> None:
    """Loop prevention suppresses only the re-send of the remote event itself."""
    ping_a, pong_a = AsyncSignal(name="ping"), AsyncSignal(name="pong")
    ping_b, pong_b = AsyncSignal(name="ping"), AsyncSignal(name="pong")
    pongs: list[int] = []

    async def answer(sender: Any, n: int, **kw: Any) -> None:
        await pong_b.send(sender, n=n + 1)

    ping_b.connect(answer)
    pong_a.connect(lambda sender, n, **kw: pongs.append(n), weak=False)
    async with bridge(redis_url, stream, ping_a, pong_a), bridge(redis_url, stream, ping_b, pong_b):
        await ping_a.send(None, n=1)
        await eventually(lambda: pongs == [2])
        await asyncio.sleep(0.2)
    assert pongs == [2]


@pytest.mark.anyio
async def test_hostile_and_malformed_entries_are_dead_lettered(
    redis_url: str, redis: Redis, stream: str
) -> None:
    bridged, secret = AsyncSignal(name="public"), AsyncSignal(name="secret")
    got: list[Any] = []
    bridged.connect(lambda sender, **kw: got.append(kw["n"]), weak=False)
    secret.connect(lambda sender, **kw: got.append("secret reached"), weak=False)

    def envelope(**override: Any) -> bytes:
        body = {"v": 1, "id": "x", "ts": 0, "origin": "evil", "group": None,
                "signal": "public", "sender": None, "kwargs": {"n": 0}}  # fmt: skip
        return json.dumps({**body, **override}).encode()

    hostile = [
        {"other": "field"},
        {"e": b"\xff\xfe not json"},
        {"e": b"[1, 2]"},
        {"e": envelope(signal="secret")},  # a real signal here, but not bridged
        {"e": envelope(sender={"ref": "Order"})},  # unknown sender name
        {"e": envelope(sender={"import": "os.system"})},
        {"e": envelope(kwargs={"n": {"$t": "builtins.eval", "v": "1"}})},
        {"e": envelope(kwargs={"timeout": 0})},  # must not become a dispatch option
        {"e": envelope(kwargs={"sender": 1})},
        {"e": envelope(kwargs={"n": json.loads("[" * 100 + "]" * 100)})},  # too deep
        {"e": envelope(kwargs={"n": 1, "pad": "x" * 2000})},  # over max_message_bytes
    ]
    async with bridge(redis_url, stream, bridged, max_message_bytes=1000):
        for fields in hostile:
            await redis.xadd(stream, fields)  # type: ignore[arg-type]
        await redis.xadd(stream, {"e": envelope(kwargs={"n": 42})})
        await eventually(lambda: got == [42])
    dead = await redis.xrange(f"{stream}:dead")
    assert len(dead) == len(hostile)
    reasons = [fields[b"error"].decode() for _, fields in dead]
    assert "unknown signal 'secret'" in reasons[3]
    assert "unknown sender 'Order'" in reasons[4]
    assert "builtins.eval" in reasons[6]
    assert "'timeout' is not allowed" in reasons[7]
    assert "nested deeper" in reasons[9]
    assert "max_message_bytes" in reasons[10]
    assert dead[1][1][b"raw:e"].startswith(b"\xff\xfe")  # the original is kept for inspection


# -- shared (consumer group) ------------------------------------------------------------------


@pytest.mark.anyio
async def test_shared_mode_hands_each_event_to_one_worker(
    redis_url: str, redis: Redis, stream: str
) -> None:
    producer_sig = AsyncSignal(name="job")
    workers = [AsyncSignal(name="job") for _ in range(2)]
    handled: list[tuple[int, int]] = []
    for i, sig in enumerate(workers):
        sig.connect(lambda sender, n, i=i, **kw: handled.append((i, n)), weak=False)
    group = dict(mode="shared", group="billing", batch_size=10)  # small reads: both get work
    async with (
        bridge(redis_url, stream, workers[0], **group),
        bridge(redis_url, stream, workers[1], **group),
        bridge(redis_url, stream, producer_sig, mode="publish"),
    ):
        await asyncio.gather(*(producer_sig.send(None, n=n) for n in range(200)))
        await eventually(lambda: len(handled) >= 200)
        await asyncio.sleep(0.2)
    assert sorted(n for _, n in handled) == list(range(200))
    assert {i for i, _ in handled} == {0, 1}  # both workers took a share
    assert (await redis.xpending(stream, "billing"))["pending"] == 0


@pytest.mark.anyio
async def test_sending_worker_handles_its_own_event_for_its_service(
    redis_url: str, stream: str
) -> None:
    sender_sig, peer_sig, other_sig = (AsyncSignal(name="job") for _ in range(3))
    seen: list[str] = []
    sender_sig.connect(lambda sender, **kw: seen.append("sender"), weak=False)
    peer_sig.connect(lambda sender, **kw: seen.append("peer"), weak=False)
    other_sig.connect(lambda sender, **kw: seen.append("other service"), weak=False)
    async with (
        bridge(redis_url, stream, sender_sig, mode="shared", group="web"),
        bridge(redis_url, stream, peer_sig, mode="shared", group="web"),
        bridge(redis_url, stream, other_sig, mode="shared", group="mail"),
    ):
        await sender_sig.send(None)
        await eventually(lambda: "other service" in seen)
        await asyncio.sleep(0.3)
    assert sorted(seen) == ["other service", "sender"]


@pytest.mark.anyio
async def test_failed_events_are_retried_then_dead_lettered(
    redis_url: str, redis: Redis, stream: str
) -> None:
    producer, worker = AsyncSignal(name="job"), AsyncSignal(name="job")
    attempts: dict[str, int] = {"flaky": 0, "broken": 0}

    def handle(sender: Any, kind: str, **kw: Any) -> None:
        attempts[kind] += 1
        if kind == "broken" or attempts[kind] == 1:
            raise RuntimeError(f"{kind} failed")

    worker.connect(handle, weak=False)
    async with (
        bridge(redis_url, stream, worker, mode="shared", group="g", max_attempts=3),
        bridge(redis_url, stream, producer, mode="publish"),
    ):
        await producer.send(None, kind="flaky")
        await producer.send(None, kind="broken")
        await eventually(lambda: attempts["flaky"] == 2, timeout=3)
        await until(lambda: redis.exists(f"{stream}:dead"))
    assert attempts == {"flaky": 2, "broken": 3}
    dead = await redis.xrange(f"{stream}:dead")
    assert [f[b"reason"] for _, f in dead] == [b"max_attempts"]
    assert b'"broken"' in dead[0][1][b"raw:e"]
    assert (await redis.xpending(stream, "g"))["pending"] == 0


# -- lifecycle --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_bridge_publishes_only_while_running(
    redis_url: str, redis: Redis, stream: str
) -> None:
    sig = AsyncSignal(name="s")
    b = bridge(redis_url, stream, sig, mode="publish")
    await sig.send(None, n=0)
    async with b:
        with pytest.raises(RuntimeError, match="already running"):
            await b.start()
        await sig.send(None, n=1)
    await sig.send(None, n=2)
    assert not sig.receivers_for(None)
    async with b:  # a stopped bridge can be started again
        await sig.send(None, n=3)
    numbers = [json.loads(f[b"e"])["kwargs"]["n"] for _, f in await redis.xrange(stream)]
    assert numbers == [1, 3]


def test_bad_configuration_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="needs group="):
        RedisBridge(mode="shared")
    with pytest.raises(ValueError, match="mode must be"):
        RedisBridge(mode="fanout")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no name"):
        RedisBridge().attach(AsyncSignal())


# -- real processes ---------------------------------------------------------------------------


class Worker:
    """A ``tests/redis_worker.py`` subprocess and the JSON lines it prints."""

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
async def test_unconfirmed_sends_are_written_by_flush_and_stop(
    redis_url: str, redis: Redis, stream: str
) -> None:
    sig = AsyncSignal(name="s")
    async with bridge(redis_url, stream, sig, mode="publish", confirm=False) as b:
        for n in range(500):
            await sig.send(None, n=n)
        await b.flush()
        assert await redis.xlen(stream) == 500
        for n in range(500, 600):
            await sig.send(None, n=n)
    assert await redis.xlen(stream) == 600  # stop() wrote what was still queued


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
