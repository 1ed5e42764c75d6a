"""Pipelined appends to a Redis stream, retried with backoff while Redis is away.

Why a queue and a flusher task instead of one ``XADD`` per send: concurrent sends are written
in one pipeline (one round trip for many events), which is what makes tens of thousands of
events per second possible; a lone send still costs one round trip.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import random
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["PublishError", "TRANSIENT_ERRORS", "Backoff", "Publisher"]

logger = logging.getLogger("asignals.redis")

#: Errors after which retrying the same command later can succeed (Redis restarting, network).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)

ENVELOPE_FIELD = b"e"

_APPEND_MANY = """
local maxlen = ARGV[1]
for i = 2, #ARGV do
  if maxlen == '' then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'e', ARGV[i])
  end
end
return #ARGV - 1
"""


class PublishError(RuntimeError):
    """An event could not be appended to the stream before ``publish_timeout`` ran out."""


class Backoff:
    """Exponential backoff with full jitter, so restarted workers do not reconnect in lockstep."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._maximum = maximum
        self._attempt = 0

    @property
    def failing(self) -> bool:
        return self._attempt > 0

    def reset(self) -> None:
        self._attempt = 0

    async def sleep(self) -> None:
        delay = min(self._maximum, self._initial * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 30)
        await asyncio.sleep(random.uniform(delay / 2, delay))


class _Pending:
    __slots__ = ("data", "deadline", "future")

    def __init__(self, data: bytes, deadline: float, future: asyncio.Future[None] | None) -> None:
        self.data = data
        self.deadline = deadline
        self.future = future


class Publisher:
    """Owns the outgoing queue and the task that flushes it to ``stream``."""

    def __init__(
        self,
        client: Redis,
        stream: str,
        *,
        maxlen: int | None,
        batch_size: int,
        timeout: float,
        max_pending: int,
        backoff: tuple[float, float],
    ) -> None:
        self._client = client
        self._stream = stream
        self._maxlen = maxlen
        self._batch_size = batch_size
        self._timeout = timeout
        self._max_pending = max_pending
        self._backoff = Backoff(*backoff)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # EVALSHA, falling back to EVAL when Redis lost its script cache (e.g. after a restart).
        self._append = client.register_script(_APPEND_MANY)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"asignals.redis publish {self._stream}")

    async def put(self, data: bytes, *, confirm: bool = True) -> None:
        """Queue one envelope, waiting while the queue is full; with ``confirm``, return only
        once Redis stored it."""
        self._check_running()
        while len(self._queue) >= self._max_pending:
            self._room.clear()
            await self._room.wait()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] | None = loop.create_future() if confirm else None
        self._queue.append(_Pending(data, loop.time() + self._timeout, future))
        self._idle.clear()
        self._wake.set()
        if future is not None:
            await future

    def put_nowait(self, data: bytes, *, confirm: bool) -> Awaitable[None] | None:
        """Queue one envelope without suspending. Returns what the caller must await: with
        ``confirm``, a future that resolves once Redis stored it; when the queue is full, a
        coroutine that waits for room first; otherwise ``None``."""
        self._check_running()
        if len(self._queue) >= self._max_pending:
            return self.put(data, confirm=confirm)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] | None = loop.create_future() if confirm else None
        self._queue.append(_Pending(data, loop.time() + self._timeout, future))
        self._idle.clear()
        self._wake.set()
        return future

    def _check_running(self) -> None:
        if self._closing or self._task is None:
            raise PublishError("the Redis bridge is not running; start it before sending")

    async def flush(self) -> None:
        """Wait until every queued envelope is in Redis (or was given up on)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop accepting events, drain the queue (bounded by the publish timeout), stop."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self._timeout + 1.0)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._fail_all(PublishError("the Redis bridge stopped before this event was written"))

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(itertools.islice(self._queue, self._batch_size))
            try:
                await self._write(batch)
            except TRANSIENT_ERRORS as exc:
                if not self._backoff.failing:
                    logger.warning(
                        "Redis unavailable for stream %r, retrying: %s", self._stream, exc
                    )
                self._expire(exc)
                await self._backoff.sleep()
                continue
            except RedisError as exc:
                # Not retryable (e.g. the key holds another type): tell the senders and drop.
                logger.error("cannot append to Redis stream %r: %s", self._stream, exc)
                self._settle(len(batch), exc)
                continue
            if self._backoff.failing:
                logger.info("Redis reachable again for stream %r", self._stream)
                self._backoff.reset()
            self._settle(len(batch), None)

    async def _write(self, batch: list[_Pending]) -> None:
        if len(batch) == 1:
            fields: Any = {ENVELOPE_FIELD: batch[0].data}
            await self._client.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)
            return
        # One script call appends the whole batch: one command to pack and one reply to parse
        # instead of one per event (redis-py's pure-Python protocol code is the bottleneck),
        # and Redis applies the batch atomically, so a retry after a lost reply is the only way
        # an event can be appended twice.
        maxlen = b"" if self._maxlen is None else str(self._maxlen).encode()
        await self._append([self._stream], [maxlen, *(p.data for p in batch)])

    def _settle(self, count: int, error: BaseException | None) -> None:
        for _ in range(count):
            pending = self._queue.popleft()
            if pending.future is not None and not pending.future.done():
                if error is None:
                    pending.future.set_result(None)
                else:
                    pending.future.set_exception(error)
        if len(self._queue) < self._max_pending:
            self._room.set()

    def _expire(self, cause: BaseException) -> None:
        """Give up on envelopes whose publish timeout passed while Redis was away."""
        now = asyncio.get_running_loop().time()
        dropped = 0
        while self._queue and self._queue[0].deadline <= now:
            pending = self._queue.popleft()
            error = PublishError(
                f"could not append to Redis stream {self._stream!r} within "
                f"{self._timeout}s: {cause}"
            )
            if pending.future is None:
                dropped += 1
            elif not pending.future.done():
                pending.future.set_exception(error)
        if dropped:
            logger.error(
                "dropped %d unconfirmed event(s) for stream %r after %ss: %s",
                dropped,
                self._stream,
                self._timeout,
                cause,
            )
        if len(self._queue) < self._max_pending:
            self._room.set()

    def _fail_all(self, error: BaseException) -> None:
        while self._queue:
            pending = self._queue.popleft()
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(error)
            elif pending.future is None:
                logger.error("dropped an unconfirmed event for %r: %s", self._stream, error)
        self._idle.set()
        self._room.set()
