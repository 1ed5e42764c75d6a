"""Shared fixtures: the three event-loop backends and the real servers the tests talk to."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from servers import NatsServer, PrivateServer, RedisServer

BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"loop_factory": None}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


def _uvloop_factory() -> Any:
    import uvloop

    return uvloop.new_event_loop


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Core tests run on asyncio, asyncio with uvloop, and trio."""
    name, options = request.param
    if "loop_factory" in options:
        options = {"loop_factory": _uvloop_factory()}
    return name, options


@pytest.fixture
def asyncio_only() -> str:
    """Use as ``anyio_backend`` override in modules that need asyncio (ORMs, uvicorn)."""
    return "asyncio"


POSTGRES_DSN = os.environ.get("ASIGNALS_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ASIGNALS_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _require(name: str, url: str, default_port: int) -> None:
    if _reachable(url, default_port):
        return
    message = f"{name} is not reachable at {url}"
    # Skipping is only allowed when a developer says so; CI and everyone else get a failure.
    if os.environ.get("ASIGNALS_SERVICES_OPTIONAL") == "1" and not os.environ.get("CI"):
        pytest.skip(message + " (ASIGNALS_SERVICES_OPTIONAL=1)")
    pytest.fail(message + "; start it with scripts/services", pytrace=False)


@pytest.fixture
def postgres_dsn() -> str:
    """A libpq-style DSN of the real PostgreSQL; fails the test when it is down."""
    _require("PostgreSQL", POSTGRES_DSN, 5432)
    return POSTGRES_DSN


@pytest.fixture
def redis_url() -> str:
    """The URL of the real Redis; fails the test when it is down."""
    _require("Redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture
def connect() -> Iterator[Any]:
    """connect(signal, fn, sender=None): a strong connection for the test's lifetime only."""
    made: list[tuple[Any, Any, Any]] = []

    def _connect(sig: Any, fn: Any, sender: Any = None) -> None:
        sig.connect(fn, sender=sender, weak=False)
        made.append((sig, fn, sender))

    yield _connect
    for sig, fn, sender in made:
        sig.disconnect(fn, sender=sender)


@pytest.fixture
def free_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


# -- bridge transports ------------------------------------------------------------------------


class BridgeKit:
    """One transport under test: fresh instances, raw writes and its dead letters.

    The shared bridge tests take the ``transport`` fixture and run once per entry of
    ``BRIDGE_TRANSPORTS``; a transport adds a subclass and an entry there.
    """

    name = ""

    def make(self) -> Any:
        """A new, unopened transport (one per Bridge)."""
        raise NotImplementedError

    async def inject(self, stream: str, data: bytes) -> None:
        """Publish raw bytes on ``stream`` as a foreign writer would."""
        transport = self.make()
        await transport.open(stream)
        try:
            await transport.publish([data])
        finally:
            await transport.close()

    async def dead_letters(self, bridge: Any) -> list[Any]:
        """The dead letters of ``bridge``'s stream, oldest first (``DeadLetter`` objects)."""
        return list(bridge.dead_letters)

    async def cleanup(self) -> None:
        """Remove what the test left on the server."""

    # Server transports only (the real-process tests of test_bridge_processes.py):

    #: The server's URL, for worker processes (``tests/bridge_worker.py NAME URL ...``).
    url = ""

    async def pending(self, stream: str, group: str) -> int:
        """Messages delivered to ``group`` and not acknowledged yet."""
        raise NotImplementedError

    def server(self, port: int, directory: Path) -> PrivateServer:
        """A private server of this kind (not started) for restart tests."""
        raise NotImplementedError


class RedisKit(BridgeKit):
    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self.streams: set[str] = set()

    def make(self) -> Any:
        from asignals.bridge import RedisStreams

        return _TrackingRedis(self, RedisStreams(self.url))

    async def dead_letters(self, bridge: Any) -> list[Any]:
        from redis.asyncio import Redis

        from asignals.bridge import DeadLetter

        client = Redis.from_url(self.url)
        try:
            entries = await client.xrange(f"{bridge.stream}:dead")
        finally:
            await client.aclose()
        letters = []
        for _id, fields in entries:
            message = fields.pop(b"e", b"")
            provenance = {k.decode(): v.decode() for k, v in fields.items()}
            letters.append(DeadLetter(message, provenance))
        return letters

    async def cleanup(self) -> None:
        from redis.asyncio import Redis

        if not self.streams:
            return
        client = Redis.from_url(self.url)
        try:
            await client.delete(*self.streams, *(f"{s}:dead" for s in self.streams))
        finally:
            await client.aclose()

    async def pending(self, stream: str, group: str) -> int:
        from redis.asyncio import Redis

        client = Redis.from_url(self.url)
        try:
            return int((await client.xpending(stream, group))["pending"])
        finally:
            await client.aclose()

    def server(self, port: int, directory: Path) -> PrivateServer:
        return RedisServer(port, directory)


class _TrackingRedis:
    """A RedisStreams that records the streams it opened, for cleanup."""

    def __init__(self, kit: RedisKit, inner: Any) -> None:
        self._kit = kit
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return repr(self._inner)

    async def open(self, stream: str) -> None:
        self._kit.streams.add(stream)
        await self._inner.open(stream)


def _redis_kit() -> BridgeKit:
    _require("Redis", REDIS_URL, 6379)
    return RedisKit(REDIS_URL)


# -- JetStream and InMemory transports --------------------------------------------------------

NATS_URL = os.environ.get("ASIGNALS_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
def nats_url() -> str:
    """The URL of the real NATS server (JetStream enabled); fails the test when it is down."""
    _require("NATS", NATS_URL, 4222)
    return NATS_URL


class JetStreamKit(BridgeKit):
    name = "jetstream"

    def __init__(self, url: str) -> None:
        self.url = url
        self.streams: set[str] = set()

    def make(self) -> Any:
        from asignals.bridge import JetStream

        return _TrackingJetStream(self, JetStream(self.url, block=0.2))

    async def _client(self) -> Any:
        import nats

        return await nats.connect(self.url, connect_timeout=2, max_reconnect_attempts=0)

    async def inject(self, stream: str, data: bytes) -> None:
        # A foreign writer: nats-py's own publish, into the stream the bridge uses.
        transport = self.make()
        await transport.open(stream)  # creates the stream
        await transport.close()
        client = await self._client()
        try:
            await client.jetstream().publish(stream, data)
        finally:
            await client.close()

    async def dead_letters(self, bridge: Any) -> list[Any]:
        import nats.js.errors

        from asignals.bridge import DeadLetter

        client = await self._client()
        js = client.jetstream()
        name = f"{bridge.stream}:dead"
        letters = []
        try:
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                return []
            if not info.state.messages:
                return []  # (an empty stream reports first_seq 0, which get_msg refuses)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(name, seq)
                letters.append(DeadLetter(msg.data or b"", dict(msg.headers or {})))
        finally:
            await client.close()
        return letters

    async def pending(self, stream: str, group: str) -> int:
        client = await self._client()
        try:
            info = await client.jetstream().consumer_info(stream, group)
        finally:
            await client.close()
        return int(info.num_ack_pending)

    def server(self, port: int, directory: Path) -> PrivateServer:
        return NatsServer(port, directory)

    async def cleanup(self) -> None:
        import nats.js.errors

        if not self.streams:
            return
        client = await self._client()
        js = client.jetstream()
        try:
            for stream in self.streams:
                for name in (stream, f"{stream}:dead"):
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await js.delete_stream(name)
        finally:
            await client.close()


class _TrackingJetStream(_TrackingRedis):
    """A JetStream transport that records the streams it opened, for cleanup."""


class InMemoryKit(BridgeKit):
    name = "memory"

    def make(self) -> Any:
        from asignals.bridge import InMemory

        return InMemory(block=0.2)

    async def cleanup(self) -> None:
        from asignals.bridge import InMemory

        InMemory.reset()


def _jetstream_kit() -> BridgeKit:
    _require("NATS", NATS_URL, 4222)
    return JetStreamKit(NATS_URL)


#: name -> factory of a BridgeKit (the factory checks its server is up).
BRIDGE_TRANSPORTS: dict[str, Any] = {
    "redis": _redis_kit,
    "jetstream": _jetstream_kit,
    "memory": InMemoryKit,
}


@pytest.fixture(params=list(BRIDGE_TRANSPORTS))
async def transport(request: pytest.FixtureRequest) -> Any:
    """Each bridge transport in turn, as a :class:`BridgeKit`."""
    kit = BRIDGE_TRANSPORTS[request.param]()
    yield kit
    await kit.cleanup()
