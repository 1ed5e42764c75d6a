"""Child processes for the outbox guarantees: a writer of orders, and a relay, each until killed.

Usage::

    python tests/outbox_worker.py write DB_URL REDIS_URL STREAM PREFIX SCRIPT
    python tests/outbox_worker.py relay DB_URL REDIS_URL STREAM PREFIX [BATCH]

``SCRIPT`` is a comma-separated list of transactions to run, each ``commit:N`` (an order and
``N`` ``order_placed`` events, committed), ``rollback:N`` (the same, rolled back) or
``hang:N`` (flushed and left open: the process waits to be killed). The writer prints
``committed <order id>`` after each COMMIT, then ``done`` and waits for stdin to close; it runs
no relay, so killing it after a COMMIT leaves the events in the table. The relay prints
``relaying`` and publishes until stdin closes (then prints ``published <n>``) or it is killed.
The test module imports :func:`make` for the same models.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Numeric, String
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asignals import AsyncSignal
from asignals.bridge import Bridge, RedisStreams
from asignals.contrib.sqlalchemy import Outbox, install
from asignals.signals import post_bulk, post_delete, post_save

order_placed = AsyncSignal(name="order_placed")


@dataclass
class Shop:
    """The models, bridge and outbox of one test, the same in every process."""

    base: Any
    order: Any
    bridge: Bridge
    outbox: Outbox


def make(redis_url: str, stream: str, prefix: str, **bridge_options: Any) -> Shop:
    class Base(DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = f"{prefix}_order"
        id: Mapped[int] = mapped_column(primary_key=True)
        customer: Mapped[str] = mapped_column(String(50))
        total: Mapped[Decimal] = mapped_column(Numeric(10, 2))

    options: dict[str, Any] = {"mode": "publish", "publish_timeout": 2.0}
    options.update(bridge_options)
    bridge = Bridge(
        RedisStreams(redis_url),
        stream=stream,
        signals=[post_save, post_delete, post_bulk, order_placed],
        senders={"Order": Order},
        **options,
    )
    outbox = Outbox(bridge, metadata=Base.metadata, table=f"{prefix}_outbox")
    return Shop(Base, Order, bridge, outbox)


async def create_tables(engine: AsyncEngine, shop: Shop) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(shop.base.metadata.create_all)


async def write(shop: Shop, engine: AsyncEngine, script: str) -> None:
    maker = async_sessionmaker(engine, expire_on_commit=False)
    install(maker, outbox=shop.outbox)
    for step in script.split(","):
        action, count = step.split(":")
        async with maker() as session:
            order = shop.order(customer=action, total=Decimal("9.99"))
            session.add(order)
            await session.flush()
            for n in range(int(count)):
                await shop.outbox.send(session, order_placed, "shop", order_id=order.id, n=n)
            if action == "commit":
                await session.commit()
                print(f"committed {order.id}", flush=True)
            elif action == "rollback":
                await session.rollback()
            else:
                print(f"hanging {order.id}", flush=True)
                await asyncio.Event().wait()
    print("done", flush=True)
    await asyncio.to_thread(sys.stdin.readline)


async def relay(shop: Shop, engine: AsyncEngine, batch_size: int) -> None:
    async with shop.bridge, shop.outbox.relay(engine, batch_size=batch_size) as running:
        print("relaying", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    print(f"published {running.published}", flush=True)


async def main(argv: list[str]) -> None:
    role, db_url, redis_url, stream, prefix, *rest = argv
    shop = make(redis_url, stream, prefix)
    engine = create_async_engine(db_url)
    try:
        if role == "write":
            await write(shop, engine, rest[0])
        else:
            await relay(shop, engine, int(rest[0]) if rest else 500)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
