"""The :class:`Bridge`: configuration, lifecycle and the sending half of carrying signals across
processes, over a :class:`~asignals.bridge._transport.Transport`. The reading half (retries,
dead letters, claims) is :mod:`asignals.bridge._receiving`; the queue to the broker is
:mod:`asignals.bridge._publisher`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Literal, TypeVar, cast

from .._reserved import RESERVED
from . import _hooks
from ._backoff import Backoff
from ._codec import DecodeError, EncodeError, JsonCodec
from ._dedup import Deduplicator
from ._envelope import Encoded, Event, Registry
from ._publisher import Publisher, PublishError
from ._receiving import Receiver
from ._sending import Outgoing, delivering, install, same_objects, uninstall
from ._transport import DeadLetter, Transport, Unavailable

__all__ = ["Bridge", "Mode"]

logger = logging.getLogger("asignals.bridge")

Mode = Literal["broadcast", "shared", "publish"]
"""How a bridge takes part in its stream, the ``mode=`` of :class:`Bridge`.

``"broadcast"``: every bridge on the stream gets every event. ``"shared"``: one bridge of each
``group`` handles each event, as a worker pool. ``"publish"``: it only sends, never receives.
"""
S = TypeVar("S")


def _is_remote_echo(signal: Any, sender: Any, kwargs: dict[str, Any]) -> bool:
    """True when this send is the bridge re-sending a remote event (so it must not publish).

    Identity of every object matters: a receiver that sends the same signal again with new
    values during a remote delivery is a new event and is published.
    """
    event: Event | None = delivering.get()
    if event is None or event.signal is not signal or event.sender is not sender:
        return False
    return same_objects(event.kwargs, kwargs)


def _signal_list(signals: object) -> list[Any]:
    if callable(getattr(signals, "send_robust", None)):
        return [signals]  # one signal, not a list of them
    problem = TypeError(
        f"signals= takes a signal or a list of signals, got {signals!r}; "
        f"e.g. signals=[order_placed, order_shipped]"
    )
    if isinstance(signals, str | bytes):
        raise problem
    try:
        return list(cast("Iterable[Any]", signals))
    except TypeError:
        raise problem from None


def _sender_map(senders: object) -> Mapping[str, Any]:
    if senders is None:
        return {}
    if isinstance(senders, Mapping):
        return cast("Mapping[str, Any]", senders)
    try:
        given = list(cast("Iterable[Any]", senders))
    except TypeError:
        given = [senders]
    names = [n for n in (getattr(s, "__name__", None) for s in given[:3]) if n]
    example = ", ".join(f"{n!r}: {n}" for n in names) or "'Order': Order"
    raise TypeError(
        f"senders= maps the name each sender travels as to the sender, got {senders!r}; "
        f"write senders={{{example}}} (the same names in every process)"
    )


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
        :class:`PublishError`. Unconfirmed events are dropped, logged, after the same time,
        and :meth:`start` waits no longer for a broker that is away.
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
        for option, pair in (
            ("reconnect_backoff", reconnect_backoff),
            ("retry_backoff", retry_backoff),
        ):
            try:
                Backoff(*pair)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{option}=(initial, maximum) seconds: {exc}") from None
        signal_list = _signal_list(signals)
        sender_map = _sender_map(senders)
        self.transport = transport
        """The transport this bridge publishes to and reads from (``RedisStreams``, ...).

        Reach the broker through it, e.g. ``InMemory.dead_letters`` in a test.
        """
        self.stream = stream
        """The stream name: bridges on the same stream (and broker) exchange events."""
        self.mode: Mode = mode
        """How this bridge takes part in its stream: ``"broadcast"``, ``"shared"`` or ``"publish"``.

        See :data:`Mode`; ``"publish"`` bridges send and never receive.
        """
        self.group = group
        """The consumer group of a ``"shared"`` bridge (one per service), else ``None``."""
        host, pid, token = socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8]
        self.origin = f"{host}:{pid}:{token}"
        """``host:pid:token``, unique per bridge: written into every envelope it publishes.

        A bridge never delivers its own events back to itself: their local receivers already
        ran in the send.
        """
        self.consumer = consumer or f"{host}-{pid}-{token}"
        """This worker's name in its ``group`` (the ``consumer=`` given, else ``host-pid-token``).

        Give a stable name to a worker that restarts: it then takes back the events it held
        unacknowledged when it stopped, instead of leaving them until ``claim_idle``.
        """
        self.codec = codec if codec is not None else JsonCodec()
        """The :class:`JsonCodec` that turns senders and keyword values into envelopes.

        Register your own classes on it (``bridge.codec.register(Order)``), under the same
        name in every process that sends or receives them.
        """
        self._registry = Registry(self.codec, self.origin, group, max_message_bytes)
        self._confirm = confirm
        self._publish_timeout = float(publish_timeout)
        self._max_pending = max_pending
        self._stop_timeout = float(stop_timeout)
        self._claim_idle = float(claim_idle)
        self._max_attempts = max_attempts
        self._batch_size = batch_size
        self._reconnect_backoff = reconnect_backoff
        self._retry_backoff = retry_backoff
        self._dedupe = dedupe
        self._uid = f"asignals.bridge:{self.origin}:{stream}"
        self._publisher: Publisher | None = None
        self._receiver: Receiver | None = None
        #: Sends encoded and not yet taken by the publishing receiver (see ``_sending``).
        self._outgoing: list[Outgoing] = []
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
        or this service (shared). If the broker is down, ``start`` logs a warning and returns
        after at most ``publish_timeout``, so an application can boot while the broker is
        restarting: sends fail with :class:`PublishError` after ``publish_timeout`` until it
        is back, and the publisher and the reader keep retrying with backoff, connecting by
        themselves once it answers (broadcast: the events sent from then on; shared: the
        group's). A configuration the broker can never take (a stream name it cannot hold,
        an existing stream that does not fit) raises at once.
        """
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout
        away = await self._open(deadline)
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
            self._receiver = Receiver(
                self.transport,
                self._registry,
                stream=self.stream,
                mode=self.mode,
                group=self.group,
                consumer=self.consumer,
                origin=self.origin,
                claim_idle=self._claim_idle,
                max_attempts=self._max_attempts,
                batch_size=self._batch_size,
                reconnect_backoff=self._reconnect_backoff,
                retry_backoff=self._retry_backoff,
                dedupe=self._dedupe,
                stop_timeout=self._stop_timeout,
                write_timeout=self._publish_timeout,
            )
            try:
                reading = await self._receiver.start(max(0.0, deadline - loop.time()))
            except RuntimeError as exc:
                await self.stop()
                raise RuntimeError(f"the reader of {self!r} died") from exc.__cause__
            if reading:
                away = None  # the broker answered the reader: it is back
            elif away is None:
                away = self._receiver.last_error or self._silent()
        for signal in self._registry.signals.values():
            self._hook(signal)
        if away is not None:
            logger.warning(
                "the broker of %r is unreachable (%r); started anyway, the bridge keeps "
                "retrying in the background (sends fail with PublishError after "
                "publish_timeout=%ss until it answers)",
                self,
                away,
                self._publish_timeout,
            )

    async def _open(self, deadline: float) -> Exception | None:
        """Open the transport within ``deadline`` (loop time): why it could not reach the
        broker, or ``None``. Refusals other than :class:`Unavailable` propagate."""
        try:
            async with asyncio.timeout_at(deadline):
                await self.transport.open(self.stream)
        except Unavailable as exc:
            return exc
        except TimeoutError:
            return self._silent()
        except BaseException:
            await self.transport.close()  # refused: start fails and leaves no connection open
            raise
        return None

    def _silent(self) -> TimeoutError:
        return TimeoutError(f"no answer within publish_timeout={self._publish_timeout}s")

    async def stop(self) -> None:
        """Finish the event being delivered, stop reading, write what is queued, disconnect.

        Waits at most ``stop_timeout`` for the receivers of the event being delivered (shared
        mode hands events fetched but not started back to the group at once) and at most
        ``publish_timeout`` for queued events to reach the broker.
        """
        if not self.running:
            return
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            await receiver.stop()
        for signal in self._registry.signals.values():
            self._unhook(signal)
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        try:
            await asyncio.wait_for(self.transport.close(), 5.0)
        except Exception as exc:
            logger.warning("closing %r failed: %r", self.transport, exc)

    async def flush(self) -> None:
        """Wait until every event sent so far is stored (useful with ``confirm=False``)."""
        if self._publisher is not None:
            await self._publisher.flush()

    # -- publishing ------------------------------------------------------------------------

    def _hook(self, signal: Any) -> None:
        install(signal, self)
        signal.connect(self._publish, weak=False, dispatch_uid=self._uid)

    def _unhook(self, signal: Any) -> None:
        signal.disconnect(dispatch_uid=self._uid)
        uninstall(signal, self)

    def _prepare(self, signal: Any, sender: Any, kwargs: dict[str, Any], local: bool) -> Outgoing:
        """Encode one send for this bridge before any receiver runs (see ``_sending``)."""
        if local:
            return Outgoing(signal, sender, kwargs, {}, None)
        name = self._registry.signal_name(signal)
        if name is None:
            raise EncodeError(f"{signal!r} is not bridged by {self!r}")
        body = self._registry.body(name, sender, kwargs)
        return Outgoing(signal, sender, kwargs, body, self._registry.dump(body))

    def _take(self, signal: Any, sender: Any, kwargs: dict[str, Any]) -> Outgoing | None:
        """The encoded event of the send this receiver call belongs to, removed from the list.

        Newest first: it is almost always the last one appended (the list holds only sends
        whose receivers are running).
        """
        pending = self._outgoing
        for index in range(len(pending) - 1, -1, -1):
            out = pending[index]
            if out.matches(signal, sender, kwargs):
                del pending[index]
                out.signal = None  # taken: the wrapper need not look for it
                return out
        return None

    def _forget(self, out: Outgoing) -> None:
        for index, pending in enumerate(self._outgoing):
            if pending is out:
                del self._outgoing[index]
                return

    def _publish(self, signal: Any, sender: Any, **kwargs: Any) -> Awaitable[None] | None:
        """The receiver connected to every bridged signal: queue the encoded event, maybe wait.

        It is a sync function that returns a future when the send must wait for the broker
        (the core awaits an awaitable a receiver returns), so no coroutine or task is created
        per event, which is most of the cost of publishing.
        """
        publisher = self._publisher
        if publisher is None:
            return None
        out = self._take(signal, sender, kwargs)
        if out is not None:
            if out.data is None:
                return None  # a local-only send
            body, data = out.body, out.data
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
        """Whether ``signal`` is attached to this bridge, so its sends are published.

        An outbox asks it to choose which sends get a row in its table.
        """
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
