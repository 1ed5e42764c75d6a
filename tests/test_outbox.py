"""The transactional outbox in one process: real SQLite/PostgreSQL tables, the real Redis bridge.

What reaches the broker is read back from the Redis stream itself, so every assertion is about
what another process would get. The guarantees that need killed processes are in
``test_outbox_processes.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from outbox_worker import Shop, create_tables, make, order_placed
from redis.asyncio import Redis
from sqlalchemy import Column, ForeignKey, String, Table, func, inspect, select, update
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from asignals import AsyncSignal
from asignals.bridge import Bridge, DecodeError, EncodeError, JsonCodec, RedisStreams
from asignals.contrib.sqlalchemy import Outbox, install, register_model, uninstall
from asignals.signals import m2m_changed, post_save
from asignals.testing import SignalRecorder

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLAlchemy's asyncio extension runs on asyncio only


@dataclass
class World:
    shop: Shop
    engine: AsyncEngine
    maker: async_sessionmaker[AsyncSession]
    redis: Redis
    redis_url: str
    stream: str
    dialect: str

    async def events(self) -> list[dict[str, Any]]:
        """The envelopes in the stream, oldest first (what a consumer would read)."""
        return [json.loads(data) for data in await stream_data(self.redis, self.stream)]

    async def wait_events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        await wait_until(lambda: self._has(count), timeout, f"{count} event(s) in the stream")
        return await self.events()

    async def _has(self, count: int) -> bool:
        return len(await stream_data(self.redis, self.stream)) >= count

    async def rows(self) -> int:
        table = self.shop.outbox.table
        async with self.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(table)) or 0)

    def relay(self, **options: Any) -> Any:
        options.setdefault("poll_interval", 0.05)
        return self.shop.outbox.relay(self.engine, **options)


async def stream_data(redis: Redis, stream: str) -> list[bytes]:
    entries = await redis.xrange(stream)
    return [next(iter(fields.values())) for _id, fields in entries]


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str = "the condition"
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}"
    dsn = request.getfixturevalue("postgres_dsn")
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture(params=["sqlite", "postgres"])
async def world(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> AsyncIterator[World]:
    url = database_url(request, tmp_path)
    prefix = f"ob{uuid.uuid4().hex[:8]}"
    stream = f"asignals-test:{prefix}"
    shop = make(redis_url, stream, prefix)
    engine = create_async_engine(url)
    await create_tables(engine, shop)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    install(maker, outbox=shop.outbox)
    redis = Redis.from_url(redis_url)
    try:
        yield World(shop, engine, maker, redis, redis_url, stream, request.param)
    finally:
        uninstall(maker)
        await redis.delete(stream, f"{stream}:dead")
        await redis.aclose()
        async with engine.begin() as conn:
            await conn.run_sync(shop.base.metadata.drop_all)
        await engine.dispose()


async def place(w: World, customer: str = "ann", events: int = 1, commit: bool = True) -> Any:
    async with w.maker() as session:
        order = w.shop.order(customer=customer, total=Decimal("9.99"))
        session.add(order)
        await session.flush()
        for n in range(events):
            await w.shop.outbox.send(session, order_placed, "shop", order_id=order.id, n=n)
        if commit:
            await session.commit()
        else:
            await session.rollback()
    return order


# -- what reaches the broker -------------------------------------------------------------------


async def test_events_reach_the_broker_only_once_committed(world: World) -> None:
    w = world
    async with w.shop.bridge, w.relay():
        async with w.maker() as session:
            order = w.shop.order(customer="ann", total=Decimal("9.99"))
            session.add(order)
            await session.flush()
            await w.shop.outbox.send(session, order_placed, "shop", order_id=order.id)
            assert await w.rows() == 0  # not committed: invisible to the relay's connection
            await asyncio.sleep(0.3)
            assert await w.events() == []
            await session.commit()
        events = await w.wait_events(2)
        await place(w, "bob", commit=False)  # rolled back: never published
        await place(w, "cy")
        events = await w.wait_events(4)
        await wait_until(lambda: _empty(w), 5, "an empty outbox table")
    assert [(e["signal"], e["kwargs"].get("created")) for e in events] == [
        ("post_save", True),
        ("order_placed", None),
        ("post_save", True),
        ("order_placed", None),
    ]
    assert events[1]["kwargs"] == {"order_id": order.id}
    assert "bob" not in json.dumps(events)
    assert len({e["id"] for e in events}) == 4


async def _empty(w: World) -> bool:
    return await w.rows() == 0


async def test_local_receivers_run_as_without_the_outbox(
    world: World, connect: Any, signal_recorder: SignalRecorder
) -> None:
    w = world
    seen: list[tuple[Any, Any]] = []
    domain: list[dict[str, Any]] = []

    async def on_saved(sender: Any, instance: Any, using: Any, **kwargs: Any) -> None:
        seen.append((instance, using))

    def on_placed(sender: Any, signal: Any, **kwargs: Any) -> None:
        domain.append(kwargs)

    connect(post_save, on_saved, w.shop.order)
    connect(order_placed, on_placed)
    async with w.shop.bridge, w.relay():
        # After the bridge started: its send hook replaces what was on the signal before.
        signal_recorder.watch(post_save, order_placed)
        order = await place(w)
        events = await w.wait_events(2)
        await asyncio.sleep(0.2)
    assert [(i, type(u)) for i, u in seen] == [(order, AsyncSession)]  # the live instance
    assert domain == [{"order_id": order.id, "n": 0}]
    assert len(await w.events()) == len(events) == 2  # one copy each: the relay's, no direct one
    signal_recorder.assert_sent(post_save, sender=w.shop.order, instance=order, times=1)
    signal_recorder.assert_sent(order_placed, sender="shop", order_id=order.id, times=1)


async def test_deferred_local_receivers_and_the_outbox_row(world: World, connect: Any) -> None:
    w = world
    install(w.maker, defer_post_until_commit=True, outbox=w.shop.outbox)
    seen: list[int] = []

    async def on_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
        seen.append(await w.rows())

    connect(post_save, on_saved, w.shop.order)
    async with w.maker() as session:
        session.add(w.shop.order(customer="dee", total=Decimal(1)))
        await session.flush()
        assert seen == []
        await session.commit()
    assert seen == [1]  # after COMMIT, with the row already stored
    async with w.shop.bridge, w.relay():
        events = await w.wait_events(1)
    assert events[0]["signal"] == "post_save"


async def test_remote_receiver_gets_a_detached_instance(world: World) -> None:
    w = world
    remote = AsyncSignal(name="post_save")  # the consumer's own signal of that name
    got: list[dict[str, Any]] = []

    def on_remote(sender: Any, **kwargs: Any) -> None:
        got.append({"sender": sender, **kwargs})

    remote.connect(on_remote, weak=False)
    consumer = Bridge(
        RedisStreams(w.redis_url),
        stream=w.stream,
        mode="broadcast",
        signals=[remote],
        senders={"Order": w.shop.order},
    )
    register_model(consumer.codec, w.shop.order)
    async with consumer, w.shop.bridge, w.relay():
        order = await place(w, "eve", events=0)
        await wait_until(lambda: _true(bool(got)), 10, "the remote post_save")
    (event,) = got
    assert event["sender"] is w.shop.order
    instance = event["instance"]
    assert type(instance) is w.shop.order and instance is not order
    assert (instance.id, instance.customer, instance.total) == (order.id, "eve", Decimal("9.99"))
    assert inspect(instance).detached  # a stored row outside any session
    assert event["created"] is True and event["using"] is None
    async with w.maker() as session:
        merged = await session.merge(instance)
        merged.customer = "eve2"
        await session.commit()
    async with w.maker() as session:
        assert await session.scalar(select(w.shop.order.customer)) == "eve2"


async def _true(value: bool) -> bool:
    return value


async def test_delete_and_bulk_update_go_through_the_outbox(world: World) -> None:
    w = world
    Order = w.shop.order
    async with w.shop.bridge, w.relay():
        order = await place(w, "fay", events=0)
        async with w.maker() as session:
            await session.execute(update(Order).where(Order.id == order.id).values(total=5))
            stored = await session.get(Order, order.id)
            await session.delete(stored)
            await session.commit()
        events = await w.wait_events(3)
    assert [e["signal"] for e in events] == ["post_save", "post_bulk", "post_delete"]
    assert events[1]["kwargs"]["kind"] == "update"
    deleted = events[2]["kwargs"]
    assert set(deleted) == {"instance", "using", "origin"} and deleted["using"] is None
    assert deleted["origin"] == deleted["instance"]  # the instance whose deletion started it
    assert events[1]["kwargs"]["statement"] is None  # the writer's SQL expression stays there


async def test_rows_go_out_in_commit_order_per_transaction(world: World) -> None:
    w = world
    orders = [await place(w, f"c{i}", events=4) for i in range(3)]  # no relay yet
    assert await w.rows() == 15
    async with w.shop.bridge, w.relay(batch_size=4):  # transactions split across passes
        events = await w.wait_events(15)
    placed = [(e["kwargs"]["order_id"], e["kwargs"]["n"]) for e in events if "n" in e["kwargs"]]
    assert placed == [(o.id, n) for o in orders for n in range(4)]
    assert await w.rows() == 0


async def test_m2m_changed_goes_through_the_outbox(redis_url: str, tmp_path: Path) -> None:
    class Base(DeclarativeBase):
        pass

    post_tags = Table(
        "post_tags",
        Base.metadata,
        Column("post_id", ForeignKey("post.id"), primary_key=True),
        Column("tag_id", ForeignKey("tag.id"), primary_key=True),
    )

    class Tag(Base):
        __tablename__ = "tag"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Post(Base):
        __tablename__ = "post"
        id: Mapped[int] = mapped_column(primary_key=True)
        tags: Mapped[list[Tag]] = relationship(secondary=post_tags, lazy="selectin")

    stream = f"asignals-test:m2m{uuid.uuid4().hex[:8]}"
    bridge = Bridge(
        RedisStreams(redis_url),
        stream=stream,
        mode="publish",
        signals=[m2m_changed],
        senders={"Post": Post, "Tag": Tag, "post_tags": post_tags},
    )
    outbox = Outbox(bridge, metadata=Base.metadata)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'm2m.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    install(maker, outbox=outbox)
    redis = Redis.from_url(redis_url)
    try:
        async with bridge, outbox.relay(engine, poll_interval=0.05):
            async with maker() as session:
                tag = Tag(id=7)
                session.add(Post(id=1, tags=[tag]))
                await session.commit()
            deadline = asyncio.get_running_loop().time() + 10
            while len(await stream_data(redis, stream)) < 1:
                assert asyncio.get_running_loop().time() < deadline, "no m2m_changed published"
                await asyncio.sleep(0.02)
        (event,) = [json.loads(data) for data in await stream_data(redis, stream)]
    finally:
        uninstall(maker)
        await redis.delete(stream)
        await redis.aclose()
        await engine.dispose()
    assert event["signal"] == "m2m_changed" and event["sender"] == {"ref": "post_tags"}
    assert event["kwargs"]["action"] == "post_add" and event["kwargs"]["reverse"] is False
    assert set(event["kwargs"]) == {"instance", "action", "reverse", "model", "pk_set", "using"}
    assert event["kwargs"]["using"] is None and "Tag" in event["kwargs"]["model"]["v"]
    consumer = JsonCodec()  # another process's codec: it knows the models once registered
    register_model(consumer, Post)
    with pytest.raises(DecodeError, match=r"register it here with register_model"):
        consumer.decode(event["kwargs"]["model"])  # Tag is not registered there yet
    register_model(consumer, Tag)
    assert consumer.decode(event["kwargs"]["model"]) is Tag
    post = consumer.decode(event["kwargs"]["instance"])
    assert type(post) is Post and post.id == 1 and inspect(post).detached


async def test_writers_and_a_busy_relay_do_not_block_each_other(world: World) -> None:
    w = world
    async with w.shop.bridge, w.relay(poll_interval=0.01):
        orders = await asyncio.wait_for(
            asyncio.gather(*(place(w, f"w{i}") for i in range(30))), timeout=30
        )
        events = await w.wait_events(60, timeout=20)
        await wait_until(lambda: _empty(w), 5, "an empty outbox table")
    placed = sorted(e["kwargs"]["order_id"] for e in events if e["signal"] == "order_placed")
    assert placed == sorted(o.id for o in orders) and len(events) == 60


# -- what cannot be encoded fails the flush -----------------------------------------------------


async def test_an_event_that_cannot_be_encoded_fails_the_flush(world: World, connect: Any) -> None:
    w = world
    ran: list[Any] = []
    connect(order_placed, lambda sender, **kw: ran.append(kw))

    class Note(w.shop.base):  # type: ignore[name-defined,misc]
        __tablename__ = f"{w.shop.outbox.table.name}_note"
        id: Mapped[int] = mapped_column(primary_key=True)
        order_id: Mapped[int | None] = mapped_column(ForeignKey(w.shop.order.id))
        text: Mapped[str] = mapped_column(String(20))

    async with w.engine.begin() as conn:
        await conn.run_sync(Note.__table__.create)  # type: ignore[attr-defined]
    async with w.maker() as session:
        session.add(w.shop.order(customer="gus", total=Decimal(1)))
        session.add(Note(text="unregistered"))
        with pytest.raises(EncodeError, match="register"):
            await session.commit()
        await session.rollback()
        session.add(w.shop.order(customer="hal", total=Decimal(1)))
        await session.flush()
        with pytest.raises(EncodeError, match="object"):
            await w.shop.outbox.send(session, order_placed, "shop", blob=object())
        await session.rollback()
    assert ran == []  # the local receivers never ran for a send that cannot cross
    async with w.maker() as session:
        assert await session.scalar(select(func.count()).select_from(w.shop.order)) == 0
    assert await w.rows() == 0


# -- rows the relay cannot publish --------------------------------------------------------------


async def test_undecodable_row_is_dead_lettered_and_does_not_block(world: World) -> None:
    w = world
    first = await place(w, "ivy", events=0)
    table = w.shop.outbox.table
    async with w.engine.begin() as conn:
        await conn.execute(
            table.insert(),
            [
                {
                    "txn": "hand-edited",
                    "seq": 0,
                    "event_id": "x",
                    "signal": "order_placed",
                    "data": b'{"not": "an envelope"}',
                    "created_at": 0.0,
                }
            ],
        )
    last = await place(w, "jo", events=0)
    async with w.shop.bridge, w.relay() as relay:
        events = await w.wait_events(2)
        await wait_until(lambda: _empty(w), 5, "an empty outbox table")
    assert [e["kwargs"]["instance"]["v"]["id"] for e in events] == [first.id, last.id]
    dead = await w.redis.xrange(f"{w.stream}:dead")
    assert len(dead) == 1 and relay.dead_lettered == 1 and relay.published == 2
    fields = {k.decode(): v for k, v in dead[0][1].items()}
    assert b"cannot be published" in fields["reason"] and b"outbox row" in fields["reason"]
    assert b"an envelope" in json.dumps({k: v.decode() for k, v in fields.items()}).encode()


# -- bad input -----------------------------------------------------------------------------------


def test_an_outbox_needs_a_bridge() -> None:
    with pytest.raises(TypeError, match=r"Outbox needs the asignals\.bridge\.Bridge"):
        Outbox(None)
    with pytest.raises(TypeError, match="publish_encoded"):
        Outbox(object())
    with pytest.raises(TypeError, match=r"outbox must be an asignals\.contrib\.sqlalchemy\.Outbox"):
        install(None, outbox=object())  # type: ignore[arg-type]


async def test_bad_sends_name_what_to_do(world: World) -> None:
    w = world
    stray = AsyncSignal(name="stray")
    async with w.maker() as session:
        with pytest.raises(RuntimeError, match=r"has none: call it inside `async with session"):
            await w.shop.outbox.send(session, order_placed, "shop", n=1)
        session.add(w.shop.order(customer="kim", total=Decimal(1)))
        await session.flush()
        with pytest.raises(ValueError, match="not carried by the outbox's bridge: attach it"):
            await w.shop.outbox.send(session, stray, "shop")
        await session.rollback()
    assert w.shop.outbox.relay().engine is w.engine  # install() told it the maker's engine
    with pytest.raises(ValueError, match=r"pass it as outbox.relay\(engine\)"):
        Outbox(w.shop.bridge, table="elsewhere").relay()
    with pytest.raises(RuntimeError, match="bridge is not running"):
        async with w.relay():
            pass


async def test_a_missing_table_names_create(world: World) -> None:
    w = world
    async with w.engine.begin() as conn:
        await conn.run_sync(w.shop.outbox.table.drop)
    async with w.maker() as session:
        session.add(w.shop.order(customer="lou", total=Decimal(1)))
        with pytest.raises(RuntimeError, match=r"does not exist .*await outbox.create\(engine\)"):
            await session.commit()
    async with w.shop.bridge:
        with pytest.raises(RuntimeError, match="does not exist"):
            async with w.relay():
                pass
    await w.shop.outbox.create(w.engine)  # and create() makes it
    assert await w.rows() == 0
    assert w.shop.outbox.engine is w.engine


# -- PostgreSQL: LISTEN/NOTIFY ---------------------------------------------------------------


async def test_postgres_relay_is_woken_by_notify(world: World) -> None:
    w = world
    if w.dialect != "postgres":
        assert w.shop.outbox.relay(w.engine).listening is False  # SQLite polls
        return
    assert w.relay().listening
    async with w.shop.bridge, w.relay(poll_interval=60):
        await asyncio.sleep(0.2)  # the relay's first pass found nothing; now it waits 60 s
        started = asyncio.get_running_loop().time()
        await place(w, "max", events=0)
        await w.wait_events(1, timeout=10)
        assert asyncio.get_running_loop().time() - started < 5  # woken, not polled
