"""The relay: moves committed outbox rows to the broker and deletes them once confirmed.

One pass, in one database transaction: lock up to ``batch_size`` rows in id order (``FOR
UPDATE SKIP LOCKED`` on PostgreSQL, so other relays take other rows), publish them through the
bridge (all in flight at once, confirmed by the broker), delete the confirmed ones, COMMIT. A
relay killed mid-pass deletes nothing: its rows are published again by the next relay, under the
same envelope ids (at least once). Per transaction the order holds across relays: a relay that
locked some rows of a transaction whose earlier rows another relay holds leaves them for later.

On PostgreSQL a relay works on up to three batches at once, each in its own transaction: it
locks the next batch while the previous one is being published, and deletes and commits a
confirmed batch while the next is published. A batch is published only once the one before it
was confirmed, and not at all when that one failed, so rows still go out in id order. An event
committed while a pass was publishing, deleting or committing used to wait for all of it
before its own pass could start (the latency tail). Locked rows stay locked until their
batch's COMMIT, so no row is published twice at once, and rows are deleted only once confirmed.

A row the bridge refuses as not being a valid envelope (hand-edited, or written by a version of
the application that no longer decodes) is dead-lettered with the reason and deleted: it never
blocks the rows behind it. A broker outage fails the publishes; the rows stay, the relay backs
off and retries, and the transaction's later rows are kept too (so they follow, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, all_, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ...bridge import DecodeError
from ._outbox import _is_missing_table

if TYPE_CHECKING:
    from ._outbox import Outbox

__all__ = ["Relay"]

logger = logging.getLogger("asignals.outbox")

_IDS = ARRAY(BigInteger)  # PostgreSQL: ids as one array parameter


class Relay:
    """What :meth:`Outbox.relay` returns: ``async with`` it to publish until the block exits.

    ``published`` and ``dead_lettered`` count this relay's rows since it started.
    """

    def __init__(
        self,
        outbox: Outbox,
        engine: AsyncEngine,
        *,
        batch_size: int,
        poll_interval: float,
        listen: bool,
        backoff: tuple[float, float],
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        first, most = backoff
        if not 0 < first <= most:
            raise ValueError("backoff must be (first, max) seconds with 0 < first <= max")
        self.outbox = outbox
        """The :class:`Outbox` whose table this relay publishes from."""
        self.engine = engine
        """The engine this relay reads, locks and deletes the outbox rows through."""
        self.batch_size = batch_size
        """The most rows one pass locks and publishes; a full batch starts the next at once."""
        self.poll_interval = poll_interval
        """Seconds between looks at the table when no ``NOTIFY`` wakes the relay first."""
        self.published = 0
        """Rows this relay published (broker-confirmed, then deleted) since it was created.

        Read it in a health check or a test: it grows while the broker takes the events.
        """
        self.dead_lettered = 0
        """Rows this relay dead-lettered and deleted since it was created (undecodable ones).

        Anything above zero is a row no consumer could read: the bridge's dead letters hold
        it with the reason.
        """
        self._listen = listen and engine.dialect.name == "postgresql"
        self._backoff = (first, most)
        self._locking = engine.dialect.name == "postgresql"
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # The batches handed on (publishing, then deleting and committing), oldest first;
        # the outcome of the last one's publish; the ids of theirs that went out (or will if
        # the publish succeeds): a later batch needs not wait for them to be deleted.
        self._batches: list[asyncio.Task[None]] = []
        self._published: asyncio.Future[BaseException | None] | None = None
        self._shipped: set[int] = set()
        self._listener: AsyncConnection | None = None
        self._listen_failing = False
        self._discarding: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<Relay of {self.outbox!r}>"

    @property
    def listening(self) -> bool:
        """Whether this relay is woken by PostgreSQL's ``LISTEN``/``NOTIFY`` (else it polls)."""
        return self._listen

    async def __aenter__(self) -> Relay:
        if self._task is not None:
            raise RuntimeError("this relay is already running; call outbox.relay() again")
        if getattr(self.outbox.bridge, "running", True) is False:
            raise RuntimeError(
                "the outbox's bridge is not running: start it first, "
                "`async with bridge, outbox.relay(engine):`"
            )
        await self._check_table()
        self._stopping = False
        if self._listen:
            await self._start_listening()
        self._task = asyncio.create_task(self._run(), name=f"asignals outbox relay {self.outbox}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Finish the pass under way (rows in flight get their confirmation), then stop."""
        task, self._task = self._task, None
        self._stopping = True
        self._wake.set()
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=30.0)
            if not done:  # a pass stuck past any sane publish timeout: its rows stay
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        batches, self._batches = self._batches, []
        if batches:  # rows being published, or deleted once confirmed
            _, pending = await asyncio.wait(batches, timeout=30.0)
            for batch in pending:  # its rows stay, and are published again
                batch.cancel()
            await asyncio.gather(*batches, return_exceptions=True)
        published, self._published = self._published, None  # a restart starts afresh
        error = published.result() if published is not None and published.done() else None
        if error is not None:
            logger.warning("outbox relay: stopped with rows not confirmed (%s); they stay", error)
        await self._stop_listening()

    def wake(self) -> None:
        """Look at the table now instead of at the next poll."""
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        delay, failing = self._backoff[0], False
        while not self._stopping:
            self._wake.clear()  # a NOTIFY during the pass sets it again: no wake-up is lost
            try:
                found = await self._pass()
            except Exception as exc:
                if not failing:
                    logger.warning("outbox relay: %s: %s; retrying", type(exc).__name__, exc)
                failing = True
                await self._sleep(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            if failing:
                logger.info("outbox relay: publishing again")
            delay, failing = self._backoff[0], False
            if found >= self.batch_size:
                continue  # there is more
            if self._listen and self._listener is None:
                await self._start_listening()
            await self._sleep(self.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _pass(self) -> int:
        """Lock one batch and hand it on to be published; return how many rows it found.

        Raises the error of the previous batch's publish (its rows stay for a retry).
        """
        table = self.outbox.table
        query = select(table.c.id, table.c.txn, table.c.data, table.c.seq).order_by(table.c.id)
        query = query.limit(self.batch_size)
        if self._locking:
            query = query.with_for_update(skip_locked=True)
        conn = await self.engine.connect()
        try:
            await conn.begin()
            rows = [tuple(row) for row in (await conn.execute(query)).all()]
            ready = await self._in_order(conn, rows) if self._locking and rows else rows
            if rows:
                await self._previous()  # its rows go out first
        except BaseException:
            await _close_quietly(conn)  # without COMMIT: the rows stay, unlocked
            raise
        if not rows:
            await conn.close()
            return 0
        published: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._shipped.update(row[0] for row in ready)
        batch = asyncio.create_task(self._ship(conn, ready, published))
        self._batches.append(batch)
        batch.add_done_callback(self._batches.remove)
        self._published = published
        if not self._locking:  # nothing keeps another pass off these rows: one at a time
            await asyncio.wait({batch})
            await self._previous()
        return len(rows)

    async def _previous(self) -> None:
        """Wait until the last batch handed on is confirmed; raise its error. Then wait until
        at most one batch is left deleting and committing, beside the one to hand on."""
        published, self._published = self._published, None
        if published is not None:
            await asyncio.wait({published})
            error = published.result()
            if error is not None:
                raise error
        while len(self._batches) >= 2:
            await asyncio.wait({self._batches[0]})

    async def _ship(
        self,
        conn: AsyncConnection,
        rows: list[Any],
        published: asyncio.Future[BaseException | None],
    ) -> None:
        """Publish a locked batch, then delete the confirmed rows and COMMIT."""
        error: BaseException | None = RuntimeError("the relay stopped before the broker confirmed")
        done: list[int] = []
        try:
            done, error = await self._publish(rows)
            self._shipped.difference_update(row[0] for row in rows)
            self._shipped.update(done if error is None else ())
            if error is None:
                published.set_result(None)  # the next batch may go out now
            if done:
                await conn.execute(self._delete(), {"ids": done})
            await conn.commit()
        except Exception as exc:
            if error is None:  # they were confirmed: published again, under the same ids
                self._wake.set()
                logger.warning(
                    "outbox relay: deleting %d published row(s) failed (%s: %s); they will "
                    "be published again",
                    len(done),
                    type(exc).__name__,
                    exc,
                )
            else:
                error = exc
        finally:
            self._shipped.difference_update(row[0] for row in rows)
            await _close_quietly(conn)
            if not published.done():
                # Only now: a retry must find this batch's unconfirmed rows unlocked.
                published.set_result(error)
                self._wake.set()

    def _delete(self) -> Any:
        table = self.outbox.table
        if self._locking:
            # One statement for any number of ids (an IN list is a new statement to prepare
            # for each count).
            return table.delete().where(table.c.id == any_(bindparam("ids", type_=_IDS)))
        return table.delete().where(table.c.id.in_(bindparam("ids", expanding=True)))

    async def _in_order(self, conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> list[Any]:
        """Leave out the rows of transactions whose earlier rows another relay holds.

        The rows of this relay's earlier batches do not count: they went out (or this batch
        will not, as it waits for them to be confirmed).
        """
        table = self.outbox.table
        first: dict[str, int] = {}
        starts: set[str] = set()
        for row_id, txn, _, seq in rows:
            if txn not in first:
                first[txn] = row_id
                if seq == 0:
                    starts.add(txn)  # the transaction's first row: nothing comes before it
        if len(starts) == len(first):
            return rows
        query = (
            select(table.c.txn, func.min(table.c.id))
            .where(table.c.txn.in_([txn for txn in first if txn not in starts]))
            .group_by(table.c.txn)
        )
        if self._shipped:
            shipped = bindparam("shipped", list(self._shipped), _IDS)
            query = query.where(table.c.id != all_(shipped))
        held = {txn for txn, lowest in (await conn.execute(query)).all() if lowest < first[txn]}
        return [row for row in rows if row[1] not in held]

    async def _publish(self, rows: list[Any]) -> tuple[list[int], BaseException | None]:
        """Publish ``rows`` (all in flight at once, in order); the ids to delete, an error."""
        bridge = self.outbox.bridge
        # Tasks start in creation order, so the bridge queues the rows in id order.
        futures = [asyncio.ensure_future(bridge.publish_encoded(bytes(row[2]))) for row in rows]
        results = await asyncio.gather(*futures, return_exceptions=True)
        done: list[int] = []
        error: BaseException | None = None
        broken: set[str] = set()  # transactions with a row not confirmed: keep the rest too
        for (row_id, txn, data, _), result in zip(rows, results, strict=True):
            if txn in broken:
                continue
            if result is None:
                done.append(row_id)
                self.published += 1
                continue
            if isinstance(result, DecodeError):
                reason = f"outbox row {row_id} cannot be published: {result}"
                logger.error("outbox relay: dead-lettering row %s: %s", row_id, result)
                try:
                    await bridge.dead_letter_encoded(bytes(data), reason)
                except Exception as exc:
                    result = exc
                else:
                    done.append(row_id)
                    self.dead_lettered += 1
                    continue
            if not isinstance(result, Exception):
                raise result  # cancellation and the like
            broken.add(txn)
            error = error or result
        return done, error

    # -- checks and LISTEN -------------------------------------------------------------------

    async def _check_table(self) -> None:
        table = self.outbox.table
        try:
            async with self.engine.connect() as conn:
                await conn.execute(select(table.c.id).limit(1))
        except DBAPIError as exc:
            if _is_missing_table(exc, table.name):
                raise RuntimeError(self.outbox._missing_table()) from exc
            raise

    async def _start_listening(self) -> None:
        conn: AsyncConnection | None = None
        try:
            conn = await self.engine.connect()
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            add_listener = getattr(driver, "add_listener", None)
            if add_listener is None:
                await conn.close()
                self._listen = False
                logger.info("outbox relay: this driver cannot LISTEN; polling")
                return
            await add_listener(self.outbox.channel, self._notified)
            driver.add_termination_listener(self._lost_listener)
        except Exception as exc:
            if conn is not None:
                await _discard_listener(conn)
            if not self._listen_failing:  # once per outage, not at every poll
                logger.warning("outbox relay: LISTEN failed (%s); polling until it works", exc)
            self._listen_failing = True
            return
        if self._listen_failing:
            logger.info("outbox relay: listening again")
        self._listen_failing = False
        self._listener = conn

    def _notified(self, *args: object) -> None:
        self._wake.set()

    def _lost_listener(self, *args: object) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            task = asyncio.get_running_loop().create_task(_discard_listener(listener))
            self._discarding.add(task)  # a task nobody references may be collected mid-way
            task.add_done_callback(self._discarding.discard)
        self._wake.set()

    async def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await _discard_listener(listener)


async def _discard_listener(conn: AsyncConnection) -> None:
    """Close the LISTEN connection for good: never back into the application's pool.

    A connection the server dropped would fail the next session that checked it out, and a
    live one would keep delivering notifications to a relay that has stopped.
    """
    try:
        await conn.invalidate()
    except Exception:  # the connection is gone already
        logger.debug("outbox relay: discarding the LISTEN connection failed", exc_info=True)


async def _close_quietly(conn: AsyncConnection) -> None:
    """Hand a batch's connection back to the pool, whatever state its failure left it in."""
    try:
        await conn.close()
    except Exception:  # the connection is gone already
        logger.debug("outbox relay: closing a connection failed", exc_info=True)
