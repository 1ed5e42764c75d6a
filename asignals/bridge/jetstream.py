"""NATS JetStream as a bridge transport (nats-py): ``Bridge(JetStream(url), stream=..., ...)``.

How the bridge's ideas map onto JetStream:

- The bridge's ``stream`` is a JetStream stream of that name capturing the subject of the same
  name (created with :class:`JetStream`'s limits if missing; an existing one is used as it is).
  Dead letters go to the stream and subject ``<stream>:dead``, the original bytes as payload
  and the provenance as message headers.
- ``mode="broadcast"``: an ephemeral *ordered* consumer per bridge (no acks, in memory on the
  server), started at the stream's tail and re-created from the next sequence whenever it is
  lost (server restart, a gap in its sequence), so nothing is skipped or seen twice.
- ``mode="shared"``: a durable consumer named after the group with explicit acks. The
  bridge's ``claim_idle`` is its ``ack_wait`` (a killed worker's events go to another worker
  after it), a retry is a ``nak`` with the bridge's backoff as delay, and "still working" is
  an in-progress ack. Its ``max_deliver`` is the bridge's ``max_attempts`` plus the one
  delivery on which the bridge dead-letters an event whose last attempt's worker died.
- Publishing waits for JetStream's acknowledgement of every message (stored in the stream).
  As on Redis, a batch retried after a lost reply can store a message twice: delivery is at
  least once, and :class:`~asignals.bridge.Deduplicator` drops repeats on the consumer side.
- A bridge starts while NATS is away: every call connects if no connection was made yet
  (one attempt at a time), and raises ``Unavailable`` while it cannot. Once connected,
  nats-py reconnects by itself, forever; while it is away the calls raise ``Unavailable``
  and the bridge backs off and retries as it does on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from . import _nats_calls
from ._jetstream_pull import ConsumerLost, Puller
from ._transport import Delivery, ReadMode, Subscription, Unavailable

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js import api
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "asignals.bridge.jetstream needs nats-py: pip install 'asyncsignals[nats]'"
    ) from exc

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

__all__ = ["JetStream"]

logger = logging.getLogger("asignals.bridge")

_STREAMING = 10_000  # messages one broadcast pull request may bring
_INVALID_NAME = frozenset(" \t\r\n.*>/\\")
#: nats-py's errors after which the same call can succeed later (server away or restarting).
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.UnexpectedEOF,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)

_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*_TRANSIENT, nats.errors.Error)
_DELETE_ERRORS: tuple[type[BaseException], ...] = (*_TRANSIENT, nats.js.errors.NotFoundError)


def _check_name(kind: str, name: str) -> None:
    bad = sorted(_INVALID_NAME.intersection(name))
    if not name or bad:
        raise ValueError(
            f"{name!r} cannot be a JetStream {kind} name: it must be non-empty and free of "
            f"whitespace, '.', '*', '>', '/' and '\\' (found {bad})"
        )


class _Batch:
    """The acknowledgements one published batch still waits for."""

    __slots__ = ("done", "left")

    def __init__(self, size: int, done: asyncio.Future[None]) -> None:
        self.left = size
        self.done = done

    def fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


def _ack_error(msg: Msg) -> BaseException:
    """What a publish acknowledgement that is not a success says (transient or not)."""
    if msg.headers and msg.headers.get("Status") == "503":
        return nats.js.errors.NoStreamResponseError()  # no stream captures the subject
    try:
        error = json.loads(msg.data)["error"]
        code, text = error.get("code"), error.get("description")
    except (ValueError, KeyError, TypeError, AttributeError):
        return Unavailable(f"JetStream answered a publish with {msg.data[:200]!r}")
    if code == 503:  # JetStream itself is not ready (starting, no quorum): later may work
        return Unavailable(f"JetStream is unavailable: {text}")
    return RuntimeError(f"JetStream refused the message: {text} (code {code})")


def _sequences(msg: Msg) -> tuple[str, int, int, int]:
    """(consumer, delivery count, stream sequence, consumer sequence) from the ack subject.

    ``msg.metadata`` parses the same, plus a datetime and two dataclasses per message.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return tokens[3], int(tokens[4]), int(tokens[5]), int(tokens[6])
    meta = msg.metadata  # the longer form with a domain and an account hash
    return meta.consumer, meta.num_delivered, meta.sequence.stream, meta.sequence.consumer


class JetStream:
    """A bridge transport on NATS JetStream: pass it to :class:`~asignals.bridge.Bridge`.

    ``JetStream("nats://127.0.0.1:4222")`` is all most applications need; the rest sets how
    the streams are created when they do not exist yet (an existing stream keeps the limits
    its operator gave it):

    ``max_msgs`` / ``max_age``
        limits of the event stream (oldest messages go first), like ``maxlen`` on Redis.
    ``dead_letter_stream`` / ``dead_letter_max_msgs``
        where dead letters go (default ``<stream>:dead``, as stream and subject) and its limit.
    ``storage`` / ``replicas``
        ``"file"`` (survives a server restart) or ``"memory"``; replicas in a cluster.
    ``block``
        how long one fetch waits for a message before returning empty (the bridge's stop and
        housekeeping run between fetches).
    ``request_timeout`` / ``connect_timeout`` / ``reconnect_wait``
        JetStream API calls, the first connection, the pause between reconnection attempts.
    ``options``
        passed to ``nats.connect`` (credentials, TLS, ...).
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        max_msgs: int | None = 100_000,
        max_age: float | None = None,
        dead_letter_stream: str | None = None,
        dead_letter_max_msgs: int | None = 10_000,
        storage: Literal["file", "memory"] = "file",
        replicas: int = 1,
        block: float = 1.0,
        request_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 0.25,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', not {storage!r}")
        for name, value in (
            ("block", block),
            ("request_timeout", request_timeout),
            ("connect_timeout", connect_timeout),
            ("reconnect_wait", reconnect_wait),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.url = url
        """The NATS server URL this transport connects to (``nats://host:port``)."""
        self._max_msgs = max_msgs if max_msgs is not None else -1
        self._limits: dict[str, Any] = {
            "max_age": max_age,
            "storage": api.StorageType.FILE if storage == "file" else api.StorageType.MEMORY,
            "num_replicas": replicas,
        }
        if dead_letter_stream is not None:
            _check_name("stream", dead_letter_stream)
        self._dead_name = dead_letter_stream
        self._dead_max_msgs = dead_letter_max_msgs if dead_letter_max_msgs is not None else -1
        self._block = block
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self._options = dict(options or {})
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._acks = ""  # the reply subject prefix of publish acknowledgements
        self._batches: dict[str, _Batch] = {}  # in flight, by batch id
        self._batch_ids = itertools.count()
        self.stream = ""
        """The bridge's stream name, set when the bridge opens the transport (``""`` before).

        Used as both the JetStream stream and its subject.
        """
        self.dead_letter_stream = ""
        """Where dead letters go (stream and subject), set when the bridge opens the transport.

        ``dead_letter_stream=`` if given, else ``<stream>:dead``.
        """
        self._stream_ready = False
        self._dead_ready = False
        self._connecting: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"JetStream({self.url!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, stream: str) -> None:
        """Bind to ``stream``, connect and make sure the stream exists.

        ``ValueError`` for a stream JetStream cannot hold or one that does not capture its
        subject; ``Unavailable`` while NATS is away, after which every call connects again.
        """
        _check_name("stream", stream)
        self.stream = stream
        self.dead_letter_stream = self._dead_name or f"{stream}:dead"
        await self._ensure_stream()

    async def _connected(self) -> JetStreamContext:
        """The JetStream context, connecting first if no connection was made yet.

        One attempt at a time, shared by every caller (publisher, reader, dead letters) and
        shielded: a caller cancelled by its own deadline leaves the attempt to the others, so
        no half-made connection is left behind.
        """
        if self._js is None:
            attempt = self._connecting
            if attempt is None or attempt.done():
                attempt = self._connecting = asyncio.create_task(self._connect())
                # Retrieved here: every waiter may have been cancelled before it ended.
                attempt.add_done_callback(lambda t: t.cancelled() or t.exception())
            await asyncio.shield(attempt)
        return self._context()

    async def _connect(self) -> None:
        client = await self._dial()
        acks = client.new_inbox()
        try:
            await _nats_calls.listen(client, f"{acks}.*", self._on_ack)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await client.close()
            if isinstance(exc, _TRANSIENT):
                raise Unavailable(f"NATS at {self.url} went away: {exc}") from exc
            raise
        self._client, self._acks = client, acks
        self._js = _nats_calls.jetstream(client, timeout=self._request_timeout)

    async def _dial(self) -> Client:
        async def on_error(exc: Exception) -> None:
            logger.debug("NATS %s: %s", self.url, exc)

        async def on_disconnect() -> None:
            lost = Unavailable(f"NATS at {self.url} disconnected before acknowledging")
            for batch in self._batches.values():
                batch.fail(lost)

        try:
            # One try (and one retry) per attempt: the bridge's publisher and reader own the
            # backoff between attempts. Once connected, nats-py reconnects forever by itself
            # (set below).
            client = await _nats_calls.connect(
                self.url,
                name="asignals bridge",
                connect_timeout=self._connect_timeout,
                reconnect_time_wait=self._reconnect_wait,
                max_reconnect_attempts=1,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                **self._options,
            )
        except _CONNECT_ERRORS as exc:
            raise Unavailable(f"NATS at {self.url} is not reachable: {exc}") from exc
        client.options["max_reconnect_attempts"] = -1
        return client

    async def close(self) -> None:
        """Close the connection after writing what is buffered (acks included)."""
        attempt, self._connecting = self._connecting, None
        if attempt is not None and not attempt.done():
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
        client, self._client, self._js = self._client, None, None
        self._stream_ready = self._dead_ready = False
        if client is not None and not client.is_closed:
            try:
                await client.close()
            except Exception as exc:  # closing a broken connection: nothing else to do
                logger.debug("closing NATS connection: %s", exc)

    def _context(self) -> JetStreamContext:
        client, js = self._client, self._js
        if client is None or js is None:
            raise Unavailable(f"NATS at {self.url} is not connected yet")
        if not client.is_connected:
            raise Unavailable(f"NATS at {self.url} is disconnected (reconnecting)")
        return js

    async def _ensure(self, name: str, max_msgs: int, limits: Mapping[str, Any]) -> None:
        js = await self._connected()
        try:
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                config = api.StreamConfig(name=name, subjects=[name], **limits)
                config.max_msgs = max_msgs
                try:
                    await _nats_calls.add_stream(js, config)
                    return
                except nats.js.errors.BadRequestError:
                    info = await js.stream_info(name)  # another process created it first
        except _TRANSIENT as exc:
            raise Unavailable(
                f"JetStream at {self.url} did not answer (is the server running with -js?): {exc}"
            ) from exc
        if name not in (info.config.subjects or ()):
            raise ValueError(
                f"the JetStream stream {name!r} exists but does not capture subject {name!r} "
                f"(its subjects: {info.config.subjects}); the bridge publishes there"
            )

    async def _ensure_stream(self) -> None:
        if not self._stream_ready:
            await self._ensure(self.stream, self._max_msgs, self._limits)
            self._stream_ready = True

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, messages: Sequence[bytes]) -> None:
        """Publish the batch pipelined; return once JetStream acknowledged every message.

        Why not ``js.publish_async``: it makes a future, a token and a JSON parse per message,
        which halves the rate. Here every message's reply subject names its batch, the batch
        goes out in one write, one subscription counts the acknowledgements as they are read,
        and only an error is parsed.
        """
        await self._ensure_stream()
        self._context()
        client = self._client
        assert client is not None
        loop = asyncio.get_running_loop()
        batch_id = str(next(self._batch_ids))
        batch = self._batches[batch_id] = _Batch(len(messages), loop.create_future())
        # No ack within request_timeout: the server is not answering. A timer, not a task.
        silent = Unavailable(f"JetStream at {self.url} did not acknowledge within the timeout")
        timer = loop.call_later(self._request_timeout, batch.fail, silent)
        reply = f"{self._acks}.{batch_id}"
        try:
            await _nats_calls.publish_batch(client, self.stream, reply, messages)
            if messages:
                await batch.done
        except nats.js.errors.NoStreamResponseError as exc:
            self._stream_ready = False  # the server lost the stream: create it again
            raise Unavailable(f"no JetStream stream captures {self.stream!r}") from exc
        except Unavailable:
            raise
        except _TRANSIENT as exc:
            raise Unavailable(f"publishing to JetStream at {self.url} failed: {exc}") from exc
        finally:
            timer.cancel()
            del self._batches[batch_id]

    def _on_ack(self, msg: Msg) -> None:
        batch = self._batches.get(msg.subject[len(self._acks) + 1 :])
        if batch is None:
            return  # a batch given up on already
        if msg.headers or b'"error"' in msg.data:
            batch.fail(_ack_error(msg))
            return
        batch.left -= 1
        if batch.left <= 0 and not batch.done.done():
            batch.done.set_result(None)

    async def dead_letter(self, message: bytes, provenance: Mapping[str, str]) -> None:
        """Store ``message`` in ``<stream>:dead``, the provenance as headers."""
        if not self._dead_ready:
            await self._ensure(self.dead_letter_stream, self._dead_max_msgs, self._limits)
            self._dead_ready = True
        js = self._context()
        try:
            await js.publish(self.dead_letter_stream, message, headers=dict(provenance))
        except nats.js.errors.NoStreamResponseError as exc:
            self._dead_ready = False
            raise Unavailable(f"no JetStream stream captures {self.dead_letter_stream!r}") from exc
        except _TRANSIENT as exc:
            raise Unavailable(f"writing a dead letter to JetStream failed: {exc}") from exc

    # -- receiving -------------------------------------------------------------------------

    async def subscribe(
        self,
        *,
        mode: ReadMode,
        group: str | None,
        consumer: str,
        claim_idle: float,
        max_attempts: int,
    ) -> Subscription:
        """An ordered ephemeral consumer (broadcast) or the group's durable consumer (shared)."""
        if mode == "shared":  # before connecting: a bad name fails start even with NATS away
            if not group:
                raise ValueError("shared mode needs a group")
            _check_name("consumer (group)", group)
        await self._ensure_stream()
        subscription = _Subscription(self, mode, group, claim_idle, max_attempts)
        await subscription.start()
        return subscription


class _Delivery:
    """One JetStream message handed to this worker; settles it with (n)acks."""

    __slots__ = ("_msg", "attempt", "data", "id")

    def __init__(self, msg: Msg, delivered: int, stream_seq: int) -> None:
        self._msg = msg
        self.data = msg.data
        self.id = str(stream_seq)
        self.attempt = delivered

    async def ack(self) -> None:
        await self._settle(self._msg.ack())

    async def retry(self, delay: float) -> None:
        # A delay of 0 is an immediate redelivery (a plain nak).
        await self._settle(self._msg.nak(delay=delay if delay > 0 else None))

    async def extend(self) -> None:
        await self._settle(self._msg.in_progress())

    async def release(self) -> None:
        # JetStream counts the redelivery as an attempt: there is no "un-deliver".
        await self._settle(self._msg.nak())

    @staticmethod
    async def _settle(call: Any) -> None:
        try:
            await call
        except _TRANSIENT as exc:
            raise Unavailable(f"acknowledging a JetStream message failed: {exc}") from exc


class _Subscription:
    """Reads one consumer; re-creates an ordered consumer, re-binds a durable one."""

    def __init__(
        self,
        transport: JetStream,
        mode: ReadMode,
        group: str | None,
        claim_idle: float,
        max_attempts: int,
    ) -> None:
        self._transport = transport
        self._mode = mode
        self._group = group
        self._claim_idle = claim_idle
        # The extra delivery is the one on which the bridge dead-letters an event whose last
        # attempt's worker died (a failed last attempt is dead-lettered at once).
        self._max_deliver = max_attempts + 1
        self._puller: Puller | None = None
        self._consumer = ""
        self._last_stream_seq = 0  # ordered consumer: the last sequence handed out
        self._last_consumer_seq = 0
        self._stream_created: datetime.datetime | None = None

    async def start(self) -> None:
        try:
            name = await self._create()
        except _TRANSIENT as exc:
            raise Unavailable(f"creating the JetStream consumer failed: {exc}") from exc
        client = self._transport._client
        assert client is not None
        block = self._transport._block
        self._puller = Puller(
            client,
            self._transport.stream,
            name,
            wait=block,
            heartbeat=max(0.1, block / 2),
            # Broadcast holds nothing anyone else could take: let the server push ahead.
            streaming=_STREAMING if self._mode == "broadcast" else 0,
        )
        await self._puller.start()

    async def _create(self) -> str:
        transport = self._transport
        js = transport._context()
        stream = transport.stream
        # A stream the server made anew (restarted without its store) restarts its sequences:
        # a consumer re-created for it starts at its beginning, not at the tail or sequence.
        created = (await js.stream_info(stream)).created
        made_anew = self._stream_created is not None and created != self._stream_created
        self._stream_created = created
        if self._mode == "shared":
            assert self._group is not None
            self._consumer = self._group
            config = api.ConsumerConfig(
                durable_name=self._group,
                deliver_policy=api.DeliverPolicy.ALL if made_anew else api.DeliverPolicy.NEW,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self._claim_idle,
                max_deliver=self._max_deliver,
                max_ack_pending=-1,
                filter_subject=stream,
            )
            try:
                info = await js.consumer_info(stream, self._group)
            except nats.js.errors.NotFoundError:
                info = None
            if info is not None:
                current = info.config
                if (
                    abs((current.ack_wait or 0.0) - self._claim_idle) < 1e-3
                    and current.max_deliver == self._max_deliver
                ):
                    return self._group
                # Keep its position and pending messages; only claim_idle/max_attempts change.
                current.ack_wait = self._claim_idle
                current.max_deliver = self._max_deliver
                config = current
            await _nats_calls.add_consumer(js, stream, config)
            return self._group
        # An ordered consumer: from the tail the first time, then after the last it delivered.
        start: dict[str, Any] = {"deliver_policy": api.DeliverPolicy.NEW}
        if made_anew:
            start = {"deliver_policy": api.DeliverPolicy.ALL}
        elif self._last_stream_seq:
            start = {
                "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": self._last_stream_seq + 1,
            }
        consumer = await _nats_calls.add_consumer(
            js,
            stream,
            api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                filter_subject=stream,
                inactive_threshold=max(30.0, 10 * self._transport._block),
                mem_storage=True,
                num_replicas=1,
                **start,
            ),
        )
        self._consumer = consumer.name
        self._last_consumer_seq = 0
        return consumer.name

    async def _recover(self) -> None:
        """The consumer went silent: re-create it if the server lost it, else ask anew."""
        js = self._transport._context()
        try:
            try:
                await js.consumer_info(self._transport.stream, self._consumer)
                if self._mode == "shared":
                    return  # still there (a slow server, a reconnection): just pull again
            except nats.js.errors.NotFoundError:
                self._transport._stream_ready = False  # the stream may be gone as well
                await self._transport._ensure_stream()
            await self._replace()
        except _TRANSIENT as exc:
            raise Unavailable(f"re-creating the JetStream consumer failed: {exc}") from exc

    async def _replace(self) -> None:
        """Point the puller at a new consumer (an ordered one: after deleting the old one)."""
        if self._mode == "broadcast":
            await self._delete(self._transport._context())
        name = await self._create()
        assert self._puller is not None
        self._puller.retarget(name)

    async def _delete(self, js: JetStreamContext) -> None:
        # Best effort: the server drops an idle ephemeral consumer after inactive_threshold.
        with contextlib.suppress(*_DELETE_ERRORS):
            await js.delete_consumer(self._transport.stream, self._consumer)

    async def fetch(self, count: int) -> Sequence[Delivery]:
        puller = self._puller
        if puller is None:
            raise RuntimeError("this subscription is closed")
        self._transport._context()  # Unavailable while disconnected
        try:
            msgs = await puller.fetch(count)
        except ConsumerLost as exc:
            logger.debug("JetStream consumer %s: %s", self._consumer, exc)
            await self._recover()
            return []
        except _TRANSIENT as exc:
            raise Unavailable(f"fetching from JetStream failed: {exc}") from exc
        if self._mode == "broadcast":
            return await self._in_order(msgs)
        return [_Delivery(m, *_sequences(m)[1:3]) for m in msgs]

    async def _in_order(self, msgs: list[Msg]) -> list[Delivery]:
        """Hand out an ordered consumer's messages; on a gap, re-create it after the last."""
        out: list[Delivery] = []
        for msg in msgs:
            consumer, delivered, stream_seq, consumer_seq = _sequences(msg)
            if consumer != self._consumer:
                continue  # in flight from the consumer this one replaced
            if consumer_seq != self._last_consumer_seq + 1:
                logger.debug("ordered consumer %s skipped ahead; re-creating", self._consumer)
                try:
                    await self._replace()
                except _TRANSIENT as exc:
                    raise Unavailable(f"re-creating the JetStream consumer failed: {exc}") from exc
                break
            self._last_consumer_seq = consumer_seq
            self._last_stream_seq = stream_seq
            out.append(_Delivery(msg, delivered, stream_seq))
        return out

    async def close(self) -> None:
        puller, self._puller = self._puller, None
        if puller is None:
            return
        unstarted = await puller.close()
        if self._mode == "shared":
            for msg in unstarted:  # arrived after the last fetch: give them back now
                try:
                    await msg.nak()
                except Exception:  # the connection is going: ack_wait hands them on
                    break
        else:
            client = self._transport._client
            if client is not None and client.is_connected and self._transport._js is not None:
                await self._delete(self._transport._js)
