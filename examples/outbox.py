"""A durable model event: an order is written, its process is killed, the event still arrives.

Needs a Redis server (127.0.0.1:6379, or set ASIGNALS_REDIS_URL); the database is a SQLite file
in a temporary directory. So it is not part of ``scripts/demo``, which runs without servers:

    python examples/outbox.py

1. A *shop* process stores an order and an ``order_placed`` event in one transaction, prints
   ``committed``, and is killed (SIGKILL) before anything was published: no relay ran.
2. The events are rows of the outbox table, committed with the order.
3. A *mailer* process (a second bridge, consumer group ``mailers``) starts; this process runs
   the relay, which publishes the rows and deletes them once Redis confirmed.
4. The mailer handles ``order_placed`` and ``post_save`` (a detached ``Order``) and prints them.

Exits 0 when the mailer handled both events, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path
from subprocess import PIPE
from typing import Any

from sqlalchemy import Numeric, String, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asignals import AsyncSignal, receiver
from asignals.bridge import Bridge, Deduplicator, RedisStreams
from asignals.contrib.sqlalchemy import Outbox, install, register_model
from asignals.signals import post_save

REDIS_URL = os.environ.get("ASIGNALS_REDIS_URL", "redis://127.0.0.1:6379/0")

order_placed = AsyncSignal(name="order_placed")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(50))
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))


def make_bridge(stream: str, mode: Any, group: str | None = None) -> Bridge:
    """The same signals and sender names in every process."""
    return Bridge(
        RedisStreams(REDIS_URL),
        stream=stream,
        mode=mode,
        group=group,
        signals=[post_save, order_placed],
        senders={"Order": Order},
        dedupe=Deduplicator(),  # delivery is at least once: drop a repeat by its envelope id
    )


async def shop(db: str, stream: str) -> None:
    """Store an order and its event in one transaction, then wait to be killed."""
    engine = create_async_engine(db)
    outbox = Outbox(make_bridge(stream, "publish"), metadata=Base.metadata)
    Session = async_sessionmaker(engine, expire_on_commit=False)
    install(Session, outbox=outbox)  # post_save of the carried signals goes through the table
    async with Session() as session, session.begin():
        order = Order(customer="ada", total=Decimal("9.99"))
        session.add(order)
        await session.flush()  # post_save: written to the outbox in this transaction
        await outbox.send(session, order_placed, "shop", order_id=order.id, total=order.total)
    print(f"shop: committed order {order.id}", flush=True)
    await asyncio.Event().wait()  # the relay never runs here: the parent kills this process


async def mailer(stream: str) -> None:
    """Handle the shop's events from another process."""
    bridge = make_bridge(stream, "shared", group="mailers")
    register_model(bridge.codec, Order)  # post_save's instance arrives as a detached Order

    @receiver(order_placed, weak=False)
    def send_receipt(sender: Any, order_id: int, total: Decimal, **kwargs: Any) -> None:
        print(f"mailer: receipt for order {order_id}, total {total}", flush=True)

    @receiver(post_save, sender=Order, weak=False)
    def index(sender: Any, instance: Order, created: bool, **kwargs: Any) -> None:
        print(f"mailer: indexed {instance.customer}'s order {instance.id} ({created=})", flush=True)

    async with bridge:
        print("mailer: ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdin=PIPE, stdout=PIPE
    )


async def line_of(proc: asyncio.subprocess.Process, timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode().strip()
    print(line)
    return line


async def rows(engine: AsyncEngine, outbox: Outbox) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(outbox.table)) or 0)


async def main() -> int:
    run = uuid.uuid4().hex[:8]
    stream = f"example:{run}:orders"
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite+aiosqlite:///{Path(tmp) / 'shop.db'}"
        engine = create_async_engine(db)
        outbox = Outbox(make_bridge(stream, "publish"), metadata=Base.metadata)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)  # the orders and the outbox table

        shop_proc = await spawn("--shop", db, stream)
        await line_of(shop_proc)
        os.kill(shop_proc.pid, signal.SIGKILL)  # after COMMIT, before any publish
        await shop_proc.wait()
        print(f"parent: shop killed; {await rows(engine, outbox)} event(s) wait in the outbox")

        mailer_proc = await spawn("--mailer", stream)
        await line_of(mailer_proc)  # "ready": its consumer group exists
        handled = []
        async with outbox.bridge, outbox.relay(engine, poll_interval=0.1):
            for _ in range(2):
                handled.append(await line_of(mailer_proc))
        print(f"parent: relay done; {await rows(engine, outbox)} event(s) left in the outbox")
        assert mailer_proc.stdin is not None
        mailer_proc.stdin.close()
        await mailer_proc.wait()
        await engine.dispose()
    ok = any("receipt" in h for h in handled) and any("indexed" in h for h in handled)
    print("ok" if ok else "FAILED: the mailer did not handle both events")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--shop"]:
        asyncio.run(shop(sys.argv[2], sys.argv[3]))
    elif sys.argv[1:2] == ["--mailer"]:
        asyncio.run(mailer(sys.argv[2]))
    else:
        sys.exit(asyncio.run(main()))
