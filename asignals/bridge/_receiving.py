"""The reading half of a :class:`~asignals.bridge.Bridge`: fetch, decode, deliver, settle.

Everything here is the same on every transport: which events a process skips (its own, its
group's), when an event is retried and when it is dead-lettered, with what provenance, how
claims are kept alive while receivers run, and what a stop does with fetched events.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from . import _hooks
from ._backoff import Backoff
from ._codec import DecodeError
from ._dedup import Deduplicator
from ._envelope import Envelope, Event, Registry
from ._sending import delivering
from ._transport import Delivery, Subscription, Transport, Unavailable

__all__ = ["Receiver"]

logger = logging.getLogger("asignals.bridge")

_TRAILS = 10_000  # failure records kept for dead-letter provenance


class _Trail:
    """What this process saw of one message's failed deliveries (for dead-letter provenance)."""

    __slots__ = ("error", "error_type", "first", "last", "receivers")

    def __init__(self, now: float) -> None:
        self.first = now
        self.last = now
        self.error = ""
        self.error_type = ""
        self.receivers = ""


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def _type_name(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"


def _name_of(receiver: Any) -> str:
    name = getattr(receiver, "__qualname__", None) or type(receiver).__qualname__
    module = getattr(receiver, "__module__", None)
    return f"{module}.{name}" if module else str(name)


async def _quietly(call: Awaitable[None], what: str) -> None:
    try:
        await asyncio.wait_for(call, 5.0)
    except Exception as exc:
        logger.warning("%s failed: %r", what, exc)


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it ended.

    A Redis client can swallow a cancel that lands mid-command (redis-py returns as if the
    command completed), which would leave the reader waiting out a poll, or the claim renewals
    running forever; so cancel until it takes.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    await asyncio.gather(task, return_exceptions=True)


class Receiver:
    """Reads ``stream`` for one bridge and re-sends each event to the local receivers."""

    def __init__(
        self,
        transport: Transport,
        registry: Registry,
        *,
        stream: str,
        mode: Literal["broadcast", "shared"],
        group: str | None,
        consumer: str,
        origin: str,
        claim_idle: float,
        max_attempts: int,
        batch_size: int,
        reconnect_backoff: tuple[float, float],
        retry_backoff: tuple[float, float],
        dedupe: Deduplicator | None,
        stop_timeout: float,
        write_timeout: float,
    ) -> None:
        self._transport = transport
        self._registry = registry
        self._stream = stream
        self._shared = mode == "shared"
        self._group = group
        self._consumer = consumer
        self._origin = origin
        self._claim_idle = claim_idle
        self._max_attempts = max_attempts
        self._batch_size = batch_size
        self._reconnect_backoff = reconnect_backoff
        self._retry_backoff = Backoff(*retry_backoff)
        self._dedupe = dedupe
        self._stop_timeout = stop_timeout
        self._write_timeout = write_timeout
        self._subscription: Subscription | None = None
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._waiting = False  # on the broker (not delivering): stop may cancel the reader
        self._stopping = False
        self._started = False  # start returned: from then on a refused subscribe is retried
        self.last_error: Exception | None = None
        """Why reading fails now (``None`` while it works): what ``start`` reports."""
        self._running: set[Delivery] = set()  # fetched and not settled (shared mode)
        self._trails: collections.OrderedDict[str, _Trail] = collections.OrderedDict()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, timeout: float) -> bool:
        """Start reading; return once subscribed (``True``), or after ``timeout`` (``False``:
        the broker is away, see :attr:`last_error`, and the reader keeps retrying).
        ``RuntimeError`` if the reader died."""
        self._stopping = self._started = False
        self._ready.clear()
        self.last_error = None
        reader = self._reader = asyncio.create_task(
            self._read_loop(), name=f"asignals.bridge read {self._stream}"
        )
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if reader.done():
            error = reader.exception()
            await self.stop()
            raise RuntimeError(f"the reader of stream {self._stream!r} died") from error
        self._started = True
        if self._shared:
            self._heartbeat = asyncio.create_task(
                self._extend_loop(), name=f"asignals.bridge claims {self._stream}"
            )
        return self._ready.is_set()

    async def stop(self) -> None:
        """Let the event being delivered finish (at most ``stop_timeout``), stop reading, and
        hand every fetched, unfinished event back to the group."""
        self._stopping = True
        reader, self._reader = self._reader, None
        if reader is not None:
            if not self._waiting:
                await asyncio.wait({reader}, timeout=self._stop_timeout)
            await _cancel(reader)
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            await _cancel(heartbeat)
        # Cut off by stop_timeout: they ran partly, so they count as an attempt, and the group
        # gets them now rather than after claim_idle.
        for delivery in list(self._running):
            await self._settle(delivery, delivery.retry(0.0))
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await _quietly(subscription.close(), "closing the subscription")

    # -- the loop --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        backoff = Backoff(*self._reconnect_backoff)
        shared = self._shared
        while not self._stopping:
            try:
                if self._subscription is None:
                    self._subscription = await self._subscribe()
                    self._ready.set()
                # Shared mode takes one event at a time: what is fetched is being worked on,
                # so no other worker waits behind this one's queue.
                deliveries = await self._fetch(
                    self._subscription, 1 if shared else self._batch_size
                )
            except Exception as exc:
                if self._stopping:
                    return
                unavailable = isinstance(exc, Unavailable)
                if self._subscription is None and not unavailable and not self._started:
                    raise  # the transport refused the options (a bad group name): start fails
                # Once per outage, and again when it turns from "away" to "refused" (a broker
                # back with a stream that cannot work) or back.
                if not backoff.failing or unavailable != isinstance(self.last_error, Unavailable):
                    self._log_failure(exc)
                self.last_error = exc
                self._waiting = True
                try:
                    await backoff.sleep()
                finally:
                    self._waiting = False
                continue
            if backoff.failing:
                logger.info("reading %r again", self._stream)
                backoff.reset()
                self.last_error = None
            for index, delivery in enumerate(deliveries):
                if self._stopping:
                    if shared:
                        await self._release(deliveries[index:])
                    return
                await self._handle(delivery)

    def _log_failure(self, exc: Exception) -> None:
        if not isinstance(exc, Unavailable):
            logger.error("reading %r failed, retrying: %r", self._stream, exc)
        elif self._ready.is_set():
            logger.warning("reading %r failed, retrying: %r", self._stream, exc)
        else:  # never subscribed: the bridge's start reports the broker it cannot reach
            logger.debug("subscribing to %r failed, retrying: %r", self._stream, exc)

    async def _subscribe(self) -> Subscription:
        self._waiting = True  # a subscribe may wait long for a broker that is away
        try:
            return await self._transport.subscribe(
                mode="shared" if self._shared else "broadcast",
                group=self._group,
                consumer=self._consumer,
                claim_idle=self._claim_idle,
                max_attempts=self._max_attempts,
            )
        finally:
            self._waiting = False

    async def _fetch(self, subscription: Subscription, count: int) -> Sequence[Delivery]:
        """Await a fetch; only while waiting on the broker may :meth:`stop` cancel at once."""
        if self._stopping:
            return ()
        self._waiting = True
        try:
            return await subscription.fetch(count)
        finally:
            self._waiting = False

    async def _extend_loop(self) -> None:
        """Keep the claims of the events being run alive, so no healthy worker loses one."""
        while True:
            await asyncio.sleep(self._claim_idle / 3)
            for delivery in list(self._running):
                try:
                    await delivery.extend()
                except Exception as exc:
                    logger.warning("extending the claim on %s failed: %r", delivery.id, exc)

    async def _release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._running.discard(delivery)
            await _quietly(delivery.release(), f"handing {delivery.id} back to the group")

    async def _settle(self, delivery: Delivery, call: Awaitable[None]) -> None:
        self._running.discard(delivery)
        try:
            await call
        except Exception as exc:  # the broker redelivers it later: at least once
            logger.warning("settling %s of %r failed: %r", delivery.id, self._stream, exc)

    # -- one event -------------------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        """Decode, filter, deliver and settle one message."""
        shared = self._shared
        if shared:
            self._running.add(delivery)
        try:
            envelope = self._registry.parse(delivery.data)
        except DecodeError as exc:
            await self._dead_letter(delivery, None, "undecodable", exc)
            return
        skip = envelope.origin == self._origin or (shared and envelope.group == self._group)
        # Our own event (broadcast), or one a worker of this group ran as its sender (shared),
        # or one this process already handled: its receivers ran.
        if skip or (self._dedupe is not None and self._dedupe.seen(envelope.id)):
            if shared:
                await self._settle(delivery, delivery.ack())
            return
        if shared and delivery.attempt > self._max_attempts:
            # The last attempt's worker died or stalled: no receiver gets it again.
            attempts = delivery.attempt - 1
            await self._dead_letter(delivery, envelope, "max_attempts", None, attempts)
            return
        try:
            event = self._registry.resolve(envelope)
        except DecodeError as exc:
            await self._dead_letter(delivery, envelope, "undecodable", exc)
            return
        error, failed = await self._deliver(event, delivery.attempt)
        if error is None:
            if self._dedupe is not None:
                self._dedupe.add(envelope.id)
            self._trails.pop(delivery.id, None)
            if shared:
                await self._settle(delivery, delivery.ack())
            return
        trail = self._trail(delivery.id)
        trail.error_type = _type_name(error)
        trail.error = str(error)[:2000]
        trail.receivers = ",".join(failed)
        if not shared:
            return  # broadcast has no redelivery; send_robust logged the failure
        if not failed:  # the send itself refused the event (a typed signal's check, say)
            await self._dead_letter(delivery, envelope, "undeliverable", None)
        elif delivery.attempt >= self._max_attempts:
            await self._dead_letter(delivery, envelope, "max_attempts", None)
        else:
            delay = self._retry_backoff.delay(delivery.attempt - 1)
            await self._settle(delivery, delivery.retry(delay))

    def _trail(self, delivery_id: str) -> _Trail:
        now = time.time()
        trail = self._trails.get(delivery_id)
        if trail is None:
            trail = self._trails[delivery_id] = _Trail(now)
            if len(self._trails) > _TRAILS:
                self._trails.popitem(last=False)
        trail.last = now
        return trail

    async def _deliver(self, event: Event, attempt: int) -> tuple[BaseException | None, list[str]]:
        """Send a remote event to local receivers: (an error, the receivers that raised)."""
        token = delivering.set(event)
        # The class's method, not the bridged one on the instance: this is no new event.
        cls: Any = event.signal.__class__
        send: Callable[..., Awaitable[list[tuple[Any, Any]]]] = cls.send_robust
        try:
            hooks = _hooks.hooks
            if hooks is None:
                results = await send(event.signal, event.sender, **event.kwargs)
            else:
                headers = dict(event.envelope.headers)
                with hooks.on_deliver(event.envelope.signal, headers, attempt):
                    results = await send(event.signal, event.sender, **event.kwargs)
        except Exception as exc:
            logger.error("delivering %s from %r failed: %r", event.envelope.id, self._stream, exc)
            return exc, []
        finally:
            delivering.reset(token)
        failures = [(r, x) for r, x in results if isinstance(x, BaseException)]
        if not failures:
            return None, []
        return failures[-1][1], [_name_of(r) for r, _ in failures]

    async def _dead_letter(
        self,
        delivery: Delivery,
        envelope: Envelope | None,
        reason: str,
        error: BaseException | None,
        attempts: int | None = None,
    ) -> None:
        """Move a message to the dead letters with its provenance, then settle it.

        ``error`` is why it cannot be delivered (a decoding error); without it, the failures
        this process recorded for the message are the provenance.
        """
        trail = self._trails.pop(delivery.id, None)
        now = time.time()
        receivers = ""
        if error is not None:
            error_type, message = _type_name(error), str(error)[:2000]
        elif trail is not None and trail.error:
            error_type, message, receivers = trail.error_type, trail.error, trail.receivers
        else:
            error_type = ""
            message = (
                f"delivered {delivery.attempt - 1} time(s) without an acknowledgement: "
                f"the worker stopped or stayed stuck past claim_idle={self._claim_idle}s"
            )
        provenance = {
            "reason": reason,
            "error": message,
            "error_type": error_type,
            "attempts": str(delivery.attempt if attempts is None else attempts),
            "failed_receivers": receivers,
            "first_delivery": _iso(trail.first if trail is not None else now),
            "last_delivery": _iso(trail.last if trail is not None else now),
            "original_id": delivery.id,
            "stream": self._stream,
            "mode": "shared" if self._shared else "broadcast",
            "consumer": self._consumer if self._shared else self._origin,
        }
        if self._group:
            provenance["group"] = self._group
        if envelope is not None:
            provenance["signal"] = envelope.signal
            provenance["envelope_id"] = envelope.id
            provenance["sent_at"] = _iso(envelope.ts)
        logger.error("dead-lettering %s of %r (%s): %s", delivery.id, self._stream, reason, message)
        try:
            await asyncio.wait_for(
                self._transport.dead_letter(delivery.data, provenance), self._write_timeout
            )
        except Exception as exc:
            # Not acknowledged: the group delivers it again and this is retried.
            logger.error("could not write the dead letter for %s: %r", delivery.id, exc)
            self._running.discard(delivery)
            return
        hooks = _hooks.hooks
        if hooks is not None:
            hooks.on_dead_letter(envelope.signal if envelope is not None else "", reason)
        if self._shared:
            await self._settle(delivery, delivery.ack())
