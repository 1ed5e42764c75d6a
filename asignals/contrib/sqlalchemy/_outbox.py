"""The transactional outbox: model events written with the data, published after COMMIT.

The dual-write problem: with ``defer_post_until_commit=True`` (or any ``on_commit`` hook), a
process that dies between the COMMIT and the write to the broker loses the event though the row
it describes is stored. The outbox writes the event's envelope as a row of its own table in the
same transaction as the data; a relay (:meth:`Outbox.relay`) publishes committed rows and
deletes them once the broker confirmed. The event reaches the broker if and only if its
transaction committed, at least once, always under the envelope id it got at write time.

Envelopes are encoded when the row is written, with the bridge's codec: a send that cannot
cross processes fails the flush (the transaction rolls back), never the relay later.
"""

from __future__ import annotations

import time
import uuid
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from ... import AsyncSignal
from . import _wire
from ._run import Send, send_unpublished

if TYPE_CHECKING:
    from ._relay import Relay

__all__ = ["Outbox"]

_PORT = ("carries", "encode", "publish_encoded", "dead_letter_encoded")
_tokens: weakref.WeakKeyDictionary[SessionTransaction, list[Any]] = weakref.WeakKeyDictionary()


class Outbox:
    """A table of events waiting for the broker, written in the transactions they belong to.

    ``Outbox(bridge, metadata=Base.metadata)`` puts the table (``asignals_outbox`` unless
    ``table=`` says otherwise) in your ``MetaData``, so Alembic's autogenerate sees it; or call
    ``await outbox.create(engine)``. Then:

    - ``install(Session, outbox=outbox)``: the ``post_save``, ``post_delete``, ``post_bulk`` and
      ``m2m_changed`` sends of those sessions' flushes, for every signal ``bridge`` carries, are
      written to the table in the flush's transaction (local receivers run as without it);
    - ``await outbox.send(session, signal, sender, **kwargs)``: the same for a domain signal;
    - ``async with bridge, outbox.relay(engine):`` publishes committed rows through ``bridge``.

    Model instances travel as detached instances of their class (see ``register_model``):
    the writer registers each model with the bridge's codec on first use; a consumer calls
    ``register_model(bridge.codec, Order)`` for the models it receives.
    """

    def __init__(
        self,
        bridge: Any,
        *,
        metadata: MetaData | None = None,
        table: str = "asignals_outbox",
        schema: str | None = None,
        notify: bool = True,
    ) -> None:
        missing = [name for name in _PORT if not callable(getattr(bridge, name, None))]
        if missing:
            raise TypeError(
                f"Outbox needs the asignals.bridge.Bridge its events go out through, got "
                f"{bridge!r} (no {', '.join(missing)}): "
                "Outbox(Bridge(RedisStreams(url), stream=..., signals=[...]), metadata=...)"
            )
        if metadata is not None and not isinstance(metadata, MetaData):
            raise TypeError(f"metadata must be a sqlalchemy MetaData, got {metadata!r}")
        if not isinstance(table, str) or not table:
            raise ValueError(f"table must be a non-empty table name, got {table!r}")
        self.bridge = bridge
        """The :class:`~asignals.bridge.Bridge` this outbox writes for.

        Its signals decide which sends get a row, its codec encodes them, and relays publish
        through it: start it (``async with bridge``) before :meth:`relay`.
        """
        self.metadata = metadata if metadata is not None else MetaData()
        """The ``MetaData`` holding :attr:`table`: the ``metadata=`` passed, else a private one.

        Pass your models' ``MetaData`` so that ``create_all()`` and Alembic's autogenerate see
        the outbox table with the rest of the schema.
        """
        key = f"{schema}.{table}" if schema else table
        existing = self.metadata.tables.get(key)
        self.table: Table = (
            existing if existing is not None else _define(self.metadata, table, schema)
        )
        """The outbox ``Table`` (in :attr:`metadata`): one row per event waiting for a relay.

        Committed rows are deleted once the broker confirmed them, so counting its rows shows
        the backlog (events committed and not yet published).
        """
        self.channel = table[:63]
        """The PostgreSQL ``NOTIFY`` channel that wakes relays at COMMIT.

        The table name, cut to PostgreSQL's 63-character identifier limit. Only used when
        :attr:`notify` is on.
        """
        self.notify = bool(notify)
        """Whether a transaction that writes rows sends ``NOTIFY`` (PostgreSQL only).

        With it, relays wake at COMMIT; it costs the COMMIT about as much as the rows' INSERT.
        Without it, relays find rows at their next poll (``poll_interval``).
        """
        self.engine: AsyncEngine | None = None
        """The engine :meth:`relay` uses when given none, or ``None`` until one is known.

        Set by :meth:`create`, and by ``install(target, outbox=outbox)`` when ``target`` is an
        ``AsyncEngine``, an ``AsyncSession`` or an ``async_sessionmaker`` bound to one.
        """

    def __repr__(self) -> str:
        return f"<Outbox {self.table.fullname!r} via {self.bridge!r}>"

    def carries(self, signal: AsyncSignal) -> bool:
        """Whether sends of ``signal`` get a cross-process copy through this outbox."""
        return bool(self.bridge.carries(signal))

    async def create(self, engine: AsyncEngine) -> None:
        """Create the table if it is missing (or let your migrations do it: it is in MetaData).

        Also makes ``engine`` the default of :meth:`relay`.
        """
        if not isinstance(engine, AsyncEngine):
            raise TypeError(f"create() takes an AsyncEngine, got {engine!r}")
        async with engine.begin() as conn:
            await conn.run_sync(self.table.create, checkfirst=True)
        self.engine = engine

    def relay(
        self,
        engine: AsyncEngine | None = None,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        listen: bool = True,
        backoff: tuple[float, float] = (0.05, 5.0),
    ) -> Relay:
        """An async context manager that publishes committed rows until it exits.

        ``async with bridge, outbox.relay(engine):`` (the bridge must be running). Rows go out
        in commit order, a transaction's rows in the order they were written, and are deleted
        once the broker confirmed them. On PostgreSQL several relays (processes) share the
        table: each locks what it publishes (``FOR UPDATE SKIP LOCKED``), and ``LISTEN``/
        ``NOTIFY`` wakes them at COMMIT, with a poll every ``poll_interval`` seconds as the
        fallback. On SQLite the relay polls; run one per database. While the broker is away
        rows stay in the table and the relay retries with ``backoff`` (first, max seconds).
        """
        from ._relay import Relay

        engine = engine if engine is not None else self.engine
        if engine is None:
            raise ValueError(
                "outbox.relay() needs the AsyncEngine of the outbox's database: pass it as "
                "outbox.relay(engine) (or call `await outbox.create(engine)` first)"
            )
        if not isinstance(engine, AsyncEngine):
            raise TypeError(f"relay() takes an AsyncEngine, got {engine!r}")
        return Relay(
            self,
            engine,
            batch_size=batch_size,
            poll_interval=poll_interval,
            listen=listen,
            backoff=backoff,
        )

    async def send(
        self, session: AsyncSession | Session, signal: AsyncSignal, sender: Any, **kwargs: Any
    ) -> list[tuple[Any, Any]]:
        """Send ``signal`` locally and write its remote copy in ``session``'s transaction.

        Other processes get the event once, and only if, that transaction commits. For a
        domain event that belongs to the data being written (``order_placed`` with the
        order). Returns the local send's results. Raises before anything runs when the signal
        is not carried by the bridge, cannot be encoded, or the session has no transaction.
        """
        if not isinstance(signal, AsyncSignal):
            raise TypeError(f"outbox.send() takes an AsyncSignal, got {signal!r}")
        if not self.carries(signal):
            raise ValueError(
                f"{signal!r} is not carried by the outbox's bridge: attach it "
                f"(Bridge(..., signals=[...]) or bridge.attach(signal)), or use "
                f"`await signal.send(...)` for an event that stays in this process"
            )
        sync = session.sync_session if isinstance(session, AsyncSession) else session
        if not isinstance(sync, Session):
            raise TypeError(f"outbox.send() takes an AsyncSession or Session, got {session!r}")
        if not sync.in_transaction():
            raise RuntimeError(
                "outbox.send() writes the event in the session's transaction, but the session "
                "has none: call it inside `async with session.begin():` or after the session's "
                "first query or add(), before `await session.commit()`"
            )
        counter = _counter(sync)
        rows = self._rows(counter, [(signal, sender, kwargs)])  # may raise: nothing ran yet
        if isinstance(session, AsyncSession):
            await session.run_sync(lambda s: self._insert(s.connection(), rows, counter))
        else:
            self._insert(sync.connection(), rows, counter)
        result: list[tuple[Any, Any]] = await send_unpublished(signal, sender, kwargs)
        return result

    # -- writing (from the flush hooks) ----------------------------------------------------

    def _write_flush(self, session: Session, sends: Iterable[Send]) -> None:
        """Write the carried sends among ``sends`` (a flush's ``post_*``) in its transaction."""
        carried = [send for send in sends if self.bridge.carries(send[0])]
        if carried:
            self._write(session, carried)

    def _write(self, session: Session, sends: Iterable[Send]) -> None:
        """Encode ``sends`` and insert their rows in ``session``'s transaction (sync context)."""
        counter = _counter(session)
        rows = self._rows(counter, sends)
        self._insert(session.connection(), rows, counter)

    def _rows(self, counter: list[Any], sends: Iterable[Send]) -> list[dict[str, Any]]:
        """Encode each send now: an error here fails the flush, not the relay later."""
        codec = getattr(self.bridge, "codec", None)
        now = time.time()
        rows: list[dict[str, Any]] = []
        for signal, sender, kwargs in sends:
            wire = _wire.wire_kwargs(signal, kwargs)
            if codec is not None:
                _wire.register_instances(codec, wire)
            encoded = self.bridge.encode(signal, sender, wire)
            counter[1] += 1
            rows.append(
                {
                    "txn": counter[0],
                    "seq": counter[1],
                    "event_id": encoded.id,
                    "signal": str(signal.name)[:200],
                    "data": encoded.data,
                    "created_at": now,
                }
            )
        return rows

    def _insert(self, conn: Connection, rows: list[dict[str, Any]], counter: list[Any]) -> None:
        try:
            conn.execute(self.table.insert(), rows)
            if self.notify and not counter[2] and conn.dialect.name == "postgresql":
                # Delivered at COMMIT (dropped on ROLLBACK), once per transaction: it wakes the
                # idle relays. (Measured: cheaper as its own statement than in the INSERT's.)
                conn.execute(select(func.pg_notify(self.channel, "")))
                counter[2] = True
        except DBAPIError as exc:
            if _is_missing_table(exc, self.table.name):
                raise RuntimeError(self._missing_table()) from exc
            raise

    def _missing_table(self) -> str:
        return (
            f"the outbox table {self.table.fullname!r} does not exist in this database: "
            f"create it with `await outbox.create(engine)` or with your migrations (it is in "
            f"the MetaData passed to Outbox, so Alembic autogenerate sees it)"
        )


def _define(metadata: MetaData, name: str, schema: str | None) -> Table:
    return Table(
        name,
        metadata,
        # The id orders the relay's work: rows of one transaction in write order, and (as the
        # relay only sees committed rows) transactions roughly in commit order.
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("txn", String(32), nullable=False),
        Column("seq", Integer, nullable=False),
        Column("event_id", String(64), nullable=False),
        Column("signal", String(200), nullable=False),
        Column("data", LargeBinary, nullable=False),
        Column("created_at", Float, nullable=False),
        schema=schema,
        comment="asignals outbox: events of committed transactions not yet confirmed by the broker",
    )


def _counter(session: Session) -> list[Any]:
    """``[name, last seq, notified]`` of the session's root transaction.

    The name and ``seq`` let relays keep a transaction's rows in order; one NOTIFY is enough.

    A row with ``seq`` 0 is its transaction's first: a relay that has it needs not ask whether
    another relay holds earlier rows of that transaction.
    """
    transaction = session.get_transaction()
    if transaction is None:  # pragma: no cover - callers checked or are inside a flush
        return [uuid.uuid4().hex, -1, False]
    counter = _tokens.get(transaction)
    if counter is None:
        counter = _tokens[transaction] = [uuid.uuid4().hex, -1, False]
    return counter


def _is_missing_table(exc: DBAPIError, name: str) -> bool:
    text = str(exc.orig).lower()
    return name.lower() in text and ("no such table" in text or "does not exist" in text)
