"""The transactional outbox: write cost per committed row, relay throughput, COMMIT-to-receiver
latency.

    .venv/bin/python benchmarks/outbox.py [--rounds N] [--no-postgres] [--events N] [--rate R]
        [--only cost|relay|latency] [--paths bare,outbox,orm] [--latency-repeats N] [--trace]

1. **Write cost.** A transaction adds ``rows`` orders and commits (``rows`` = 1 and 100). The
   contenders, sampled round-robin in a rotating order (medians of ``--rounds`` rounds): the
   same commit with the model-signal adapter installed and no outbox, and with
   ``install(..., outbox=outbox)`` so each order's ``post_save`` is also encoded and written
   to the outbox table (plus one ``NOTIFY`` per transaction on PostgreSQL), and the same with
   ``Outbox(notify=False)``. Reported per committed row (medians), with the median of the
   per-round ratios to no outbox. SQLite (aiosqlite, a file) and PostgreSQL (asyncpg).
2. **Relay throughput** (PostgreSQL to the Redis bridge): ``--events`` committed rows wait in
   the table; the time from ``outbox.relay()`` start until the table is empty, i.e. every row
   published, confirmed by Redis and deleted. Median of 3.
3. **Latency**: ``--writers`` processes commit an order plus 1 (then 5) ``order_placed``
   events per transaction, ``--rate`` events/s in all (concurrent sessions); the relay runs in the
   benchmark's process with LISTEN/NOTIFY, and another *process* receives the events through
   its own bridge. Latency is the receiver's ``time.monotonic()`` minus the writer's as it
   sends COMMIT (one clock for all processes on Linux): it includes the COMMIT itself.
   ``--paths``, run in turn (rotating) so they share the machine's state: ``orm`` (ORM writers
   and ``outbox.send``), ``outbox`` (plain asyncpg writers of the same outbox rows, cheap in
   CPU) and ``bare``, the floor: the same writers' ``NOTIFY`` carries the envelopes and a bare
   asyncpg ``LISTEN`` loop ``XADD``s them as they arrive, to the same receiver. Also shown:
   from the relay's NOTIFY to the receiver, and this process's CPU per event. ``--trace``
   times each step of the relay (NOTIFY, pass start, rows locked, publish started and
   confirmed, DELETE and COMMIT done) and shows them, with their mean among the slowest 1%.

Servers: PostgreSQL at ``ASIGNALS_POSTGRES_DSN``, Redis at ``ASIGNALS_REDIS_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from subprocess import PIPE
from typing import TYPE_CHECKING, Any

from sqlalchemy import Numeric, String, delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asignals import AsyncSignal
from asignals.bridge import Bridge, RedisStreams
from asignals.contrib.sqlalchemy import Outbox, install, uninstall
from asignals.signals import post_save

if TYPE_CHECKING:
    from asignals.contrib.sqlalchemy._relay import Relay

POSTGRES_DSN = os.environ.get("ASIGNALS_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ASIGNALS_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = POSTGRES_DSN.replace("postgresql://", "postgresql+asyncpg://", 1)
RUN = os.environ.setdefault("ASIGNALS_BENCH_RUN", uuid.uuid4().hex[:8])  # children share it

order_placed = AsyncSignal(name="order_placed")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = f"bench_order_{RUN}"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(50))
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))


async def _create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


async def _drop_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)


def make_bridge(stream: str, signals: list[AsyncSignal], mode: Any = "publish") -> Bridge:
    return Bridge(
        RedisStreams(REDIS_URL),
        stream=stream,
        mode=mode,
        signals=signals,
        senders={"Order": Order},
    )


async def _clear(engine: AsyncEngine, outbox: Outbox) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(Order.__table__))
        await conn.execute(delete(outbox.table))


# -- 1. write cost -------------------------------------------------------------------------------


async def _commit(maker: async_sessionmaker[Any], rows: int) -> int:
    async with maker() as session:
        session.add_all(Order(customer=f"c{i}", total=Decimal("9.99")) for i in range(rows))
        start = time.perf_counter_ns()
        await session.commit()
        return time.perf_counter_ns() - start


async def write_cost(engine: AsyncEngine, rounds: int, rows: int) -> dict[str, list[float]]:
    """µs per committed row of each contender, one sample per round."""
    bridge = make_bridge(f"bench:{RUN}:w", [post_save])
    outbox = Outbox(bridge, metadata=Base.metadata)
    quiet = Outbox(bridge, metadata=Base.metadata, notify=False)  # the same table
    await _create_tables(engine)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    setups = {"no outbox": None, "outbox": outbox, "outbox, notify=False": quiet}
    samples: dict[str, list[float]] = {name: [] for name in setups}
    transactions = max(1, 200 // rows)  # ~200 rows per sample
    try:
        for r in range(rounds + 1):  # round 0 warms up
            names = list(setups)[r % 3 :] + list(setups)[: r % 3]
            for name in names:
                install(maker, outbox=setups[name])
                elapsed = 0
                for _ in range(transactions):
                    elapsed += await _commit(maker, rows)
                if r:
                    samples[name].append(elapsed / (transactions * rows) / 1000)
                await _clear(engine, outbox)
    finally:
        uninstall(maker)
        await _drop_tables(engine)
    return samples


def _ratio(samples: dict[str, list[float]], name: str) -> float:
    """The median of the per-round ratios to "no outbox" (drifts of the machine cancel out)."""
    base = samples["no outbox"]
    return statistics.median(v / b for v, b in zip(samples[name], base, strict=True))


# -- 2. relay throughput -------------------------------------------------------------------------


async def _fill(maker: async_sessionmaker[Any], outbox: Outbox, events: int) -> None:
    per_transaction = 500
    for start in range(0, events, per_transaction):
        async with maker() as session, session.begin():
            session.add_all(
                Order(customer=f"c{start + i}", total=Decimal("9.99"))
                for i in range(min(per_transaction, events - start))
            )


async def _rows(engine: AsyncEngine, outbox: Outbox) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(outbox.table)) or 0)


async def relay_throughput(events: int, batch_size: int) -> tuple[list[float], list[float]]:
    """Events/s of each run, and the relay process's CPU µs per event (this process's time)."""
    engine = create_async_engine(PG_URL, pool_size=10)
    stream = f"bench:{RUN}:relay"
    bridge = make_bridge(stream, [post_save])
    outbox = Outbox(bridge, metadata=Base.metadata)
    await _create_tables(engine)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    install(maker, outbox=outbox)
    rates, cpu = [], []
    try:
        async with bridge:
            for _ in range(3):
                await _fill(maker, outbox, events)
                assert await _rows(engine, outbox) == events
                start, start_cpu = time.perf_counter(), time.process_time()
                async with outbox.relay(engine, batch_size=batch_size, poll_interval=0.01):
                    while await _rows(engine, outbox):  # noqa: ASYNC110 - polls a table
                        await asyncio.sleep(0.005)
                rates.append(events / (time.perf_counter() - start))
                cpu.append((time.process_time() - start_cpu) / events * 1e6)
                await _clear(engine, outbox)
    finally:
        uninstall(maker)
        await _drop_tables(engine)
        await engine.dispose()
        await _delete_stream(stream)
    return rates, cpu


async def _delete_stream(stream: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    await redis.delete(stream, f"{stream}:dead")
    await redis.aclose()


# -- 3. COMMIT-to-remote-receiver latency --------------------------------------------------------


async def consumer(stream: str) -> None:
    """The second process: receive ``order_placed`` and note when each arrived."""
    arrived: dict[str, float] = {}

    def on_placed(sender: Any, order_id: int, k: int, **kwargs: Any) -> None:
        arrived[f"{order_id}:{k}"] = time.monotonic()

    order_placed.connect(on_placed, weak=False)
    async with make_bridge(stream, [order_placed], mode="broadcast"):
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    print(json.dumps(arrived), flush=True)


async def writer(
    stream: str, transactions: int, rate: float, per_transaction: int, kind: str
) -> None:
    """A writing process: ``transactions`` (an order and its events) at ``rate``/s.

    ``kind`` "orm": a session adds the order and ``outbox.send`` writes the events (what an
    application does). "raw" and "bare": plain asyncpg inserts the order and the same outbox
    rows (the rows ``outbox.send`` writes), so the writers cost little CPU and the same for both
    relays; "raw" sends the outbox's ``NOTIFY``, "bare" one carrying the envelopes for the bare
    relay (its rows are left in the table).
    """
    committed: dict[str, float] = {}
    done: dict[str, float] = {}
    limit = asyncio.Semaphore(16)
    bridge = make_bridge(stream, [order_placed])
    outbox = Outbox(bridge, metadata=Base.metadata)
    if kind != "orm":
        import asyncpg

        pool = await asyncpg.create_pool(POSTGRES_DSN, min_size=16, max_size=16)
        insert = f"INSERT INTO {Order.__tablename__} (customer, total) VALUES ($1, $2) RETURNING id"
        rows = (
            f"INSERT INTO {outbox.table.name} (txn, seq, event_id, signal, data, created_at) "
            f"SELECT $1, s, e, 'order_placed', d, $2 FROM unnest($3::int[], $4::text[], "
            f"$5::bytea[]) AS r(s, e, d)"
        )
        channel = BARE_CHANNEL if kind == "bare" else outbox.channel

        async def place(n: int) -> None:
            async with limit, pool.acquire() as conn:
                txn = conn.transaction()
                await txn.start()
                order_id = await conn.fetchval(insert, f"c{n}", Decimal("9.99"))
                keys = [f"{order_id}:{k}" for k in range(per_transaction)]
                encoded = [
                    bridge.encode(order_placed, "shop", {"order_id": order_id, "k": k})
                    for k in range(per_transaction)
                ]
                seqs = list(range(per_transaction))
                ids, data = [e.id for e in encoded], [e.data for e in encoded]
                await conn.execute(rows, uuid.uuid4().hex, time.time(), seqs, ids, data)
                payload = _pack(data) if kind == "bare" else ""
                await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
                now = time.monotonic()
                committed.update(dict.fromkeys(keys, now))
                await txn.commit()
                done.update(dict.fromkeys(keys, time.monotonic()))

    else:
        engine = create_async_engine(PG_URL, pool_size=20)
        maker = async_sessionmaker(engine, expire_on_commit=False)

        async def place(n: int) -> None:
            async with limit, maker() as session:
                order = Order(customer=f"c{n}", total=Decimal("9.99"))
                session.add(order)
                await session.flush()
                for k in range(per_transaction):
                    await outbox.send(session, order_placed, "shop", order_id=order.id, k=k)
                # Taken as COMMIT is sent: once it returns, this task may resume after the
                # event arrived. So the figure includes the COMMIT's own round trip.
                keys = [f"{order.id}:{k}" for k in range(per_transaction)]
                now = time.monotonic()
                committed.update(dict.fromkeys(keys, now))
                await session.commit()
                done.update(dict.fromkeys(keys, time.monotonic()))

    start = time.monotonic()
    tasks = []
    for n in range(transactions):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(place(n)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    if kind == "orm":
        await engine.dispose()
    else:
        await pool.close()
    report = {"elapsed": elapsed, "committed": committed, "done": done}
    print(json.dumps(report), flush=True)


BARE_CHANNEL = f"bench_bare_{RUN}"


def _pack(messages: list[bytes]) -> str:
    return json.dumps([m.decode() for m in messages])


class _BareRelay:
    """The floor: LISTEN, and XADD each NOTIFY's envelopes to Redis as it arrives."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.notified: list[float] = []
        self._queue: asyncio.Queue[str] = asyncio.Queue()

    async def __aenter__(self) -> _BareRelay:
        import asyncpg
        from redis.asyncio import Redis

        self._redis = Redis.from_url(REDIS_URL)
        self._listener = await asyncpg.connect(POSTGRES_DSN)
        await self._listener.add_listener(BARE_CHANNEL, self._notified)
        self._task = asyncio.create_task(self._run())
        return self

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.notified.append(time.monotonic())
        self._queue.put_nowait(payload)

    async def _run(self) -> None:
        while True:
            payloads = [await self._queue.get()]
            while not self._queue.empty():  # what arrived meanwhile goes in the same round trip
                payloads.append(self._queue.get_nowait())
            pipe = self._redis.pipeline(transaction=False)
            for payload in payloads:
                for message in json.loads(payload):
                    pipe.xadd(self.stream, {b"e": message.encode()}, maxlen=100_000)
            await pipe.execute()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.2)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._listener.close()
        await self._redis.aclose()


class _Trace:
    """Timestamps along the relay's path, by wrapping one relay's steps (this process)."""

    def __init__(self, relay: Relay) -> None:
        self.notified: list[float] = []
        self.locked: dict[int, tuple[float, float]] = {}  # row id -> its pass's start, locked
        self.sent: dict[int, tuple[float, float, bytes]] = {}  # -> publish start, confirmed
        self.ends: dict[int, float] = {}  # row id -> its DELETE and COMMIT done
        relay_: Any = relay
        notified, run_pass, in_order, publish = (
            relay_._notified,
            relay_._pass,
            relay_._in_order,
            relay_._publish,
        )
        ship = getattr(relay_, "_ship", None)  # the pipelined relay hands batches on
        current: dict[str, Any] = {}

        def on_notify(*args: object) -> None:
            self.notified.append(time.monotonic())
            notified(*args)

        async def traced_pass() -> Any:
            current["start"], current["ids"] = time.monotonic(), []
            found = await run_pass()
            if ship is None:
                self.ends.update(dict.fromkeys(current["ids"], time.monotonic()))
            return found

        async def traced_in_order(conn: Any, rows: list[Any]) -> Any:
            locked = time.monotonic()
            for row in rows:
                self.locked[row[0]] = (current["start"], locked)
                current["ids"].append(row[0])
            return await in_order(conn, rows)

        async def traced_publish(rows: list[Any]) -> Any:
            start = time.monotonic()
            result = await publish(rows)
            confirmed = time.monotonic()
            for row in rows:
                self.sent[row[0]] = (start, confirmed, bytes(row[2]))
            return result

        async def traced_ship(conn: Any, rows: list[Any], published: Any) -> None:
            assert ship is not None
            await ship(conn, rows, published)
            self.ends.update(dict.fromkeys((row[0] for row in rows), time.monotonic()))

        relay_._notified = on_notify
        relay_._pass = traced_pass
        relay_._in_order = traced_in_order
        relay_._publish = traced_publish
        if ship is not None:
            relay_._ship = traced_ship

    def stages(
        self, committed: dict[str, float], done: dict[str, float], arrived: dict[str, float]
    ) -> dict[str, dict[str, float]]:
        """Per event key, the time of each step."""
        notified = sorted(self.notified)
        out: dict[str, dict[str, float]] = {}
        for row_id, (started, confirmed, data) in self.sent.items():
            kwargs = json.loads(data)["kwargs"]
            key = f"{kwargs['order_id']}:{kwargs['k']}"
            if key not in committed or key not in arrived or row_id not in self.locked:
                continue
            start, locked = self.locked[row_id]
            out[key] = _steps(notified, committed[key], arrived[key]) | {
                "committed": done[key],
                "pass": start,
                "locked": locked,
                "publishing": started,
                "confirmed": confirmed,
                "ended": self.ends.get(row_id, float("nan")),
            }
        return out


def _steps(notified: list[float], committed: float, received: float) -> dict[str, float]:
    """The steps every path has; ``notified`` sorted. The NOTIFY is the first one that came
    after the COMMIT was sent (maybe another transaction's: the same rule for both paths)."""
    import bisect

    i = bisect.bisect_left(notified, committed)
    notify = notified[i] if i < len(notified) else float("nan")
    return {"commit": committed, "notify": notify, "received": received}


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdin=PIPE, stdout=PIPE, limit=1 << 24
    )


async def latency(
    events: int, rate: float, writers: int, per_transaction: int, *, path: str, trace: bool
) -> tuple[list[float], float, dict[str, dict[str, float]]]:
    """Writers and the receiver in processes of their own, the relay in this one.

    ``rate`` is in events/s; each transaction carries ``per_transaction`` of them. ``path``:
    "bare" (bare writers and relay), "outbox" (raw writers, the outbox's relay) or "orm"
    (ORM writers with ``outbox.send``, the outbox's relay); see :func:`writer`. Returns the
    latencies (ms), the events/s achieved and, with ``trace``, each event's steps.
    """
    engine = create_async_engine(PG_URL, pool_size=20)
    stream = f"bench:{RUN}:latency:{uuid.uuid4().hex[:6]}"
    bridge = make_bridge(stream, [order_placed])
    outbox = Outbox(bridge, metadata=Base.metadata)
    await _create_tables(engine)
    receiver = await _spawn("--consumer", stream)
    assert receiver.stdout is not None and receiver.stdin is not None
    committed: dict[str, float] = {}
    done: dict[str, float] = {}
    tracer: _Trace | None = None
    bare = path == "bare"
    try:
        await asyncio.wait_for(receiver.stdout.readline(), 30)  # "ready"
        if bare:
            relay: Any = _BareRelay(stream)
        else:
            relay = outbox.relay(engine, poll_interval=1.0)
            tracer = _Trace(relay) if trace else None
        async with bridge, relay:
            cpu = time.process_time()  # this process: the relay (and the bridge it publishes by)
            each = str(events // per_transaction // writers)
            tx_rate = str(rate / per_transaction / writers)
            kind = {"bare": "bare", "outbox": "raw", "orm": "orm"}[path]
            procs = [
                await _spawn("--writer", stream, each, tx_rate, str(per_transaction), kind)
                for _ in range(writers)
            ]
            elapsed = 0.0
            for proc in procs:
                assert proc.stdout is not None
                report = json.loads((await asyncio.wait_for(proc.stdout.readline(), 300)).decode())
                committed.update(report["committed"])
                done.update(report["done"])
                elapsed = max(elapsed, report["elapsed"])
                await proc.wait()
            while not bare and await _rows(engine, outbox):  # noqa: ASYNC110 - polls a table
                await asyncio.sleep(0.01)
            cpu = time.process_time() - cpu
            await asyncio.sleep(0.5)
        receiver.stdin.close()
        arrived = json.loads((await asyncio.wait_for(receiver.stdout.readline(), 30)).decode())
        await receiver.wait()
    finally:
        if receiver.returncode is None:
            receiver.kill()
        await _drop_tables(engine)
        await engine.dispose()
        await _delete_stream(stream)
    missing = len(committed) - len(arrived)
    if missing:
        print(f"warning: {missing} event(s) did not arrive")
    waits = [(arrived[k] - v) * 1000 for k, v in committed.items() if k in arrived]
    if tracer is not None:
        steps = tracer.stages(committed, done, arrived)
    elif bare:
        steps = {
            k: _steps(relay.notified, t0, arrived[k]) for k, t0 in committed.items() if k in arrived
        }
    else:
        steps = {}
    return waits, len(committed) / elapsed, steps, cpu / len(committed) * 1e6


#: The steps of the relay path, as (label, from, to) timestamps of :meth:`_Trace.stages`.
_STEPS = [
    ("COMMIT round trip (writer)", "commit", "committed"),
    ("COMMIT sent -> NOTIFY in relay", "commit", "notify"),
    ("NOTIFY -> its pass starts", "notify", "pass"),
    ("pass start -> rows locked (BEGIN, SELECT)", "pass", "locked"),
    ("rows locked -> publish starts (previous batch confirmed)", "locked", "publishing"),
    ("publish -> confirmed", "publishing", "confirmed"),
    ("publish confirmed -> remote receiver", "confirmed", "received"),
    ("publish confirmed -> DELETE, COMMIT done", "confirmed", "ended"),
    ("NOTIFY -> remote receiver", "notify", "received"),
    ("total: COMMIT sent -> remote receiver", "commit", "received"),
]


def _print_steps(steps: dict[str, dict[str, float]]) -> None:
    """Each step's p50 and p99, and its mean among the slowest 1% of events."""
    events = list(steps.values())
    slow = sorted(events, key=lambda e: e["received"] - e["commit"])[-max(1, len(events) // 100) :]
    print("| step | p50 (ms) | p99 (ms) | mean in the slowest 1% (ms) |")
    print("|---|---:|---:|---:|")
    for label, start, end in _STEPS:
        values = [(e[end] - e[start]) * 1000 for e in events if e[end] == e[end]]
        tail = [(e[end] - e[start]) * 1000 for e in slow if e[end] == e[end]]
        print(
            f"| {label} | {_pct(values, 0.5):.1f} | {_pct(values, 0.99):.1f} "
            f"| {statistics.fmean(tail) if tail else float('nan'):.1f} |"
        )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--only", choices=["cost", "relay", "latency"], help="one part only")
    parser.add_argument("--events", type=int, default=20_000, help="rows for the relay run")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--latency-events", type=int, default=3_000)
    parser.add_argument("--latency-repeats", type=int, default=1, help="interleaved runs")
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--writers", type=int, default=2, help="writing processes")
    parser.add_argument("--trace", action="store_true", help="time each step of the relay")
    parser.add_argument("--paths", default="bare,outbox,orm", help="latency paths, in turn")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    if args.only in (None, "cost"):
        await cost_section(args)
    if args.no_postgres:
        return
    if args.only in (None, "relay"):
        rates, cpu = await relay_throughput(args.events, args.batch_size)
        print(
            f"\n2. Relay throughput, PostgreSQL -> Redis, {args.events:,} rows, batch_size "
            f"{args.batch_size}: median {statistics.median(rates):,.0f} events/s "
            f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}; target >= 10,000); the relay's "
            f"process used {statistics.median(cpu):.0f} µs CPU per event "
            f"(load average {os.getloadavg()[0]:.2f})"
        )
    if args.only in (None, "latency"):
        await latency_section(args)


async def cost_section(args: argparse.Namespace) -> None:
    print(f"\n1. Commit cost per row, median of {args.rounds} interleaved rounds\n")
    print(
        "| database | rows per transaction | no outbox (µs/row) | outbox (µs/row) | ratio "
        "| outbox, notify=False (µs/row) | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    databases = [("SQLite (aiosqlite)", None)]
    if not args.no_postgres:
        databases.append(("PostgreSQL (asyncpg)", PG_URL))
    for label, url in databases:
        for rows in (1, 100):
            with tempfile.TemporaryDirectory() as tmp:
                engine = create_async_engine(url or f"sqlite+aiosqlite:///{Path(tmp) / 'b.db'}")
                cost = await write_cost(engine, args.rounds, rows)
                await engine.dispose()
            base, full, quiet = (
                statistics.median(cost[name])
                for name in ("no outbox", "outbox", "outbox, notify=False")
            )
            print(
                f"| {label} | {rows} | {base:.1f} | {full:.1f} | {_ratio(cost, 'outbox'):.2f}x "
                f"| {quiet:.1f} | {_ratio(cost, 'outbox, notify=False'):.2f}x |",
                flush=True,
            )


async def latency_section(args: argparse.Namespace) -> None:
    """The outbox path and the bare floor, interleaved, on the same machine at the same time."""
    print(
        f"\n3. COMMIT -> remote receiver, LISTEN/NOTIFY (target p99 < 20 ms at "
        f"{args.rate:,.0f} events/s), {args.latency_repeats} interleaved run(s) each; bare = "
        f"a NOTIFY carrying the envelopes, XADDed as it arrives; outbox: the relay; both with "
        f"the same plain asyncpg writers of the outbox rows; orm: ORM writers, outbox.send\n"
    )
    paths = args.paths.split(",")
    print(
        "| path | events per transaction | achieved events/s | p50 (ms) | p99 (ms) | max (ms) "
        "| NOTIFY -> receiver p50 / p99 (ms) | relay CPU (µs/event) | load average |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for per_transaction in (1, 5):
        waits: dict[str, list[float]] = {path: [] for path in paths}
        rates: dict[str, list[float]] = {path: [] for path in paths}
        cpus: dict[str, list[float]] = {path: [] for path in paths}
        steps: dict[str, dict[str, dict[str, float]]] = {path: {} for path in paths}
        loads: list[float] = []
        for r in range(args.latency_repeats):
            for path in paths[r % len(paths) :] + paths[: r % len(paths)]:
                values, achieved, traced, cpu = await latency(
                    args.latency_events,
                    args.rate,
                    args.writers,
                    per_transaction,
                    path=path,
                    trace=args.trace,
                )
                waits[path].extend(values)
                rates[path].append(achieved)
                cpus[path].append(cpu)
                steps[path].update({f"{r}:{k}": v for k, v in traced.items()})
                loads.append(os.getloadavg()[0])
        for path in paths:
            relay = [
                (e["received"] - e["notify"]) * 1000
                for e in steps[path].values()
                if e["notify"] == e["notify"]
            ]
            from_notify = f"{_pct(relay, 0.5):.1f} / {_pct(relay, 0.99):.1f}" if relay else "-"
            print(
                f"| {path} | {per_transaction} | {statistics.median(rates[path]):,.0f} "
                f"| {_pct(waits[path], 0.5):.1f} | {_pct(waits[path], 0.99):.1f} "
                f"| {max(waits[path]):.1f} | {from_notify} | {statistics.median(cpus[path]):.0f} "
                f"| {min(loads):.1f}-{max(loads):.1f} |",
                flush=True,
            )
        for path in paths:
            if path != "bare" and steps[path]:
                print(f"\nWhere the time goes, {path}, {per_transaction} event(s)/transaction:\n")
                _print_steps(steps[path])
                print(flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--consumer"]:
        asyncio.run(consumer(sys.argv[2]))
    elif sys.argv[1:2] == ["--writer"]:
        args = sys.argv[2:]
        asyncio.run(writer(args[0], int(args[1]), float(args[2]), int(args[3]), args[4]))
    else:
        asyncio.run(main())
