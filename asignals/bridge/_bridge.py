"""The :class:`Bridge`: everything about carrying signals across processes that does not depend
on the broker (modes, encoding, retries, dead letters, timeouts), over a
:class:`~asignals.bridge._transport.Transport`."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from .._reserved import RESERVED
from . import _hooks
from ._backoff import Backoff
from ._codec import DecodeError, EncodeError, JsonCodec
from ._dedup import Deduplicator
from ._envelope import Encoded, Envelope, Event, Registry
from ._publisher import Publisher, PublishError
from ._sending import Outgoing, delivering, install, outgoing, uninstall
from ._transport import DeadLetter, Delivery, Subscription, Transport, Unavailable

__all__ = ["Bridge", "Mode"]

logger = logging.getLogger("asignals.bridge")

Mode = Literal["broadcast", "shared", "publish"]
S = TypeVar("S")

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


def _name_of(receiver: Any) -> str:
    name = getattr(receiver, "__qualname__", None) or type(receiver).__qualname__
    module = getattr(receiver, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def _is_remote_echo(signal: Any, sender: Any, kwargs: dict[str, Any]) -> bool:
    """True when this send is the bridge re-sending a remote event (so it must not publish).

    Identity of every object matters: a receiver that sends the same signal again with new
    values during a remote delivery is a new event and is published.
    """
    event: Event | None = delivering.get()
    if event is None or event.signal is not signal or event.sender is not sender:
        return False
    if event.kwargs.keys() != kwargs.keys():
        return False
    return all(kwargs[k] is v for k, v in event.kwargs.items())


def _signal_list(signals: Any) -> list[Any]:
    if callable(getattr(signals, "send_robust", None)):
        return [signals]  # one signal, not a list of them
    if isinstance(signals, str | bytes) or not isinstance(signals, Iterable):
        raise TypeError(
            f"signals= takes a signal or a list of signals, got {signals!r}; "
            f"e.g. signals=[order_placed, order_shipped]"
        )
    return list(signals)


def _sender_map(senders: Any) -> Mapping[str, Any]:
    if senders is None:
        return {}
    if not isinstance(senders, Mapping):
        example = ", ".join(
            f"{getattr(s, '__name__', 'Name')!r}: {getattr(s, '__name__', 'sender')}"
            for s in (list(senders) if isinstance(senders, Iterable) else [senders])[:3]
        )
        raise TypeError(
            f"senders= maps the name each sender travels as to the sender, got {senders!r}; "
            f"write senders={{{example or repr('Order') + ': Order'}}} "
            f"(the same names in every process)"
        )
    return senders


class Bridge:
    """Carries sends of the attached signals to every process running a bridge on ``stream``.

    A send of a bridged signal runs the local receivers as usual **and** publishes one envelope
    through ``transport`` (:class:`~asignals.bridge.RedisStreams`, ``JetStream``, ``InMemory``);
    each other process's bridge re-sends it to its own receivers. ``mode`` says who gets an
    event: ``"broadcast"`` (every process), ``"shared"`` (one worker of ``group``, at least
    once, retried and finally dead-lettered) or ``"publish"`` (send only). Use as
    ``async with asignals.dispatcher(), bridge:`` or call :meth:`start` / :meth:`stop` from a
    lifespan. The options behave the same on every transport:

    ``confirm``
        ``send`` returns once the broker stored the event (else it is queued; see :meth:`flush`).
    ``publish_timeout``
        the longest a send waits for the broker (unreachable, full queue): then
        :class:`PublishError`. Unconfirmed events are dropped, logged, after the same time.
    ``max_pending``
        events queued at most; further sends wait for room (within ``publish_timeout``).
    ``stop_timeout``
        how long :meth:`stop` lets the event being delivered finish.
    ``claim_idle``
        shared mode: an event whose worker went quiet this long (it died, or its event loop
        is blocked) goes to another worker; a live worker extends its claim while it runs.
    ``max_attempts``
        shared mode: deliveries of an event whose receivers keep failing before it is
        dead-lettered; retries wait ``retry_backoff`` (doubling, with jitter).
    ``max_message_bytes``
        envelopes larger than this are refused by the sender (:class:`EncodeError`) and
        dead-lettered by readers.
    ``dedupe``
        a :class:`Deduplicator`: events whose id this process already handled are dropped.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        stream: str = "asignals:events",
        mode: Mode = "broadcast",
        group: str | None = None,
        consumer: str | None = None,
        signals: Iterable[Any] | Any = (),
        senders: Mapping[str, Any] | None = None,
        codec: JsonCodec | None = None,
        confirm: bool = True,
        publish_timeout: float = 10.0,
        max_pending: int = 10_000,
        stop_timeout: float = 10.0,
        claim_idle: float = 30.0,
        max_attempts: int = 5,
        max_message_bytes: int = 1 << 20,
        batch_size: int = 500,
        reconnect_backoff: tuple[float, float] = (0.05, 5.0),
        retry_backoff: tuple[float, float] = (1.0, 60.0),
        dedupe: Deduplicator | None = None,
    ) -> None:
        if mode not in ("broadcast", "shared", "publish"):
            raise ValueError(f"mode must be 'broadcast', 'shared' or 'publish', not {mode!r}")
        if mode == "shared" and not group:
            raise ValueError("mode='shared' needs group= (one consumer group per service)")
        if mode != "shared" and group is not None:
            raise ValueError(f"group= only applies to mode='shared', not {mode!r}")
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"stream must be a non-empty str, got {stream!r}")
        for option, value in (
            ("max_attempts", max_attempts),
            ("batch_size", batch_size),
            ("max_pending", max_pending),
            ("max_message_bytes", max_message_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be an int of at least 1, got {value!r}")
        for option, number in (
            ("claim_idle", claim_idle),
            ("publish_timeout", publish_timeout),
            ("stop_timeout", stop_timeout),
        ):
            if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
                raise ValueError(f"{option} must be a positive number of seconds, got {number!r}")
        Backoff(*reconnect_backoff)  # validates
        Backoff(*retry_backoff)
        signal_list = _signal_list(signals)
        sender_map = _sender_map(senders)
        #: The broker this bridge publishes to and reads from.
        self.transport = transport
        self.stream = stream
        self.mode: Mode = mode
        self.group = group
        host, pid, token = socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8]
        #: Identifies this bridge in envelopes; its own events are never delivered back to it.
        self.origin = f"{host}:{pid}:{token}"
        self.consumer = consumer or f"{host}-{pid}-{token}"
        self.codec = codec if codec is not None else JsonCodec()
        self._registry = Registry(self.codec, self.origin, group, max_message_bytes)
        self._confirm = confirm
        self._publish_timeout = float(publish_timeout)
        self._max_pending = max_pending
        self._stop_timeout = float(stop_timeout)
        self._claim_idle = float(claim_idle)
        self._max_attempts = max_attempts
        self._batch_size = batch_size
        self._reconnect_backoff = reconnect_backoff
        self._retry_backoff = Backoff(*retry_backoff)
        self._dedupe = dedupe
        self._uid = f"asignals.bridge:{self.origin}:{stream}"
        self._publisher: Publisher | None = None
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._fetching = False
        self._stopping = False
        self._ready = asyncio.Event()
        self._running: set[Delivery] = set()  # fetched and not settled (shared mode)
        self._trails: collections.OrderedDict[str, _Trail] = collections.OrderedDict()
        for signal in signal_list:
            self.attach(signal)
        for name, sender in sender_map.items():
            self.register_sender(name, sender)

    def __repr__(self) -> str:
        group = f" group={self.group!r}" if self.group else ""
        return f"<Bridge {self.mode} {self.stream!r}{group} over {self.transport!r}>"

    # -- configuration --------------------------------------------------------------------

    def attach(self, signal: S, *, name: str | None = None) -> S:
        """Bridge ``signal`` under ``name`` (default: ``signal.name``); same name everywhere."""
        self._registry.add_signal(signal, name)
        if self.running:
            self._hook(signal)
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
        """True between :meth:`start` and :meth:`stop`."""
        return self._publisher is not None

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters, for transports that keep them in process (``InMemory``)."""
        letters = getattr(self.transport, "dead_letters", None)
        if letters is None:
            raise AttributeError(
                f"{self.transport!r} keeps its dead letters in the broker, not in this "
                f"process; read them there (e.g. the stream {self.stream + ':dead'!r})"
            )
        return list(letters)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start publishing and reading; returns once the reader has found its position.

        Events sent by other processes after ``start`` returns reach this process (broadcast)
        or this service (shared). If the broker is down, the reader keeps retrying with backoff
        and ``start`` returns after ``publish_timeout``, so an application can boot while the
        broker is restarting.
        """
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self._stopping = False
        self._ready.clear()
        await self._open()
        self._publisher = Publisher(
            self.transport,
            self.stream,
            batch_size=self._batch_size,
            timeout=self._publish_timeout,
            max_pending=self._max_pending,
            backoff=self._reconnect_backoff,
        )
        self._publisher.start()
        if self.mode != "publish":
            self._reader = asyncio.create_task(
                self._read_loop(), name=f"asignals.bridge read {self.stream}"
            )
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
                raise RuntimeError(f"the reader of {self!r} died") from error
            if self.mode == "shared":
                self._heartbeat = asyncio.create_task(
                    self._extend_loop(), name=f"asignals.bridge claims {self.stream}"
                )
        for signal in self._registry.signals.values():
            self._hook(signal)

    async def _open(self) -> None:
        backoff = Backoff(*self._reconnect_backoff)
        deadline = time.monotonic() + self._publish_timeout
        while True:
            try:
                await self.transport.open(self.stream)
                return
            except Unavailable as exc:
                await self.transport.close()
                if time.monotonic() >= deadline:
                    raise PublishError(f"cannot reach the broker of {self!r}: {exc}") from exc
                await backoff.sleep()

    async def stop(self) -> None:
        """Finish the event being delivered, stop reading, write what is queued, disconnect.

        Waits at most ``stop_timeout`` for the receivers of the event being delivered (shared
        mode hands events fetched but not started back to the group at once) and at most
        ``publish_timeout`` for queued events to reach the broker.
        """
        if not self.running:
            return
        self._stopping = True
        reader, self._reader = self._reader, None
        if reader is not None:
            if not self._fetching:
                await asyncio.wait({reader}, timeout=self._stop_timeout)
            while not reader.done():
                # A client can swallow a cancel that lands before its command starts, which
                # would leave us waiting out a whole poll; cancel until it takes.
                reader.cancel()
                await asyncio.wait({reader}, timeout=0.05)
            await asyncio.gather(reader, return_exceptions=True)
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        for signal in self._registry.signals.values():
            self._unhook(signal)
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        # Cut off by stop_timeout: they ran partly, so they count as an attempt, and the group
        # gets them now rather than after claim_idle.
        for delivery in list(self._running):
            await self._settle(delivery, delivery.retry(0.0))
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await self._quietly(subscription.close())
        await self._quietly(self.transport.close())

    async def flush(self) -> None:
        """Wait until every event sent so far is stored (useful with ``confirm=False``)."""
        if self._publisher is not None:
            await self._publisher.flush()

    @staticmethod
    async def _quietly(call: Awaitable[None]) -> None:
        try:
            await asyncio.wait_for(call, 5.0)
        except Exception as exc:
            logger.warning("cleaning up the bridge failed: %r", exc)

    # -- publishing ------------------------------------------------------------------------

    def _hook(self, signal: Any) -> None:
        install(signal, self)
        signal.connect(self._publish, weak=False, dispatch_uid=self._uid)

    def _unhook(self, signal: Any) -> None:
        signal.disconnect(dispatch_uid=self._uid)
        uninstall(signal, self)

    def _prepare(
        self, signal: Any, sender: Any, kwargs: dict[str, Any], nxt: Outgoing | None
    ) -> Outgoing:
        """Encode one send for this bridge before any receiver runs (see ``_sending``)."""
        name = self._registry.signal_name(signal)
        if name is None:
            raise EncodeError(f"{signal!r} is not bridged by {self!r}")
        body = self._registry.body(name, sender, kwargs)
        return Outgoing(self, signal, body, self._registry.dump(body), nxt)

    def _publish(self, signal: Any, sender: Any, **kwargs: Any) -> Awaitable[None] | None:
        """The receiver connected to every bridged signal: queue the encoded event, maybe wait.

        It is a sync function that returns a future when the send must wait for the broker
        (the core awaits an awaitable a receiver returns), so no coroutine or task is created
        per event, which is most of the cost of publishing.
        """
        publisher = self._publisher
        if publisher is None:
            return None
        out = outgoing.get()
        while out is not None and (out.bridge is not self or out.signal is not signal):
            out = out.next
        if out is not None:
            data, out.data = out.data, None
            if data is None:
                return None  # already queued by this send
            body = out.body
        elif _is_remote_echo(signal, sender, kwargs):
            return None
        else:  # a send that bypassed signal.send (see _sending): encode it now
            name = self._registry.signal_name(signal)
            if name is None:
                return None
            body = self._registry.body(name, sender, kwargs)
            data = self._registry.dump(body)
        hooks = _hooks.hooks
        if hooks is not None:
            headers: dict[str, str] = {}
            hooks.on_publish(body["signal"], headers)
            if headers:
                body["headers"] = headers
                data = self._registry.dump(body)
        return publisher.put_nowait(data, confirm=self._confirm)

    # -- the outbox port -------------------------------------------------------------------

    def carries(self, signal: Any) -> bool:
        """True when ``signal`` is attached to this bridge (an outbox routes it through its
        table)."""
        return self._registry.signal_name(signal) is not None

    def encode(self, signal: Any, sender: Any, kwargs: dict[str, Any]) -> Encoded:
        """The envelope of one send, for an outbox to store and publish later.

        Raises :class:`EncodeError` for a signal this bridge does not carry, an unregistered
        sender, a value the codec cannot encode, a reserved keyword name, or an envelope over
        ``max_message_bytes`` (naming the size and the limit). Tracing headers are added in
        the calling context.
        """
        name = self._registry.signal_name(signal)
        if name is None:
            raise EncodeError(f"{signal!r} is not bridged by {self!r}; attach it first")
        reserved = RESERVED.intersection(kwargs)
        if reserved:
            raise EncodeError(f"{name}: reserved keyword name(s) {sorted(reserved)} in kwargs")
        body = self._registry.body(name, sender, kwargs)
        hooks = _hooks.hooks
        if hooks is not None:
            headers: dict[str, str] = {}
            hooks.on_publish(name, headers)
            body["headers"] = headers
        return Encoded(body["id"], self._registry.dump(body))

    def _publisher_or_fail(self) -> Publisher:
        if self._publisher is None:
            raise PublishError(f"{self!r} is not running; use 'async with bridge:' first")
        return self._publisher

    async def publish_encoded(self, data: bytes) -> None:
        """Publish what :meth:`encode` returned, confirmed by the broker.

        :class:`PublishError` on failure or after ``publish_timeout``; :class:`DecodeError`
        when ``data`` is not an envelope of a signal this bridge carries (dead-letter it).
        """
        publisher = self._publisher_or_fail()
        envelope = self._registry.parse(data)
        if envelope.signal not in self._registry.signals:
            raise DecodeError(f"unknown signal {envelope.signal!r} (not bridged by {self!r})")
        await publisher.put(data, confirm=True)

    async def dead_letter_encoded(self, data: bytes, reason: str) -> None:
        """Write ``data`` to the dead letters with ``reason`` (an outbox row it gave up on)."""
        self._publisher_or_fail()
        provenance = {"reason": reason, "source": "outbox", "stream": self.stream}
        provenance["error"] = reason
        try:
            envelope = self._registry.parse(data)
        except DecodeError:
            signal = ""
        else:
            signal = envelope.signal
            provenance["envelope_id"] = envelope.id
            provenance["signal"] = signal
        try:
            await asyncio.wait_for(
                self.transport.dead_letter(data, provenance), self._publish_timeout
            )
        except (Unavailable, TimeoutError) as exc:
            raise PublishError(f"cannot write the dead letter: {exc!r}") from exc
        hooks = _hooks.hooks
        if hooks is not None:
            hooks.on_dead_letter(signal, reason)

    # -- reading ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        backoff = Backoff(*self._reconnect_backoff)
        shared = self.mode == "shared"
        while not self._stopping:
            try:
                if self._subscription is None:
                    self._subscription = await self.transport.subscribe(
                        mode="shared" if shared else "broadcast",
                        group=self.group,
                        consumer=self.consumer,
                        claim_idle=self._claim_idle,
                        max_attempts=self._max_attempts,
                    )
                    self._ready.set()
                # Shared mode takes one event at a time: what is fetched is being worked on,
                # so no other worker waits behind this one's queue.
                deliveries = await self._fetch(
                    self._subscription, 1 if shared else self._batch_size
                )
            except Exception as exc:
                if self._stopping:
                    return
                if not backoff.failing:
                    level = logging.WARNING if isinstance(exc, Unavailable) else logging.ERROR
                    logger.log(level, "reading %r failed, retrying: %r", self.stream, exc)
                await backoff.sleep()
                continue
            if backoff.failing:
                logger.info("reading %r again", self.stream)
                backoff.reset()
            for index, delivery in enumerate(deliveries):
                if self._stopping:
                    if shared:
                        await self._release(deliveries[index:])
                    return
                await self._handle(delivery, shared)

    async def _fetch(self, subscription: Subscription, count: int) -> Sequence[Delivery]:
        """Await a fetch; only here may :meth:`stop` cancel the reader at once."""
        if self._stopping:
            return ()
        self._fetching = True
        try:
            return await subscription.fetch(count)
        finally:
            self._fetching = False

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
            try:
                await asyncio.wait_for(delivery.release(), 2.0)
            except Exception as exc:
                logger.warning("could not hand %s back to the group: %r", delivery.id, exc)

    async def _settle(self, delivery: Delivery, call: Awaitable[None]) -> None:
        self._running.discard(delivery)
        try:
            await call
        except Exception as exc:  # the broker redelivers it later: at least once
            logger.warning("settling %s of %r failed: %r", delivery.id, self.stream, exc)

    async def _handle(self, delivery: Delivery, shared: bool) -> None:
        """Decode, filter, deliver and settle one message."""
        if shared:
            self._running.add(delivery)
        try:
            envelope = self._registry.parse(delivery.data)
        except DecodeError as exc:
            await self._dead_letter(delivery, None, "undecodable", exc, shared)
            return
        if envelope.origin == self.origin or (shared and envelope.group == self.group):
            # Our own event (broadcast), or one a worker of this group already ran as its
            # sender: its receivers ran in the send.
            if shared:
                await self._settle(delivery, delivery.ack())
            return
        if self._dedupe is not None and self._dedupe.seen(envelope.id):
            if shared:
                await self._settle(delivery, delivery.ack())
            return
        if shared and delivery.attempt > self._max_attempts:
            # The last attempt's worker died or stalled: no receiver gets it again.
            attempts = delivery.attempt - 1
            await self._dead_letter(delivery, envelope, "max_attempts", None, shared, attempts)
            return
        try:
            event = self._registry.resolve(envelope)
        except DecodeError as exc:
            await self._dead_letter(delivery, envelope, "undecodable", exc, shared)
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
        trail.error_type = f"{type(error).__module__}.{type(error).__qualname__}"
        trail.error = str(error)[:2000]
        trail.receivers = ",".join(failed)
        if not shared:
            return  # broadcast has no redelivery; send_robust logged the failure
        if not failed:  # the send itself refused the event (a typed signal's check, say)
            await self._dead_letter(delivery, envelope, "undeliverable", None, shared)
        elif delivery.attempt >= self._max_attempts:
            await self._dead_letter(delivery, envelope, "max_attempts", None, shared)
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
        untoken = outgoing.set(None)
        send = type(event.signal).send_robust  # not the bridged one: this is no new event
        try:
            hooks = _hooks.hooks
            if hooks is None:
                results = await send(event.signal, event.sender, **event.kwargs)
            else:
                headers = dict(event.envelope.headers)
                with hooks.on_deliver(event.envelope.signal, headers, attempt):
                    results = await send(event.signal, event.sender, **event.kwargs)
        except Exception as exc:
            logger.error("delivering %s from %r failed: %r", event.envelope.id, self.stream, exc)
            return exc, []
        finally:
            outgoing.reset(untoken)
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
        shared: bool,
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
            error_type = f"{type(error).__module__}.{type(error).__qualname__}"
            message = str(error)[:2000]
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
            "stream": self.stream,
            "mode": self.mode,
            "consumer": self.consumer if shared else self.origin,
        }
        if self.group:
            provenance["group"] = self.group
        if envelope is not None:
            provenance["signal"] = envelope.signal
            provenance["envelope_id"] = envelope.id
            provenance["sent_at"] = _iso(envelope.ts)
        logger.error("dead-lettering %s of %r (%s): %s", delivery.id, self.stream, reason, message)
        try:
            await asyncio.wait_for(
                self.transport.dead_letter(delivery.data, provenance), self._publish_timeout
            )
        except Exception as exc:
            # Not acknowledged: the group delivers it again and this is retried.
            logger.error("could not write the dead letter for %s: %r", delivery.id, exc)
            self._running.discard(delivery)
            return
        hooks = _hooks.hooks
        if hooks is not None:
            hooks.on_dead_letter(envelope.signal if envelope is not None else "", reason)
        if shared:
            await self._settle(delivery, delivery.ack())
