"""Redis Streams transport: ``Bridge(RedisStreams("redis://127.0.0.1:6379/0"), ...)``.

Broadcast reads with ``XREAD`` from the tail seen at subscribe time; shared mode is a consumer
group (``XREADGROUP``, ``XACK``), with ``XAUTOCLAIM`` taking over the messages of a worker that
went quiet for ``claim_idle`` (a live worker keeps its claims fresh with ``XCLAIM ... JUSTID``,
which restarts the idle clock without counting a delivery). Retries are ``XCLAIM``-ed back by
the worker that failed after the delay, or by any other worker once ``claim_idle`` passed.
Batches are appended atomically by one Lua call. Dead letters go to ``<stream>:dead`` as
stream entries: the original bytes in field ``e`` (so ``XADD <stream> * e <bytes>`` replays
one) beside the provenance fields.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._transport import Delivery, ReadMode, Subscription, Unavailable

__all__ = ["RedisStreams"]

T = TypeVar("T")

#: The stream field holding the envelope.
FIELD = b"e"

_TRANSIENT: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
#: Replies meaning "not now" (a restarting server loading its data, a replica promoted...).
_TRANSIENT_REPLIES = frozenset(
    {"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN"}
)

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


async def _call(call: Awaitable[T]) -> T:
    """Await a redis-py call, turning "try again later" failures into :class:`Unavailable`."""
    try:
        return await call
    except _TRANSIENT as exc:
        raise Unavailable(f"Redis: {exc}") from exc
    except ResponseError as exc:
        if str(exc).split(" ", 1)[0] in _TRANSIENT_REPLIES:
            raise Unavailable(f"Redis: {exc}") from exc
        raise


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_key(entry_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in entry_id.split("-"))


def _payload(fields: Mapping[Any, Any] | None) -> bytes:
    if not fields:
        return b""
    value = fields.get(FIELD)
    if value is None:
        value = fields.get(FIELD.decode())
    if value is None:
        return b""
    return value if isinstance(value, bytes) else str(value).encode()


class RedisStreams:
    """The Redis Streams transport for :class:`~asignals.bridge.Bridge`.

    ``redis`` is a URL (the transport opens a client per ``start()`` and closes it on
    ``stop()``) or a ``redis.asyncio.Redis`` client you own. ``maxlen`` caps the stream
    (``MAXLEN ~``, ``None`` never trims; trimming is by count, so keep it above your largest
    backlog); ``dead_letter_stream`` defaults to ``<stream>:dead``, capped at
    ``dead_letter_maxlen``; ``block`` is how long one read waits for new entries.
    """

    def __init__(
        self,
        redis: str | Redis = "redis://127.0.0.1:6379/0",
        *,
        maxlen: int | None = 100_000,
        dead_letter_stream: str | None = None,
        dead_letter_maxlen: int | None = 10_000,
        block: float = 1.0,
    ) -> None:
        if block <= 0:
            raise ValueError(f"block must be a positive number of seconds, got {block!r}")
        self._url = redis if isinstance(redis, str) else None
        self._client: Redis | None = None if isinstance(redis, str) else redis
        self._maxlen = maxlen
        self._dead_name = dead_letter_stream
        self._dead_maxlen = dead_letter_maxlen
        self._block = block
        self.stream = ""
        """The Redis stream key events go to, set when the bridge opens the transport."""
        self.dead_letter_stream = dead_letter_stream or ""
        """The Redis stream key dead letters go to: read it with ``XRANGE`` to inspect them.

        ``dead_letter_stream=`` if given, else ``<stream>:dead`` (set when the bridge opens the
        transport).
        """
        self._append: Any = None

    def __repr__(self) -> str:
        return f"RedisStreams({self._url or self._client!r})"

    @property
    def client(self) -> Redis:
        """The redis-py client (only while the bridge runs, for a URL)."""
        if self._client is None:
            raise RuntimeError("the Redis transport is not open")
        return self._client

    async def open(self, stream: str) -> None:
        """Create the client (for a URL), bind to ``stream`` and check that Redis answers.

        ``Unavailable`` while it does not; the client connects again on every later command.
        """
        if self._url is not None and self._client is None:
            self._client = Redis.from_url(  # pyright: ignore[reportUnknownMemberType]
                self._url, socket_connect_timeout=5.0, socket_keepalive=True
            )
        self.stream = stream
        self.dead_letter_stream = self._dead_name or f"{stream}:dead"
        # EVALSHA, falling back to EVAL when Redis lost its script cache (after a restart).
        self._append = self.client.register_script(_APPEND_MANY)
        await _call(self.client.ping())  # pyright: ignore[reportUnknownMemberType]

    async def close(self) -> None:
        """Close the client this transport created (a client passed in stays open)."""
        if self._url is not None and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def publish(self, messages: Sequence[bytes]) -> None:
        """``XADD`` each message (one Lua call for a batch), trimming to ``maxlen``."""
        if len(messages) == 1:
            fields: Any = {FIELD: messages[0]}
            await _call(
                self.client.xadd(self.stream, fields, maxlen=self._maxlen, approximate=True)
            )
            return
        # One script call appends the whole batch: one command to pack and one reply to parse
        # instead of one per event (redis-py's pure-Python protocol code is the bottleneck),
        # and Redis applies it atomically, so only a retry after a lost reply can duplicate.
        maxlen = b"" if self._maxlen is None else str(self._maxlen).encode()
        await _call(self._append([self.stream], [maxlen, *messages]))

    async def dead_letter(self, message: bytes, provenance: Mapping[str, str]) -> None:
        """Append to ``<stream>:dead``: the provenance fields and the message in field ``e``."""
        record: dict[Any, Any] = {key.encode(): value for key, value in provenance.items()}
        record[FIELD] = message
        await _call(
            self.client.xadd(
                self.dead_letter_stream, record, maxlen=self._dead_maxlen, approximate=True
            )
        )

    async def subscribe(
        self,
        *,
        mode: ReadMode,
        group: str | None,
        consumer: str,
        claim_idle: float,
        max_attempts: int,
    ) -> Subscription:
        """``XREAD`` from the current tail (broadcast) or a consumer of ``group`` (shared)."""
        if mode == "broadcast":
            tail = await _call(self.client.xrevrange(self.stream, count=1))
            return _Tail(self, _text(tail[0][0]) if tail else "0-0")
        if not group:
            raise ValueError("shared mode needs a group")
        shared = _Group(self, group, consumer, claim_idle)
        await shared.ensure_group()
        return shared

    def _block_ms(self, limit: float | None = None) -> int:
        seconds = self._block if limit is None else min(self._block, limit)
        return max(1, int(seconds * 1000))


class _Broadcast:
    """A broadcast delivery: nothing to settle."""

    __slots__ = ("data", "id")

    attempt = 1

    def __init__(self, entry_id: str, data: bytes) -> None:
        self.id = entry_id
        self.data = data

    async def ack(self) -> None:
        pass

    async def retry(self, delay: float) -> None:
        pass

    async def extend(self) -> None:
        pass

    async def release(self) -> None:
        pass


class _Tail:
    """Broadcast: ``XREAD`` after the last entry id seen (resumed after a reconnect)."""

    def __init__(self, transport: RedisStreams, last_id: str) -> None:
        self._t = transport
        self._last = last_id

    async def fetch(self, count: int) -> Sequence[Delivery]:
        t = self._t
        response: Any = await _call(
            t.client.xread({t.stream: self._last}, count=count, block=t._block_ms())
        )
        out: list[Delivery] = []
        for _stream, entries in response or ():
            for entry_id, fields in entries:
                self._last = _text(entry_id)
                out.append(_Broadcast(self._last, _payload(fields)))
        return out

    async def close(self) -> None:
        pass


class _Entry:
    """A shared-mode delivery: one pending entry of the group."""

    __slots__ = ("_group", "attempt", "data", "id")

    def __init__(self, group: _Group, entry_id: str, data: bytes, attempt: int) -> None:
        self._group = group
        self.id = entry_id
        self.data = data
        self.attempt = attempt

    async def ack(self) -> None:
        g = self._group
        await _call(g.t.client.xack(g.t.stream, g.group, self.id))

    async def retry(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._group.retries.append((loop.time() + delay, delay, self))

    async def extend(self) -> None:
        # JUSTID: restarts the idle clock without counting a delivery.
        g = self._group
        await _call(g.t.client.xclaim(g.t.stream, g.group, g.consumer, 0, [self.id], justid=True))

    async def release(self) -> None:
        # It never ran here: the claim that hands it on must not count a delivery.
        await self.hand_back(self.attempt - 1)

    async def hand_back(self, deliveries: int) -> None:
        """Make the entry claimable by the next ``XAUTOCLAIM`` of any worker (an idle time past
        any ``claim_idle``), which will count delivery ``deliveries + 1``."""
        g = self._group
        await _call(
            g.t.client.xclaim(
                g.t.stream,
                g.group,
                g.consumer,
                0,
                [self.id],
                idle=2**40,
                retrycount=max(0, deliveries),
                justid=True,
            )
        )


class _Group:
    """Shared mode: one consumer of a consumer group."""

    def __init__(
        self, transport: RedisStreams, group: str, consumer: str, claim_idle: float
    ) -> None:
        self.t = transport
        self.group = group
        self.consumer = consumer
        self._claim_idle_ms = max(1, int(claim_idle * 1000))
        # Another worker's released or abandoned entries are looked for this often.
        self._claim_every = min(claim_idle / 2, transport._block)
        self._next_claim = 0.0
        self._own_pending = True  # first what a previous run of this consumer left unacked
        self.retries: list[tuple[float, float, _Entry]] = []

    async def ensure_group(self) -> None:
        try:
            await _call(
                self.t.client.xgroup_create(self.t.stream, self.group, id="$", mkstream=True)
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def fetch(self, count: int) -> Sequence[Delivery]:
        try:
            return await self._fetch(count)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the group (restarted without persistence): recreate it at the tail.
            await self.ensure_group()
            self._own_pending = True
            return []

    async def _fetch(self, count: int) -> Sequence[Delivery]:
        t = self.t
        loop = asyncio.get_running_loop()
        if self._own_pending:
            entries = await self._read("0", count, None)
            if entries:
                return await self._with_attempts(entries)
            self._own_pending = False
        due = await self._due(loop.time(), count)
        if due:
            return due
        if loop.time() >= self._next_claim:
            self._next_claim = loop.time() + self._claim_every
            claimed = await self._claim(count)
            if claimed:
                return claimed
        wait = self._claim_every
        if self.retries:
            wait = min(wait, max(0.001, min(due for due, _, _ in self.retries) - loop.time()))
        entries = await self._read(">", count, t._block_ms(wait))
        return [_Entry(self, i, d, 1) for i, d in entries]

    async def _read(self, start: str, count: int, block: int | None) -> list[tuple[str, bytes]]:
        t = self.t
        response: Any = await _call(
            t.client.xreadgroup(
                self.group, self.consumer, {t.stream: start}, count=count, block=block
            )
        )
        return [(_text(i), _payload(f)) for _s, es in response or () for i, f in es]

    async def _due(self, now: float, count: int) -> list[Delivery]:
        """Claim back the entries whose retry delay is over (unless another worker took one)."""
        ready = [r for r in self.retries if r[0] <= now][:count]
        if not ready:
            return []
        for r in ready:
            self.retries.remove(r)
        out: list[Delivery] = []
        t = self.t
        for _due, delay, entry in ready:
            min_idle = max(0, int(delay * 900))  # a claim by someone else resets the idle time
            got: Any = await _call(
                t.client.xclaim(t.stream, self.group, self.consumer, min_idle, [entry.id])
            )
            for entry_id, fields in got or ():
                if fields is not None:
                    out.append(_Entry(self, _text(entry_id), _payload(fields), entry.attempt + 1))
        return out

    async def _claim(self, count: int) -> list[Delivery]:
        """Take over entries whose worker went quiet for ``claim_idle``."""
        t = self.t
        response: Any = await _call(
            t.client.xautoclaim(
                t.stream, self.group, self.consumer, self._claim_idle_ms, "0-0", count=count
            )
        )
        entries = [(_text(i), _payload(f)) for i, f in response[1] if f is not None]
        return await self._with_attempts(entries) if entries else []

    async def _with_attempts(self, entries: list[tuple[str, bytes]]) -> list[Delivery]:
        """Deliveries with their delivery counts (``XAUTOCLAIM`` does not return them)."""
        t = self.t
        ids = sorted((entry_id for entry_id, _ in entries), key=_id_key)
        rows: Any = await _call(
            t.client.xpending_range(
                t.stream,
                self.group,
                min=ids[0],
                max=ids[-1],
                count=len(ids) + 1000,
                consumername=self.consumer,
            )
        )
        counts = {_text(row["message_id"]): int(row["times_delivered"]) for row in rows}
        return [_Entry(self, i, d, counts.get(i, 1)) for i, d in entries]

    async def close(self) -> None:
        # Entries waiting out a retry delay go back to the group now.
        retries, self.retries = self.retries, []
        for _due, _delay, entry in retries:
            with contextlib.suppress(Exception):  # claimable after claim_idle anyway
                await entry.hand_back(entry.attempt)
