"""The relay's pipeline: a batch is locked while the one before it is published, and deleted
while the one after it is published. What reaches the broker is read back from Redis.

Small batches split transactions across batches, so each batch meets earlier rows of its
transactions that the batch before it is still publishing or deleting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from outbox_worker import Shop, create_tables, make, order_placed
from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from asignals.contrib.sqlalchemy import install, uninstall

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLAlchemy's asyncio extension runs on asyncio only


class Setup:
    def __init__(self, shop: Shop, engine: AsyncEngine, redis: Redis, stream: str) -> None:
        self.shop, self.engine, self.redis, self.stream = shop, engine, redis, stream
        self.maker = async_sessionmaker(engine, expire_on_commit=False)

    async def place(self, index: int, events: int) -> int:
        """Commit an order and ``events`` order_placed events; its id."""
        async with self.maker() as session:
            order = self.shop.order(customer=f"c{index}", total=Decimal("9.99"))
            session.add(order)
            await session.flush()
            for n in range(events):
                await self.shop.outbox.send(session, order_placed, "shop", order_id=order.id, n=n)
            await session.commit()
        return int(order.id)

    async def envelopes(self) -> list[dict[str, Any]]:
        entries = await self.redis.xrange(self.stream)
        return [json.loads(next(iter(fields.values()))) for _id, fields in entries]

    async def rows(self) -> int:
        async with self.engine.connect() as conn:
            table = self.shop.outbox.table
            return int(await conn.scalar(select(func.count()).select_from(table)) or 0)

    async def wait_empty(self, timeout: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while await self.rows():
            assert asyncio.get_running_loop().time() < deadline, "rows left in the outbox"
            await asyncio.sleep(0.02)


def placed(envelopes: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [
        (e["kwargs"]["order_id"], e["kwargs"]["n"])
        for e in envelopes
        if e["signal"] == "order_placed"
    ]


@pytest.fixture(params=["sqlite", "postgres"])
async def setup(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> AsyncIterator[Setup]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}"
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    prefix = f"or{uuid.uuid4().hex[:8]}"
    stream = f"asignals-test:{prefix}"
    shop = make(redis_url, stream, prefix)
    engine = create_async_engine(url)
    await create_tables(engine, shop)
    redis = Redis.from_url(redis_url)
    s = Setup(shop, engine, redis, stream)
    install(s.maker, outbox=shop.outbox)
    try:
        yield s
    finally:
        uninstall(s.maker)
        await redis.delete(stream, f"{stream}:dead")
        await redis.aclose()
        async with engine.begin() as conn:
            await conn.run_sync(shop.base.metadata.drop_all)
        await engine.dispose()


async def test_a_backlog_in_many_small_batches_goes_out_once_in_commit_order(
    setup: Setup,
) -> None:
    s = setup
    orders = [await s.place(i, events=3) for i in range(40)]  # 4 rows each, with post_save
    async with s.shop.bridge, s.shop.outbox.relay(s.engine, batch_size=3) as relay:
        await s.wait_empty()
    envelopes = await s.envelopes()
    assert placed(envelopes) == [(order, n) for order in orders for n in range(3)]
    assert len({e["id"] for e in envelopes}) == len(envelopes) == 160
    assert relay.published == 160


async def test_commits_while_relaying_go_out_once_in_commit_order(setup: Setup) -> None:
    s = setup
    async with s.shop.bridge, s.shop.outbox.relay(s.engine, batch_size=2, poll_interval=0.05):
        orders = [await s.place(i, events=3) for i in range(30)]
        await s.wait_empty()
    envelopes = await s.envelopes()
    assert placed(envelopes) == [(order, n) for order in orders for n in range(3)]
    assert len({e["id"] for e in envelopes}) == len(envelopes) == 120


@pytest.mark.parametrize("setup", ["postgres"], indirect=True)  # a plpgsql trigger
async def test_a_failed_delete_publishes_the_rows_again_under_the_same_ids(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    s = setup
    table = s.shop.outbox.table.name
    async with s.engine.begin() as conn:
        # A sequence is not rolled back: only the first DELETE of the table fails.
        await conn.execute(text(f"CREATE SEQUENCE {table}_deletes"))
        await conn.execute(
            text(
                f"CREATE FUNCTION {table}_refuse() RETURNS trigger AS $$ BEGIN "
                f"IF nextval('{table}_deletes') = 1 THEN RAISE EXCEPTION 'refused'; END IF; "
                f"RETURN OLD; END $$ LANGUAGE plpgsql"
            )
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {table}_refuse BEFORE DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {table}_refuse()"
            )
        )
    try:
        order = await s.place(0, events=2)
        with caplog.at_level(logging.WARNING, "asignals.outbox"):
            relay = s.shop.outbox.relay(s.engine, poll_interval=0.05)
            async with s.shop.bridge, relay:
                await s.wait_empty()
        envelopes = await s.envelopes()
        ids = [e["id"] for e in envelopes]
        assert ids[3:] == ids[:3] and len(set(ids)) == 3  # the same three, again, in order
        assert placed(envelopes) == [(order, 0), (order, 1)] * 2
        assert relay.published == 6
        assert "they will be published again" in caplog.text
    finally:
        async with s.engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {table}_refuse ON {table}"))
            await conn.execute(text(f"DROP FUNCTION {table}_refuse()"))
            await conn.execute(text(f"DROP SEQUENCE {table}_deletes"))
