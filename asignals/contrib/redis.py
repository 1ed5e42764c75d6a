"""Cross-process delivery of chosen signals over Redis Streams.

A :class:`RedisBridge` connects one strong receiver to each signal it bridges; that receiver
appends a JSON envelope to a Redis stream. A reader task in every process reads the stream and
re-sends each event to the local receivers, with the publishing receiver suppressed for that
delivery so nothing loops. Two modes:

``"broadcast"``
    every process gets every event (``XREAD`` from the tail it saw at start).
``"shared"``
    one consumer group per service: each event is handled by one worker of the group,
    at least once (``XACK`` after the receivers succeed, ``XAUTOCLAIM`` of a dead worker's
    pending events, dead-letter stream after ``max_attempts`` deliveries).
``"publish"``
    send only, no reader.

Nothing in a message can run code: signals and senders are looked up by names this process
registered, values are rebuilt only by the codec's registered adapters, and no pickle is used.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ._codec import DecodeError, EncodeError, JsonCodec
from ._envelope import Envelope, Event, Registry
from ._publisher import ENVELOPE_FIELD, TRANSIENT_ERRORS, Backoff, Publisher, PublishError

__all__ = [
    "DecodeError",
    "EncodeError",
    "JsonCodec",
    "Mode",
    "PublishError",
    "RedisBridge",
]

logger = logging.getLogger("asignals.redis")

Mode = Literal["broadcast", "shared", "publish"]
S = TypeVar("S")

#: The remote event this context is delivering; the publishing receiver skips exactly it.
_delivering: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "asignals_redis_delivering", default=None
)

_Entry = tuple[Any, Mapping[Any, Any]]
_READ_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, ResponseError)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_key(entry_id: Any) -> tuple[int, ...]:
    return tuple(int(part) for part in _text(entry_id).split("-"))


def _is_remote_echo(signal: Any, sender: Any, kwargs: dict[str, Any]) -> bool:
    """True when this send is the bridge re-sending a remote event (so it must not publish).

    Identity of every object matters: a receiver that sends the same signal again with new
    values during a remote delivery is a new event and is published.
    """
    event = _delivering.get()
    if event is None or event.signal is not signal or event.sender is not sender:
        return False
    if event.kwargs.keys() != kwargs.keys():
        return False
    return all(kwargs[k] is v for k, v in event.kwargs.items())


class RedisBridge:
    """Carries sends of the attached signals to every process running a bridge on ``stream``.

    Use as ``async with RedisBridge(...) as bridge:`` (inside ``asignals.dispatcher()`` when
    receivers use ``send_nowait``), or call :meth:`start` / :meth:`stop` from a lifespan.
    """

    def __init__(
        self,
        redis: str | Redis = "redis://127.0.0.1:6379/0",
        *,
        stream: str = "asignals:events",
        mode: Mode = "broadcast",
        group: str | None = None,
        consumer: str | None = None,
        signals: Iterable[Any] = (),
        senders: Mapping[str, Any] | None = None,
        codec: JsonCodec | None = None,
        confirm: bool = True,
        maxlen: int | None = 100_000,
        dead_letter_stream: str | None = None,
        dead_letter_maxlen: int | None = 10_000,
        max_attempts: int = 5,
        claim_idle: float = 30.0,
        batch_size: int = 500,
        block: float = 1.0,
        publish_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        max_pending: int = 10_000,
        max_message_bytes: int = 1 << 20,
        reconnect_backoff: tuple[float, float] = (0.05, 5.0),
    ) -> None:
        if mode not in ("broadcast", "shared", "publish"):
            raise ValueError(f"mode must be 'broadcast', 'shared' or 'publish', not {mode!r}")
        if mode == "shared" and not group:
            raise ValueError("mode='shared' needs group= (one consumer group per service)")
        if mode != "shared" and group is not None:
            raise ValueError(f"group= only applies to mode='shared', not {mode!r}")
        if max_attempts < 1 or batch_size < 1 or max_pending < 1:
            raise ValueError("max_attempts, batch_size and max_pending must be at least 1")
        if claim_idle <= 0 or block <= 0 or publish_timeout <= 0:
            raise ValueError("claim_idle, block and publish_timeout must be positive")
        # A URL gets a client per start() (closed by stop()); a client passed in is the caller's.
        self._url = redis if isinstance(redis, str) else None
        self._client: Redis = (
            Redis.from_url(redis, socket_connect_timeout=5.0, socket_keepalive=True)
            if isinstance(redis, str)
            else redis
        )
        self.stream = stream
        self.mode: Mode = mode
        self.group = group
        host, pid, token = socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8]
        #: Identifies this bridge in envelopes; its own events are never delivered back to it.
        self.origin = f"{host}:{pid}:{token}"
        self.consumer = consumer or f"{host}-{pid}-{token}"
        self.dead_letter_stream = dead_letter_stream or f"{stream}:dead"
        self.codec = codec if codec is not None else JsonCodec()
        self._registry = Registry(self.codec, self.origin, group)
        self._confirm = confirm
        self._maxlen = maxlen
        self._dead_maxlen = dead_letter_maxlen
        self._max_attempts = max_attempts
        self._claim_idle_ms = max(1, int(claim_idle * 1000))
        self._batch_size = batch_size
        self._block_ms = max(1, int(min(block, claim_idle / 2) * 1000))
        self._publish_timeout = publish_timeout
        self._stop_timeout = stop_timeout
        self._max_pending = max_pending
        self._max_bytes = max_message_bytes
        self._backoff = reconnect_backoff
        self._uid = f"asignals.contrib.redis:{self.origin}"
        self._publisher: Publisher | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reading = False
        self._stopping = False
        self._ready = asyncio.Event()
        for signal in signals:
            self.attach(signal)
        for name, sender in (senders or {}).items():
            self.register_sender(name, sender)

    # -- configuration --------------------------------------------------------------------

    def attach(self, signal: S, *, name: str | None = None) -> S:
        """Bridge ``signal`` under ``name`` (default: ``signal.name``); same name everywhere."""
        self._registry.add_signal(signal, name)
        if self.running:
            self._connect(signal)
        return signal

    def register_sender(self, name: str, sender: Any) -> None:
        """Let ``sender`` (a model class, say) travel as ``name``; register it on both sides.

        ``None``, ``str`` and ``int`` senders need no registration.
        """
        self._registry.add_sender(name, sender)

    @property
    def signals(self) -> dict[str, Any]:
        """The bridged signals by name."""
        return dict(self._registry.signals)

    @property
    def running(self) -> bool:
        return self._publisher is not None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> RedisBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start publishing and reading; returns once the reader has found its position.

        Events sent by other processes after ``start`` returns reach this process (broadcast)
        or this service (shared). If Redis is down, the reader keeps retrying with backoff and
        ``start`` returns anyway, so an application can boot while Redis is restarting.
        """
        if self.running:
            raise RuntimeError("this RedisBridge is already running")
        self._stopping = False
        self._ready.clear()
        if self._url is not None:
            self._client = Redis.from_url(
                self._url, socket_connect_timeout=5.0, socket_keepalive=True
            )
        self._publisher = Publisher(
            self._client,
            self.stream,
            maxlen=self._maxlen,
            batch_size=self._batch_size,
            timeout=self._publish_timeout,
            max_pending=self._max_pending,
            backoff=self._backoff,
        )
        self._publisher.start()
        if self.mode != "publish":
            loop = self._broadcast_loop if self.mode == "broadcast" else self._shared_loop
            self._reader = asyncio.create_task(loop(), name=f"asignals.redis read {self.stream}")
            ready = asyncio.ensure_future(self._ready.wait())
            await asyncio.wait(
                {ready, self._reader},
                timeout=self._publish_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            ready.cancel()
            if self._reader.done():
                error = self._reader.exception()
                await self.stop()
                raise RuntimeError(f"the Redis bridge reader for {self.stream!r} died") from error
        for signal in self._registry.signals.values():
            self._connect(signal)

    async def stop(self) -> None:
        """Finish the events being delivered, stop reading, write what is queued, disconnect.

        Waits at most ``stop_timeout`` for receivers still handling remote events and at most
        ``publish_timeout`` for queued events to reach Redis.
        """
        if not self.running:
            return
        self._stopping = True
        reader, self._reader = self._reader, None
        if reader is not None:
            if not self._reading:
                # Let the batch being delivered finish, but not forever: a receiver stuck past
                # stop_timeout is cancelled (shared mode redelivers its unacked events).
                await asyncio.wait({reader}, timeout=self._stop_timeout)
            while not reader.done():
                # redis-py can swallow a cancel that lands before its command starts, which
                # would leave us waiting out a whole block period; cancel until it takes.
                reader.cancel()
                await asyncio.wait({reader}, timeout=0.05)
            await asyncio.gather(reader, return_exceptions=True)
        for signal in self._registry.signals.values():
            signal.disconnect(dispatch_uid=self._uid)
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        if self._url is not None:
            await self._client.aclose()

    async def flush(self) -> None:
        """Wait until every event sent so far is in Redis (useful with ``confirm=False``)."""
        if self._publisher is not None:
            await self._publisher.flush()

    # -- publishing ------------------------------------------------------------------------

    def _connect(self, signal: Any) -> None:
        signal.connect(self._publish, weak=False, dispatch_uid=self._uid)

    def _publish(self, signal: Any, sender: Any, **kwargs: Any) -> Awaitable[None] | None:
        """The receiver connected to every bridged signal: encode, queue, maybe wait.

        It is a sync function that returns a future when the send must wait for Redis (the
        core awaits an awaitable a receiver returns): encoding errors surface in the send, and
        no coroutine or task is created per event, which is most of the cost of publishing.
        """
        publisher = self._publisher
        if publisher is None or _is_remote_echo(signal, sender, kwargs):
            return None
        data = self._registry.encode(signal, sender, kwargs)
        return publisher.put_nowait(data, confirm=self._confirm)

    # -- reading ---------------------------------------------------------------------------

    async def _read(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """Await a blocking read; only here may :meth:`stop` cancel the reader."""
        if self._stopping:
            return None
        self._reading = True
        try:
            return await call()
        finally:
            self._reading = False

    async def _broadcast_loop(self) -> None:
        backoff = Backoff(*self._backoff)
        last_id: Any = None
        while not self._stopping:
            try:
                if last_id is None:
                    tail = await self._client.xrevrange(self.stream, count=1)
                    last_id = tail[0][0] if tail else b"0-0"
                    self._ready.set()
                response = await self._read(
                    functools.partial(
                        self._client.xread,
                        {self.stream: last_id},
                        count=self._batch_size,
                        block=self._block_ms,
                    )
                )
            except _READ_ERRORS as exc:
                await self._reader_failed(backoff, exc)
                continue
            self._reader_ok(backoff)
            for _stream, entries in response or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    event = await self._decode(entry_id, fields)
                    if event is not None:
                        await self._deliver(event)

    async def _shared_loop(self) -> None:
        backoff = Backoff(*self._backoff)
        group = self.group or ""
        group_ready = False
        own_pending = True  # first drain what a previous run of this consumer left unacked
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        while not self._stopping:
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                    self._ready.set()
                if loop.time() >= next_claim:
                    next_claim = loop.time() + self._claim_idle_ms / 2000
                    await self._claim()
                start, block = ("0", None) if own_pending else (">", self._block_ms)
                response = await self._read(
                    functools.partial(
                        self._client.xreadgroup,
                        group,
                        self.consumer,
                        {self.stream: start},
                        count=self._batch_size,
                        block=block,
                    )
                )
                entries = [e for _s, es in response or () for e in es]
                if own_pending and not entries:
                    own_pending = False
                    continue
                await self._handle_group_batch(entries, claimed=False)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    group_ready = False  # Redis lost the group (restart without persistence)
                await self._reader_failed(backoff, exc)
                continue
            except TRANSIENT_ERRORS as exc:
                await self._reader_failed(backoff, exc)
                continue
            self._reader_ok(backoff)

    async def _ensure_group(self) -> None:
        try:
            await self._client.xgroup_create(self.stream, self.group or "", id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _claim(self) -> None:
        """Take over events another worker received but did not ack within ``claim_idle``."""
        start: Any = "0-0"
        while True:
            response = await self._client.xautoclaim(
                self.stream,
                self.group or "",
                self.consumer,
                self._claim_idle_ms,
                start,
                count=self._batch_size,
            )
            start, entries = response[0], response[1]
            entries = [(i, f) for i, f in entries if f is not None]
            if entries:
                logger.info("claimed %d pending event(s) on %r", len(entries), self.stream)
                await self._handle_group_batch(entries, claimed=True)
            if _text(start) == "0-0" or self._stopping:
                return

    async def _attempts(self, entries: list[_Entry]) -> dict[Any, int]:
        """Delivery counts of claimed entries (``XAUTOCLAIM`` does not return them)."""
        ids = sorted((entry_id for entry_id, _ in entries), key=_id_key)
        rows = await self._client.xpending_range(
            self.stream,
            self.group or "",
            min=ids[0],
            max=ids[-1],
            count=len(ids) + 1000,
            consumername=self.consumer,
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    async def _handle_group_batch(self, entries: list[_Entry], *, claimed: bool) -> None:
        if not entries:
            return
        attempts = await self._attempts(entries) if claimed else {}
        done: list[Any] = []
        try:
            for entry_id, fields in entries:
                tries = attempts.get(entry_id, 1)
                if tries > self._max_attempts:
                    reason = f"receivers failed {tries - 1} time(s) (max_attempts)"
                    if await self._dead_letter(entry_id, fields, "max_attempts", reason):
                        done.append(entry_id)
                    continue
                event = await self._decode(entry_id, fields)
                if event is None:
                    done.append(entry_id)  # dead-lettered
                elif event.envelope.group == self.group:
                    done.append(entry_id)  # the sending worker of this service already ran it
                elif await self._deliver(event):
                    done.append(entry_id)
        finally:
            if done:
                await self._client.xack(self.stream, self.group or "", *done)

    async def _decode(self, entry_id: Any, fields: Mapping[Any, Any]) -> Event | None:
        """Parse and resolve one entry; dead-letter it (and return None) if that fails."""
        raw = fields.get(ENVELOPE_FIELD)
        if raw is None:
            raw = fields.get(ENVELOPE_FIELD.decode())
        envelope: Envelope | None = None
        try:
            if raw is None:
                raise DecodeError(f"entry has no {ENVELOPE_FIELD.decode()!r} field")
            data = raw if isinstance(raw, bytes) else str(raw).encode()
            envelope = self._registry.parse(data, self._max_bytes)
            if self.mode == "broadcast" and envelope.origin == self.origin:
                return None
            return self._registry.resolve(envelope)
        except DecodeError as exc:
            logger.error("dead-lettering entry %s of %r: %s", _text(entry_id), self.stream, exc)
            await self._dead_letter(entry_id, fields, "undecodable", str(exc))
            return None

    async def _deliver(self, event: Event) -> bool:
        """Send a remote event to local receivers; True when none of them raised."""
        token = _delivering.set(event)
        try:
            results = await event.signal.send_robust(event.sender, **event.kwargs)
        except Exception:
            logger.exception("delivering %s from %r failed", event.envelope.id, self.stream)
            return False
        finally:
            _delivering.reset(token)
        return not any(isinstance(result, BaseException) for _, result in results)

    async def _dead_letter(
        self, entry_id: Any, fields: Mapping[Any, Any], reason: str, error: str
    ) -> bool:
        """Copy an entry to the dead-letter stream with why; False if Redis refused."""
        record: dict[Any, Any] = {
            b"reason": reason,
            b"error": error[:2000],
            b"stream": self.stream,
            b"entry_id": entry_id,
            b"mode": self.mode,
            b"consumer": self.consumer if self.mode == "shared" else self.origin,
        }
        if self.group:
            record[b"group"] = self.group
        for key, value in fields.items():
            name = key if isinstance(key, bytes) else str(key).encode()
            record[b"raw:" + name] = value
        try:
            await self._client.xadd(
                self.dead_letter_stream, record, maxlen=self._dead_maxlen, approximate=True
            )
        except RedisError as exc:
            logger.error("could not write dead letter to %r: %s", self.dead_letter_stream, exc)
            return False
        return True

    async def _reader_failed(self, backoff: Backoff, exc: BaseException) -> None:
        if not backoff.failing:
            logger.warning("reading Redis stream %r failed, retrying: %s", self.stream, exc)
        await backoff.sleep()

    def _reader_ok(self, backoff: Backoff) -> None:
        if backoff.failing:
            logger.info("reading Redis stream %r again", self.stream)
            backoff.reset()
