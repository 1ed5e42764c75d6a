"""An in-process bridge transport for tests: ``Bridge(InMemory(), stream=..., ...)``.

Every :class:`InMemory` of a process shares the streams by name, the way every client of one
Redis server does: two bridges on ``"shop:events"`` (one transport each) are two "processes"
of one service. The whole delivery path of a real broker runs, with no server: broadcast to
every bridge on the stream, one worker of a group per event in shared mode, acknowledgements,
retries after the bridge's backoff, redelivery of an event whose worker went quiet for
``claim_idle``, ``max_attempts`` and dead letters, which stay inspectable as
``bridge.dead_letters``. Nothing is serialized beyond what the bridge does itself, so the
codec, the registries and hostile-message handling are tested as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from typing import ClassVar

from ._transport import DeadLetter, Delivery, ReadMode, Subscription, Unavailable

__all__ = ["InMemory"]


@dataclasses.dataclass(slots=True)
class _Claim:
    """A message of a group that was delivered and not acknowledged yet."""

    seq: int
    data: bytes
    attempts: int
    owner: str | None  # the consumer holding it; None once it waits for a retry
    due: float  # loop time after which another worker may take it


class _Group:
    def __init__(self, next_seq: int) -> None:
        self.next_seq = next_seq  # the first message no worker of the group got yet
        self.claims: dict[int, _Claim] = {}


class _Stream:
    def __init__(self) -> None:
        self.messages: dict[int, bytes] = {}
        self.last_seq = 0
        self.groups: dict[str, _Group] = {}
        self.dead: list[DeadLetter] = []
        self.wakers: set[asyncio.Event] = set()

    def append(self, data: bytes, max_msgs: int | None) -> None:
        self.last_seq += 1
        self.messages[self.last_seq] = data
        if max_msgs is not None and len(self.messages) > max_msgs:
            del self.messages[next(iter(self.messages))]

    def wake(self) -> None:
        for waker in self.wakers:
            waker.set()


class InMemory:
    """A bridge transport inside this process, for tests (yours and asignals' own).

    Give each :class:`~asignals.bridge.Bridge` its own ``InMemory()``; bridges on the same
    stream name reach each other. Streams, groups and dead letters live until
    :meth:`reset` (call it between tests, or give each test its own stream name).
    ``max_msgs`` bounds each stream like ``maxlen`` on Redis; ``block`` is the longest one
    fetch waits when there is nothing to deliver.
    """

    _streams: ClassVar[dict[str, _Stream]] = {}

    def __init__(self, *, max_msgs: int | None = 100_000, block: float = 1.0) -> None:
        if max_msgs is not None and max_msgs < 1:
            raise ValueError(f"max_msgs must be at least 1 (or None), got {max_msgs!r}")
        if block <= 0:
            raise ValueError(f"block must be positive, got {block!r}")
        self._max_msgs = max_msgs
        self._block = block
        self._stream: _Stream | None = None
        self.stream = ""
        """The stream name this transport was opened on by its bridge (``""`` before that)."""

    def __repr__(self) -> str:
        return "InMemory()"

    @classmethod
    def reset(cls) -> None:
        """Forget every stream, group and dead letter of this process (between tests)."""
        cls._streams.clear()

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters of this transport's stream, oldest first, for a test to inspect.

        They stay readable after the bridge stopped, until :meth:`reset`.
        """
        stream = self._streams.get(self.stream)
        return list(stream.dead) if stream is not None else []

    def _bound(self) -> _Stream:
        if self._stream is None:
            raise Unavailable("this InMemory transport is not open")
        return self._stream

    async def open(self, stream: str) -> None:
        """Bind to ``stream`` (created on first use)."""
        self.stream = stream
        self._stream = self._streams.setdefault(stream, _Stream())

    async def close(self) -> None:
        """Unbind; the stream, its groups and dead letters stay for other bridges."""
        self._stream = None

    async def publish(self, messages: Sequence[bytes]) -> None:
        """Append ``messages`` and wake every reader of the stream."""
        stream = self._bound()
        for data in messages:
            stream.append(bytes(data), self._max_msgs)
        stream.wake()

    async def dead_letter(self, message: bytes, provenance: Mapping[str, str]) -> None:
        """Keep ``message`` with ``provenance`` in :attr:`dead_letters`."""
        self._bound().dead.append(DeadLetter(bytes(message), dict(provenance)))

    async def subscribe(
        self,
        *,
        mode: ReadMode,
        group: str | None,
        consumer: str,
        claim_idle: float,
        max_attempts: int,
    ) -> Subscription:
        """Read from the tail (broadcast) or as ``consumer`` of ``group`` (shared)."""
        stream = self._bound()
        if mode == "broadcast":
            return _Broadcast(stream, self._block)
        if not group:
            raise ValueError("shared mode needs a group")
        state = stream.groups.get(group)
        if state is None:
            state = stream.groups[group] = _Group(stream.last_seq + 1)
        loop = asyncio.get_running_loop()
        for claim in state.claims.values():
            if claim.owner == consumer:  # a restarted worker takes its own back at once
                claim.due = loop.time()
        return _Shared(stream, state, consumer, claim_idle, self._block)


class _Reader:
    """What both kinds of subscription share: waiting for the stream to change."""

    def __init__(self, stream: _Stream, block: float) -> None:
        self._stream = stream
        self._block = block
        self._waker = asyncio.Event()
        stream.wakers.add(self._waker)
        self._closed = False

    async def _wait(self, timeout: float) -> None:
        self._waker.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._waker.wait(), max(0.0, timeout))

    async def close(self) -> None:
        self._closed = True
        self._stream.wakers.discard(self._waker)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this subscription is closed")


class _Broadcast(_Reader):
    def __init__(self, stream: _Stream, block: float) -> None:
        super().__init__(stream, block)
        self._next_seq = stream.last_seq + 1

    async def fetch(self, count: int) -> Sequence[Delivery]:
        self._check_open()
        if self._stream.last_seq < self._next_seq:
            await self._wait(self._block)
        out: list[Delivery] = []
        messages = self._stream.messages
        while self._next_seq <= self._stream.last_seq and len(out) < count:
            data = messages.get(self._next_seq)
            if data is not None:  # None: trimmed by max_msgs before this reader got to it
                out.append(_Delivery(None, _Claim(self._next_seq, data, 1, None, 0.0)))
            self._next_seq += 1
        return out


class _Shared(_Reader):
    def __init__(
        self, stream: _Stream, group: _Group, consumer: str, claim_idle: float, block: float
    ) -> None:
        super().__init__(stream, block)
        self._group = group
        self._consumer = consumer
        self._claim_idle = claim_idle

    async def fetch(self, count: int) -> Sequence[Delivery]:
        self._check_open()
        loop = asyncio.get_running_loop()
        out = self._take(count, loop.time())
        if not out:
            await self._wait(min(self._block, self._next_due(loop.time())))
            out = self._take(count, loop.time())
        return out

    def _next_due(self, now: float) -> float:
        dues = [c.due for c in self._group.claims.values()]
        return min(dues) - now if dues else self._block

    def _take(self, count: int, now: float) -> list[Delivery]:
        group = self._group
        out: list[Delivery] = []
        # Own claims of a previous run first, then claims gone quiet, then retries that are
        # due (all are "due" claims: the oldest first), then new messages.
        due = sorted(
            (c for c in group.claims.values() if c.due <= now),
            key=lambda c: (c.owner != self._consumer, c.due),
        )
        for claim in due[:count]:
            claim.attempts += 1
            claim.owner = self._consumer
            claim.due = now + self._claim_idle
            out.append(_Delivery(self, claim))
        messages = self._stream.messages
        while len(out) < count and group.next_seq <= self._stream.last_seq:
            seq = group.next_seq
            group.next_seq += 1
            data = messages.get(seq)
            if data is None:
                continue  # trimmed by max_msgs before the group got to it
            claim = _Claim(seq, data, 1, self._consumer, now + self._claim_idle)
            group.claims[seq] = claim
            out.append(_Delivery(self, claim))
        return out

    # -- settling, called by _Delivery ------------------------------------------------------

    def _ack(self, claim: _Claim) -> None:
        # Whoever finishes settles it, even a worker whose claim another one took over since.
        self._group.claims.pop(claim.seq, None)

    def _holds(self, claim: _Claim, attempt: int) -> bool:
        """True while this delivery is the current one (not taken over after claim_idle)."""
        current = self._group.claims.get(claim.seq)
        return current is claim and claim.owner == self._consumer and claim.attempts == attempt

    def _retry(self, claim: _Claim, attempt: int, delay: float) -> None:
        if self._holds(claim, attempt):
            claim.owner = None
            claim.due = asyncio.get_running_loop().time() + delay
            self._stream.wake()

    def _extend(self, claim: _Claim, attempt: int) -> None:
        if self._holds(claim, attempt):
            claim.due = asyncio.get_running_loop().time() + self._claim_idle

    def _release(self, claim: _Claim, attempt: int) -> None:
        if self._holds(claim, attempt):
            claim.attempts -= 1  # never started: the next delivery is the same attempt
            claim.owner = None
            claim.due = asyncio.get_running_loop().time()
            self._stream.wake()


class _Delivery:
    """A message handed to one reader; in broadcast mode its calls settle nothing."""

    __slots__ = ("_claim", "_reader", "attempt", "data", "id")

    def __init__(self, reader: _Shared | None, claim: _Claim) -> None:
        self._reader = reader
        self._claim = claim
        self.id = str(claim.seq)
        self.data = claim.data
        self.attempt = claim.attempts

    async def ack(self) -> None:
        if self._reader is not None:
            self._reader._ack(self._claim)

    async def retry(self, delay: float) -> None:
        if self._reader is not None:
            self._reader._retry(self._claim, self.attempt, delay)

    async def extend(self) -> None:
        if self._reader is not None:
            self._reader._extend(self._claim, self.attempt)

    async def release(self) -> None:
        if self._reader is not None:
            self._reader._release(self._claim, self.attempt)
