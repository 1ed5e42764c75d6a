"""The outbox's guarantees with real processes: writers and relays killed with SIGKILL, a Redis
server stopped and restarted, two relays on one table.

Children run ``tests/outbox_worker.py``; they and the Redis servers started here are stopped by
the pid they were started with. What reached the broker is read from the Redis stream.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from outbox_worker import Shop, create_tables, make, order_placed
from redis.asyncio import Redis
from servers import RedisServer
from sqlalchemy import func, text
from sqlalchemy import select as sql_select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from waiting import STEP_TIMEOUT, Child

from asignals import AsyncSignal
from asignals.bridge import Bridge, Deduplicator, RedisStreams
from asignals.contrib.sqlalchemy import install, uninstall

pytestmark = pytest.mark.anyio

WORKER = str(Path(__file__).with_name("outbox_worker.py"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def worker(*args: str) -> Child:
    return Child(sys.executable, WORKER, *args)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


@dataclass
class Setup:
    shop: Shop
    engine: AsyncEngine
    url: str
    redis_url: str
    stream: str
    prefix: str

    def args(self, role: str, *rest: str) -> tuple[str, ...]:
        return (role, self.url, self.redis_url, self.stream, self.prefix, *rest)

    async def rows(self) -> int:
        table = self.shop.outbox.table
        async with self.engine.connect() as conn:
            return int(await conn.scalar(sql_select(func.count()).select_from(table)) or 0)


async def events(redis_url: str, stream: str) -> list[dict[str, Any]]:
    redis = Redis.from_url(redis_url)
    try:
        entries = await redis.xrange(stream)
    finally:
        await redis.aclose()
    return [json.loads(next(iter(fields.values()))) for _id, fields in entries]


async def wait_events(
    redis_url: str,
    stream: str,
    count: int,
    timeout: float = STEP_TIMEOUT,
    children: Sequence[Child] = (),
) -> Any:
    """The events on ``stream`` once there are ``count``; the failure shows the relays."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await events(redis_url, stream)
        except OSError:
            found = []
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            step = f"{count} events reaching {stream!r} (only {len(found)} did)"
            raise AssertionError("\n".join([step, *map(str, children)]))
        await asyncio.sleep(0.05)


async def wait_empty(s: Setup, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while await s.rows() and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a table
        await asyncio.sleep(0.05)


async def make_setup(url: str, redis_url: str) -> Setup:
    prefix = f"op{uuid.uuid4().hex[:8]}"
    stream = f"asignals-test:{prefix}"
    shop = make(redis_url, stream, prefix)
    engine = create_async_engine(url)
    await create_tables(engine, shop)
    return Setup(shop, engine, url, redis_url, stream, prefix)


async def tear_down(s: Setup) -> None:
    async with s.engine.begin() as conn:
        await conn.run_sync(s.shop.base.metadata.drop_all)
    await s.engine.dispose()
    redis = Redis.from_url(s.redis_url)
    try:
        await redis.delete(s.stream, f"{s.stream}:dead")
    finally:
        await redis.aclose()


@pytest.fixture(params=["sqlite", "postgres"])
async def setup(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> AsyncIterator[Setup]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}"
    else:
        url = request.getfixturevalue("postgres_dsn").replace(
            "postgresql://", "postgresql+asyncpg://", 1
        )
    s = await make_setup(url, redis_url)
    try:
        yield s
    finally:
        await tear_down(s)


@pytest.fixture
async def pg_setup(postgres_dsn: str, redis_url: str) -> AsyncIterator[Setup]:
    s = await make_setup(
        postgres_dsn.replace("postgresql://", "postgresql+asyncpg://", 1), redis_url
    )
    try:
        yield s
    finally:
        await tear_down(s)


# -- an event reaches the broker iff its transaction committed --------------------------------


async def test_committed_events_survive_a_kill_and_uncommitted_ones_never_go(
    setup: Setup, children: list[Child]
) -> None:
    writer = worker(*setup.args("write", "commit:2,rollback:2,commit:1,hang:3"))
    children.append(writer)
    # Two COMMITs done, one transaction open, no relay anywhere.
    await writer.expect("the writer inside its open transaction", "hanging")
    committed = [int(line.split()[1]) for line in writer.lines if line.startswith("committed")]
    writer.kill()  # SIGKILL: after the COMMITs, before any relay ran, and mid-transaction
    assert len(committed) == 2
    assert await setup.rows() == 5  # 2 orders + 3 order_placed, all committed
    relay = worker(*setup.args("relay"))
    children.append(relay)
    await relay.expect("the relay starting", "relaying")
    found = await wait_events(setup.redis_url, setup.stream, 5, children=[relay])
    await asyncio.sleep(0.5)  # anything else would have arrived by now
    await relay.stop()
    found = await events(setup.redis_url, setup.stream)
    saved = [e["kwargs"]["instance"]["v"]["id"] for e in found if e["signal"] == "post_save"]
    placed = [e["kwargs"]["order_id"] for e in found if e["signal"] == "order_placed"]
    assert saved == committed
    assert placed == [committed[0], committed[0], committed[1]]
    assert len(found) == 5 and await setup.rows() == 0
    assert "published 5" in relay.lines


# -- a broker outage holds the rows ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(port: int, directory: Path) -> RedisServer:
    """An empty Redis on ``port`` (each start gets a directory of its own: nothing survives)."""
    directory.mkdir()
    server = RedisServer(port, directory)
    server.start()
    return server


async def _place(s: Setup, maker: Any, customer: str) -> None:
    async with maker() as session:
        order = s.shop.order(customer=customer, total=Decimal("1.00"))
        session.add(order)
        await session.flush()
        await s.shop.outbox.send(session, order_placed, "shop", order_id=order.id)
        await session.commit()


async def test_a_broker_outage_holds_rows_and_the_relay_resumes(
    postgres_dsn: str, tmp_path: Path
) -> None:
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = _start_redis(port, tmp_path / "before")
    s = await make_setup(postgres_dsn.replace("postgresql://", "postgresql+asyncpg://", 1), url)
    s.shop = make(url, s.stream, s.prefix, publish_timeout=0.5, reconnect_backoff=(0.02, 0.2))
    maker = async_sessionmaker(s.engine, expire_on_commit=False)
    install(maker, outbox=s.shop.outbox)
    try:
        async with s.shop.bridge, s.shop.outbox.relay(s.engine, backoff=(0.05, 0.3)):
            await _place(s, maker, "before")
            await wait_events(url, s.stream, 2)
            server.kill()
            for i in range(3):
                await _place(s, maker, f"during{i}")
            await asyncio.sleep(1.0)  # the relay keeps failing to publish them
            assert await s.rows() == 6  # held in the table, committed
            server = _start_redis(port, tmp_path / "after")  # empty: the first events are gone
            found = await wait_events(url, s.stream, 6)
            await wait_empty(s)
        assert await s.rows() == 0
        customers = [
            e["kwargs"]["instance"]["v"]["customer"] for e in found if e["signal"] == "post_save"
        ]
        assert customers == ["during0", "during1", "during2"]
    finally:
        uninstall(maker)
        await tear_down(s)
        server.kill()


# -- two relays on one table -------------------------------------------------------------------


async def test_two_relays_never_publish_the_same_row(
    pg_setup: Setup, children: list[Child]
) -> None:
    s = pg_setup
    relays = [worker(*s.args("relay", "25")) for _ in range(2)]
    children.extend(relays)
    for relay in relays:
        await relay.expect("a relay starting", "relaying")
    writer = worker(*s.args("write", ",".join(["commit:9"] * 40)))
    children.append(writer)
    await writer.expect("the writer committing its 40 transactions", "done")
    found = await wait_events(s.redis_url, s.stream, 400, children=[*relays, writer])
    await asyncio.sleep(0.5)
    for relay in relays:
        await relay.stop()
    await writer.stop()
    found = await events(s.redis_url, s.stream)
    ids = [e["id"] for e in found]
    assert len(ids) == 400 and len(set(ids)) == 400  # every row once: none twice, none lost
    published = [
        int(line.split()[1]) for r in relays for line in r.lines if line.startswith("published")
    ]
    assert sum(published) == 400
    by_order: dict[int, list[int]] = {}
    for e in found:
        if e["signal"] == "order_placed":
            by_order.setdefault(e["kwargs"]["order_id"], []).append(e["kwargs"]["n"])
    assert len(by_order) == 40
    assert all(ns == list(range(9)) for ns in by_order.values())  # each transaction in order


# -- at least once, under a stable id ------------------------------------------------------------


async def test_a_relay_killed_after_publishing_republishes_under_the_same_ids(
    pg_setup: Setup, children: list[Child]
) -> None:
    s = pg_setup
    table = s.shop.outbox.table.name
    async with s.engine.begin() as conn:
        # The relay's DELETE stalls after the broker confirmed: the window a crash can hit.
        await conn.execute(
            text(
                f"CREATE FUNCTION {table}_stall() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
            )
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {table}_stall BEFORE DELETE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_stall()"
            )
        )
    remote = AsyncSignal(name="order_placed")
    handled: list[dict[str, Any]] = []
    remote.connect(lambda sender, **kw: handled.append(kw), weak=False)
    consumer = Bridge(
        RedisStreams(s.redis_url),
        stream=s.stream,
        mode="broadcast",
        signals=[remote],
        dedupe=Deduplicator(),
    )
    try:
        async with consumer:
            writer = worker(*s.args("write", "commit:2"))
            children.append(writer)
            await writer.expect("the writer committing", "done")
            await writer.stop()
            first = worker(*s.args("relay"))
            children.append(first)
            await first.expect("the first relay starting", "relaying")
            await wait_events(s.redis_url, s.stream, 3, children=[first])
            first.kill()  # published and confirmed, not yet deleted
            async with s.engine.begin() as conn:  # waits for the dead relay's rollback
                await conn.execute(text(f"DROP TRIGGER {table}_stall ON {table}"))
            assert await s.rows() == 3
            second = worker(*s.args("relay"))
            children.append(second)
            await second.expect("the second relay starting", "relaying")
            found = await wait_events(s.redis_url, s.stream, 6, children=[second])
            await second.stop()
            await asyncio.sleep(0.5)
        assert [e["id"] for e in found[3:]] == [e["id"] for e in found[:3]]  # same ids again
        assert await s.rows() == 0
        assert sorted(h["n"] for h in handled) == [0, 1]  # the consumer dropped the repeats
    finally:
        async with s.engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_stall ON {table}"))
            await conn.execute(text(f"DROP FUNCTION IF EXISTS {table}_stall()"))
