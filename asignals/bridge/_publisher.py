"""The outgoing queue: batches of envelopes written by one task, every send bounded in time.

Why a queue and a flusher task instead of one write per send: concurrent sends are written in
one batch (one round trip for many events), which is what makes tens of thousands of events
per second possible; a lone send still costs one round trip.

Why a timer beside the flusher: ``publish_timeout`` is a promise to the sender, whatever the
flusher is doing (sleeping out a backoff, or stuck in a write to a server that went silent).
One timer, armed for the oldest waiting event, fails every event whose deadline passed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Sequence

from ._backoff import Backoff
from ._transport import Transport, Unavailable

__all__ = ["PublishError", "Publisher"]

logger = logging.getLogger("asignals.bridge")


class PublishError(RuntimeError):
    """The broker did not confirm an event: unreachable in time, refused, or no bridge running.

    The broker could not be reached before ``publish_timeout`` ran out, it refused the event,
    or the bridge is not running (or stopped before the event was stored). A confirmed send
    (``confirm=True``) of a bridged signal gets it after its local receivers ran: in the
    send's ``ExceptionGroup`` (``except* PublishError``), or in its slot of ``send_robust``'s
    results. ``publish_encoded`` (an outbox relay's publish) raises it too. ``start()`` does
    not: a bridge started while its broker is away runs, and its sends fail with this error
    until the broker answers.
    """


class _Pending:
    __slots__ = ("data", "deadline", "future")

    def __init__(self, data: bytes, deadline: float, future: asyncio.Future[None] | None) -> None:
        self.data = data
        self.deadline = deadline
        self.future = future


class Publisher:
    """Owns the outgoing queue and the task that flushes it to the transport."""

    def __init__(
        self,
        transport: Transport,
        stream: str,
        *,
        batch_size: int,
        timeout: float,
        max_pending: int,
        backoff: tuple[float, float],
    ) -> None:
        self._transport = transport
        self._stream = stream
        self._batch_size = batch_size
        self._timeout = timeout
        self._max_pending = max_pending
        self._backoff = Backoff(*backoff)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._inflight: list[_Pending] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_error: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(
            self._run(), name=f"asignals.bridge publish {self._stream}"
        )

    # -- queueing -------------------------------------------------------------------------

    def put_nowait(self, data: bytes, *, confirm: bool) -> Awaitable[None] | None:
        """Queue one envelope without suspending. Returns what the caller must await: with
        ``confirm``, a future that resolves once the broker stored it; when the queue is full,
        a coroutine that waits for room first; otherwise ``None``."""
        if self._closing or self._task is None:
            self._check_running()  # raises (the test inline spares a call on every send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        if len(self._queue) + len(self._inflight) >= self._max_pending:
            return self._put_when_room(data, deadline, confirm)
        return self._append(loop, data, deadline, confirm)

    async def put(self, data: bytes, *, confirm: bool = True) -> None:
        """Queue one envelope and, with ``confirm``, wait until the broker stored it."""
        waiter = self.put_nowait(data, confirm=confirm)
        if waiter is not None:
            await waiter

    def _append(
        self, loop: asyncio.AbstractEventLoop, data: bytes, deadline: float, confirm: bool
    ) -> asyncio.Future[None] | None:
        future: asyncio.Future[None] | None = loop.create_future() if confirm else None
        self._queue.append(_Pending(data, deadline, future))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)
        self._idle.clear()
        self._wake.set()
        return future

    async def _put_when_room(self, data: bytes, deadline: float, confirm: bool) -> None:
        loop = asyncio.get_running_loop()
        while len(self._queue) + len(self._inflight) >= self._max_pending:
            self._room.clear()
            remaining = deadline - loop.time()
            try:
                await asyncio.wait_for(self._room.wait(), max(0.0, remaining))
            except TimeoutError:
                raise PublishError(
                    f"{self._max_pending} events were already waiting for stream "
                    f"{self._stream!r} for {self._timeout}s (max_pending){self._cause()}"
                ) from None
            self._check_running()
        future = self._append(loop, data, deadline, confirm)
        if future is not None:
            await future

    def _check_running(self) -> None:
        if self._closing or self._task is None:
            raise PublishError("the bridge is not running; start it before sending")

    def _cause(self) -> str:
        return f": {self._last_error}" if self._last_error is not None else ""

    async def flush(self) -> None:
        """Wait until every queued envelope is stored (or was given up on)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop accepting events, drain the queue (bounded by the publish timeout), stop."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        # Wait for the queue to drain, not for the flusher: it may be sleeping out a backoff
        # with nothing left to write (every event expired).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self._timeout + 0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._fail(self._inflight, PublishError("the bridge stopped before this event was stored"))
        self._inflight = []
        self._fail(self._queue, PublishError("the bridge stopped before this event was stored"))
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._idle.set()
        self._room.set()

    # -- the flusher ----------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            count = min(len(self._queue), self._batch_size)
            batch = self._inflight = [self._queue.popleft() for _ in range(count)]
            # A write may hang on a server that stopped answering; no sender waits longer
            # than its deadline anyway (the timer fails it), so neither does the write.
            limit = max(0.05, batch[-1].deadline - loop.time())
            try:
                async with asyncio.timeout(limit):
                    await self._transport.publish([p.data for p in batch])
            except (Unavailable, TimeoutError) as exc:
                if not self._backoff.failing:
                    logger.warning("cannot publish to %r, retrying: %r", self._stream, exc)
                self._last_error = exc
                now = loop.time()
                # Still-waiting events go back to the front, in order, for the next try.
                self._queue.extendleft(reversed([p for p in batch if p.deadline > now]))
                self._inflight = []
                self._expire()
                await self._backoff.sleep()
                continue
            except Exception as exc:
                logger.error("the broker refused events for %r: %r", self._stream, exc)
                self._inflight = []
                self._fail(batch, PublishError(f"the broker refused the event: {exc!r}"))
                self._room.set()
                continue
            self._inflight = []
            if self._backoff.failing:
                logger.info("publishing to %r again", self._stream)
                self._backoff.reset()
                self._last_error = None
            for pending in batch:
                if pending.future is not None and not pending.future.done():
                    pending.future.set_result(None)
            self._room.set()

    def _expire(self) -> None:
        """Fail every event whose deadline passed; re-arm for the oldest one left."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired = [p for p in self._inflight if p.deadline <= now]
        while self._queue and self._queue[0].deadline <= now:
            expired.append(self._queue.popleft())
        if expired:
            dropped = sum(1 for p in expired if p.future is None)
            cause = self._cause()
            self._fail(
                expired,
                PublishError(
                    f"could not publish to {self._stream!r} within {self._timeout}s{cause}"
                ),
            )
            if dropped:
                logger.error(
                    "dropped %d unconfirmed event(s) for %r after %ss%s",
                    dropped,
                    self._stream,
                    self._timeout,
                    cause,
                )
            self._room.set()
        oldest = [p.deadline for p in itertools.islice(self._queue, 1)]
        oldest += [p.deadline for p in self._inflight if p.deadline > now]
        if oldest:
            self._timer = loop.call_at(min(oldest), self._expire)
        elif not self._queue and not self._inflight:
            self._idle.set()

    @staticmethod
    def _fail(pendings: Sequence[_Pending] | collections.deque[_Pending], error: Exception) -> None:
        for pending in pendings:
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(error)
