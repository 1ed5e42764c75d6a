"""Cost of the SQLAlchemy model-signal adapter on a 10,000-row flush, SQLite and PostgreSQL.

    .venv/bin/python benchmarks/orm.py [--rounds N] [--rows N] [--no-postgres]

Each sample adds ``rows`` new objects to an ``AsyncSession`` and times ``await session.flush()``
(the INSERTs plus every signal of the flush), then rolls back so the table stays empty. The
contenders are sampled round-robin, in a rotating order, so drifts of the machine hit them
alike; the table reports medians and the ratio to the same flush with the adapter not
installed. PostgreSQL is the server at ``ASIGNALS_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asignals.contrib import sqlalchemy as adapter
from asignals.signals import post_save

POSTGRES_DSN = os.environ.get("ASIGNALS_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = f"asig_bench_{uuid.uuid4().hex[:8]}"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    value: Mapped[int]


def sync_receiver(sender: Any, instance: Any, **kwargs: Any) -> None:
    pass


async def async_receiver(sender: Any, instance: Any, **kwargs: Any) -> None:
    pass


def _setup(name: str) -> Callable[[], None]:
    """Put the adapter and receivers in the state contender ``name`` measures."""

    def apply() -> None:
        adapter.uninstall()
        post_save.disconnect(sync_receiver)
        post_save.disconnect(async_receiver)
        if name == "no adapter":
            return
        adapter.install()
        if name == "+ 1 sync receiver":
            post_save.connect(sync_receiver, sender=Row)
        elif name == "+ 1 async receiver":
            post_save.connect(async_receiver, sender=Row)

    return apply


CONTENDERS = ["no adapter", "adapter, no receivers", "+ 1 sync receiver", "+ 1 async receiver"]


async def _sample(maker: async_sessionmaker[Any], rows: int) -> int:
    async with maker() as session:
        session.add_all(Row(name=f"row {i}", value=i) for i in range(rows))
        gc.collect()
        start = perf_counter_ns()
        await session.flush()
        elapsed = perf_counter_ns() - start
        await session.rollback()
    return elapsed


async def _bench(engine: AsyncEngine, rounds: int, rows: int) -> dict[str, float]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    samples: dict[str, list[int]] = {name: [] for name in CONTENDERS}
    try:
        _setup(CONTENDERS[-1])()  # warm-up: caches, statement compilation, connections
        await _sample(maker, rows)
        for r in range(rounds):
            order = CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]
            for name in order:
                _setup(name)()
                samples[name].append(await _sample(maker, rows))
    finally:
        _setup("no adapter")()
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await engine.dispose()
    return {name: statistics.median(values) / 1e6 for name, values in samples.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    results: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = create_async_engine(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}")
        results.append(("SQLite (aiosqlite)", await _bench(sqlite, args.rounds, args.rows)))
    if not args.no_postgres:
        pg_url = POSTGRES_DSN.replace("postgresql://", "postgresql+asyncpg://", 1)
        results.append(
            (
                "PostgreSQL (asyncpg)",
                await _bench(create_async_engine(pg_url), args.rounds, args.rows),
            )
        )

    print(f"\nFlush of {args.rows:,} new rows, median of {args.rounds} interleaved rounds\n")
    print("| database | contender | flush (ms) | ratio to no adapter |")
    print("|---|---|---:|---:|")
    for database, medians in results:
        base = medians["no adapter"]
        for name in CONTENDERS:
            print(f"| {database} | {name} | {medians[name]:.1f} | {medians[name] / base:.3f}x |")


if __name__ == "__main__":
    asyncio.run(main())
