"""The outbox as an application wires it: on every bridge transport, in a FastAPI lifespan, and
on PostgreSQL when the relay's NOTIFY never comes.

Each test reads the events back through a consumer bridge of its own, as another process would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Numeric, String, func, select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asignals import AsyncSignal
from asignals.bridge import Bridge
from asignals.contrib.asgi import SignalsMiddleware, make_lifespan
from asignals.contrib.sqlalchemy import Outbox, install, register_model, uninstall
from asignals.signals import post_save

pytestmark = pytest.mark.anyio

order_placed = AsyncSignal(name="order_placed")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLAlchemy's asyncio extension runs on asyncio only


@dataclass
class Shop:
    """One test's models, its producing bridge and outbox, and what a consumer received."""

    order: Any
    base: Any
    bridge: Bridge
    outbox: Outbox
    consumer: Bridge
    received: list[tuple[str, dict[str, Any]]]

    async def place(self, maker: async_sessionmaker[AsyncSession], commit: bool = True) -> Any:
        async with maker() as session:
            order = self.order(customer="ann", total=Decimal("9.99"))
            session.add(order)
            await session.flush()
            await self.outbox.send(session, order_placed, "shop", order_id=order.id)
            if commit:
                await session.commit()
            else:
                await session.rollback()
        return order

    async def wait_received(self, count: int, timeout: float = 15.0) -> None:
        await wait_until(lambda: len(self.received) >= count, timeout, f"{count} event(s)")


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def make_shop(transport: Any, **outbox_options: Any) -> Shop:
    prefix = f"obi{uuid.uuid4().hex[:8]}"
    stream = f"asignals-test:{prefix}"

    class Base(DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = f"{prefix}_order"
        id: Mapped[int] = mapped_column(primary_key=True)
        customer: Mapped[str] = mapped_column(String(50))
        total: Mapped[Decimal] = mapped_column(Numeric(10, 2))

    bridge = Bridge(
        transport.make(),
        stream=stream,
        mode="publish",
        signals=[post_save, order_placed],
        senders={"Order": Order},
        publish_timeout=5.0,
    )
    outbox = Outbox(bridge, metadata=Base.metadata, table=f"{prefix}_outbox", **outbox_options)
    # The consumer's own signals of those names, as in another process.
    remote = [AsyncSignal(name="post_save"), AsyncSignal(name="order_placed")]
    received: list[tuple[str, dict[str, Any]]] = []
    for sig in remote:

        def on(sender: Any, signal: AsyncSignal, **kwargs: Any) -> None:
            received.append((signal.name or "", kwargs))

        sig.connect(on, weak=False)
    consumer = Bridge(
        transport.make(),
        stream=stream,
        mode="broadcast",
        signals=remote,
        senders={"Order": Order},
    )
    register_model(consumer.codec, Order)
    return Shop(Order, Base, bridge, outbox, consumer, received)


@asynccontextmanager
async def database(url: str, shop: Shop) -> AsyncIterator[tuple[AsyncEngine, Any]]:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(shop.base.metadata.create_all)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    install(maker, outbox=shop.outbox)
    try:
        yield engine, maker
    finally:
        uninstall(maker)
        async with engine.begin() as conn:
            await conn.run_sync(shop.base.metadata.drop_all)
        await engine.dispose()


async def outbox_rows(engine: AsyncEngine, shop: Shop) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(shop.outbox.table))
    return int(count or 0)


async def settled(engine: AsyncEngine, shop: Shop) -> None:
    """Wait until the relay emptied the table, then a little for anything that should not come."""
    for _ in range(500):
        if await outbox_rows(engine, shop) == 0:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)


def postgres_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


async def test_committed_events_reach_a_consumer_on_every_transport(
    transport: Any, tmp_path: Path
) -> None:
    shop = make_shop(transport)
    async with database(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}", shop) as (engine, maker):
        async with shop.consumer, shop.bridge, shop.outbox.relay(engine, poll_interval=0.05):
            order = await shop.place(maker)
            await shop.place(maker, commit=False)  # rolled back: never reaches the consumer
            await shop.wait_received(2)
            await settled(engine, shop)
        assert await outbox_rows(engine, shop) == 0
    assert [name for name, _ in shop.received] == ["post_save", "order_placed"]
    saved, placed = (kwargs for _, kwargs in shop.received)
    assert (saved["instance"].id, saved["created"]) == (order.id, True)
    assert placed == {"order_id": order.id}


async def test_the_relay_runs_in_a_fastapi_lifespan(transport: Any, tmp_path: Path) -> None:
    shop = make_shop(transport)
    async with database(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}", shop) as (engine, maker):

        @asynccontextmanager
        async def resources(app: FastAPI) -> AsyncIterator[None]:
            async with shop.bridge, shop.outbox.relay(engine, poll_interval=0.05):
                yield

        app = FastAPI(lifespan=make_lifespan(resources))
        app.add_middleware(SignalsMiddleware)

        @app.post("/orders")
        async def place_order() -> dict[str, int]:
            order = await shop.place(maker)
            return {"id": order.id}

        async with (
            shop.consumer,
            app.router.lifespan_context(app),  # what uvicorn does at startup and shutdown
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://shop"
            ) as client,
        ):
            response = await client.post("/orders")
            assert response.status_code == 200
            await shop.wait_received(2)
    assert [name for name, _ in shop.received] == ["post_save", "order_placed"]
    assert shop.received[1][1] == {"order_id": response.json()["id"]}


async def listeners(engine: AsyncEngine, channel: str) -> list[int]:
    """The backends LISTENing on ``channel`` (PostgreSQL)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE query = :listen"),
            {"listen": f'LISTEN "{channel}"'},
        )
        return [row.pid for row in rows]


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_a_postgres_relay_polls_when_no_notify_comes(
    transport: Any, postgres_dsn: str
) -> None:
    # The writers send no NOTIFY (as when a notification is lost): polling must find the rows.
    shop = make_shop(transport, notify=False)
    async with database(postgres_url(postgres_dsn), shop) as (engine, maker):
        relay = shop.outbox.relay(engine, poll_interval=0.2)
        assert relay.listening
        async with shop.consumer, shop.bridge, relay:
            await shop.place(maker)
            await shop.wait_received(2)


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_a_postgres_relay_whose_listen_connection_dies_carries_on(
    transport: Any, postgres_dsn: str
) -> None:
    shop = make_shop(transport)
    async with (
        database(postgres_url(postgres_dsn), shop) as (engine, maker),
        shop.consumer,
        shop.bridge,
        shop.outbox.relay(engine, poll_interval=0.2),
    ):
        await shop.place(maker)
        await shop.wait_received(2)
        channel = shop.outbox.channel
        await wait_for_listener(engine, channel)
        async with engine.connect() as conn:
            for pid in await listeners(engine, channel):
                await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        # The application's sessions (the same pool) and the relay both carry on.
        await shop.place(maker)
        await shop.wait_received(4)
        # ... and it listens again, so later commits wake it at once.
        await wait_for_listener(engine, channel)
    assert [name for name, _ in shop.received] == ["post_save", "order_placed"] * 2


async def wait_for_listener(engine: AsyncEngine, channel: str) -> None:
    found: list[int] = []

    async def check() -> bool:
        found[:] = await listeners(engine, channel)
        return bool(found)

    await wait_until_async(check, 15, f"a backend listening on {channel!r}")


async def wait_until_async(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
