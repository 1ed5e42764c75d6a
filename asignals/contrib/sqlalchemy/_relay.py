"""The relay: moves committed outbox rows to the broker and deletes them once confirmed.

One pass, in one database transaction: lock up to ``batch_size`` rows in id order (``FOR
UPDATE SKIP LOCKED`` on PostgreSQL, so other relays take other rows), publish them through the
bridge (all in flight at once, confirmed by the broker), delete the confirmed ones, COMMIT. A
relay killed mid-pass deletes nothing: its rows are published again by the next relay, under the
same envelope ids (at least once). Per transaction the order holds across relays: a relay that
locked some rows of a transaction whose earlier rows another relay holds leaves them for later.

On PostgreSQL the DELETE and COMMIT of a pass whose rows were all confirmed run while the next
pass locks and publishes (at most one such pass settling at a time). They are half of a pass's
round trips, the COMMIT waits for a WAL flush, and an event committed while they ran used to
wait for them. The settling pass keeps its rows locked until its COMMIT, so the next pass skips
them: no row is published twice at once, and rows are still deleted only once confirmed.

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
        self.engine = engine
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.published = 0
        self.dead_lettered = 0
        self._listen = listen and engine.dialect.name == "postgresql"
        self._backoff = (first, most)
        self._locking = engine.dialect.name == "postgresql"
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._settling: asyncio.Task[None] | None = None  # a pass's DELETE and COMMIT
        self._deleting: list[int] = []  # its rows: published, gone once it commits
        self._listener: AsyncConnection | None = None
        self._listen_failing = False

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
        settling, self._settling = self._settling, None
        if settling is not None:  # published rows whose DELETE is under way
            done, _ = await asyncio.wait({settling}, timeout=30.0)
            if not done:  # they stay, and are published again
                settling.cancel()
            await asyncio.gather(settling, return_exceptions=True)
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
        """Publish one batch; return how many rows it found."""
        table = self.outbox.table
        query = select(table.c.id, table.c.txn, table.c.data, table.c.seq).order_by(table.c.id)
        query = query.limit(self.batch_size)
        if self._locking:
            query = query.with_for_update(skip_locked=True)
        conn = await self.engine.connect()
        handed_over = False
        try:
            await conn.begin()
            rows = [tuple(row) for row in (await conn.execute(query)).all()]
            if not rows:
                return 0
            ready = await self._in_order(conn, rows) if self._locking else rows
            done, error = await self._publish(ready)
            if error is None and self._locking:
                # The rows stay locked until this COMMIT, so the next pass may start now.
                await self._settled()  # one pass settling at a time
                self._deleting = done
                self._settling = asyncio.create_task(self._settle(conn, done))
                handed_over = True
            else:
                if done:
                    await conn.execute(self._delete(), {"ids": done})
                await conn.commit()
        finally:
            if not handed_over:
                await conn.close()  # without COMMIT: the rows stay, unlocked
        if error is not None:
            raise error
        return len(rows)

    def _delete(self) -> Any:
        table = self.outbox.table
        if self._locking:
            # One statement for any number of ids (an IN list is a new statement to prepare
            # for each count).
            return table.delete().where(table.c.id == any_(bindparam("ids", type_=_IDS)))
        return table.delete().where(table.c.id.in_(bindparam("ids", expanding=True)))

    async def _settle(self, conn: AsyncConnection, done: list[int]) -> None:
        """Delete the confirmed rows of a pass and COMMIT (while the next pass runs)."""
        try:
            if done:
                await conn.execute(self._delete(), {"ids": done})
            await conn.commit()
        except Exception as exc:
            # They were confirmed: published again later, under the same ids (at least once).
            self._deleting = []
            logger.warning(
                "outbox relay: deleting %d published row(s) failed (%s: %s); they will be "
                "published again",
                len(done),
                type(exc).__name__,
                exc,
            )
        finally:
            await _close_quietly(conn)

    async def _settled(self) -> None:
        """Wait until the previous pass's DELETE and COMMIT are done."""
        settling, self._settling = self._settling, None
        if settling is not None:
            await asyncio.wait({settling})

    async def _in_order(self, conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> list[Any]:
        """Leave out the rows of transactions whose earlier rows another relay holds.

        The rows this relay's settling pass is deleting do not count: they were published.
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
        if self._deleting:
            query = query.where(table.c.id != all_(bindparam("deleting", self._deleting, _IDS)))
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
                await _close_quietly(conn)
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
            asyncio.get_running_loop().create_task(_close_quietly(listener))
        self._wake.set()

    async def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await _close_quietly(listener)


async def _close_quietly(conn: AsyncConnection) -> None:
    try:
        await conn.close()
    except Exception:  # the connection is gone already
        logger.debug("outbox relay: closing the LISTEN connection failed", exc_info=True)
