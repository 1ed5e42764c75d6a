"""A bridge started while its broker is down, on every server transport (issue 12: "an
application can boot while the broker is restarting", the same on Redis and NATS): ``start``
returns within ``publish_timeout`` with one warning, a send fails with ``PublishError``
meanwhile, and once the server is up the publisher and the reader connect by themselves."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BridgeKit, JetStreamKit, RedisKit
from servers import PrivateServer
from waiting import eventually, until

from asignals import AsyncSignal
from asignals.bridge import Bridge, PublishError

pytestmark = pytest.mark.anyio

LIMIT = 0.5  # publish_timeout
MARGIN = 1.0  # scheduling on a loaded machine
KITS: dict[str, type[BridgeKit]] = {"redis": RedisKit, "jetstream": JetStreamKit}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the broker clients are asyncio-only


@pytest.fixture(params=list(KITS))
def down(
    request: pytest.FixtureRequest, free_port: int, tmp_path: Path
) -> Iterator[tuple[BridgeKit, PrivateServer]]:
    """A kit for a server of its kind on a free port, not started yet; killed by pid."""
    kind = KITS[request.param]
    server = kind("").server(free_port, tmp_path)
    try:
        yield kind(server.url), server
    finally:
        server.kill()


def bridge(kit: BridgeKit, stream: str, signal: Any, **options: Any) -> Bridge:
    return Bridge(
        kit.make(),
        stream=stream,
        signals=[signal],
        publish_timeout=LIMIT,
        reconnect_backoff=(0.02, 0.2),
        **options,
    )


@pytest.mark.parametrize("mode", ["shared", "broadcast"])
async def test_a_bridge_started_while_its_broker_is_down_connects_once_it_is_up(
    down: tuple[BridgeKit, PrivateServer], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    kit, server = down
    stream = f"asignals-test-{uuid.uuid4().hex}"
    producer, consumer = AsyncSignal(name="job"), AsyncSignal(name="job")
    got: list[int] = []
    consumer.connect(lambda sender, n, **kw: got.append(n), weak=False)
    options: dict[str, Any] = {"mode": mode, "group": "svc"} if mode == "shared" else {}
    reader = bridge(kit, stream, consumer, **options)
    writer = bridge(kit, stream, producer, mode="publish")
    took: list[float] = []
    with caplog.at_level(logging.WARNING, logger="asignals.bridge"):
        for each in (reader, writer):
            started = time.monotonic()
            await each.start()  # returns: nothing listens on the port yet
            took.append(time.monotonic() - started)
    try:
        assert all(t < LIMIT + MARGIN for t in took), took
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("asignals") and r.levelno >= logging.WARNING
        ]
        assert len(warnings) == 2, warnings  # one per bridge
        assert all("unreachable" in w and "keeps retrying" in w for w in warnings), warnings
        with pytest.raises(ExceptionGroup) as caught:
            await producer.send(None, n=-1)
        assert caught.group_contains(PublishError, match=f"within {LIMIT}s")

        server.start()
        numbers = itertools.count()

        async def one_arrived() -> bool:
            # Events sent before the reader is back are not its (broadcast: from then on;
            # shared: a group made at the tail), so send until one arrives.
            await producer.send(None, n=next(numbers))
            return bool(got)

        await until(one_arrived, timeout=20)
        after = [next(numbers) for _ in range(5)]
        for n in after:
            await producer.send(None, n=n)
        await eventually(lambda: set(after) <= set(got), timeout=10)
    finally:
        await writer.stop()
        await reader.stop()
    assert -1 not in got  # the send that failed is never delivered later
