"""The nats-py calls whose own annotations leave a part unknown, with the types they really take,
and the two per-message paths the bridge takes around nats-py's general ones.

nats-py passes options through an unannotated ``**kwargs`` (``nats.connect``,
``Client.jetstream``, ``JetStreamManager.add_stream`` and ``add_consumer``) and annotates
``Client.subscribe``'s ``future`` as a bare ``asyncio.Future``, so a strict checker sees those
callables as partly unknown. The protocols below state them as the bridge calls them; each
function is the one place where its untyped call enters the typed code (a ``cast``), and the
JetStream tests run every one of them against a real server.

Every publish acknowledgement and every delivery is one NATS message, so what nats-py does per
message is most of the transport's cost. Three short ways around its general code, each for the
bridge's own traffic only (everything else takes nats-py's way):

- :func:`listen` subscribes with a sink in place of a callback: no queue, task or coroutine
  per message;
- :func:`connect` gives the client a parser that hands the plain messages of those
  subscriptions (``MSG`` lines: acknowledgements, deliveries) to their sink as it reads them,
  without nats-py's regular expressions and per-message coroutines; anything else (headers,
  ``PING``, ``INFO``, errors, a message cut by the end of a read) goes to nats-py's parser,
  in order;
- :func:`publish_batch` writes a batch without nats-py's per-message checks.

At import time nats-py is needed for type checking only (``connect`` and ``publish_batch``
import it when called): importing this module never fails, and
:mod:`asignals.bridge.jetstream` keeps its own clear error when the extra is missing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import api
    from nats.js.client import JetStreamContext
    from nats.js.manager import JetStreamManager
    from nats.protocol.parser import Parser

__all__ = ["add_consumer", "add_stream", "connect", "jetstream", "listen", "publish_batch"]

logger = logging.getLogger("asignals.bridge")


class _Sink:
    """The ``future=`` of a subscription made by :func:`listen`: each message goes to a function.

    nats-py hands a ``cb=`` subscription's messages to the callback through a queue and a task
    that awaits it, a coroutine per message. A subscription made with ``future=`` instead gets
    ``future.set_result(msg)`` called as each message is parsed (nats-py's old-style request
    path; without ``max_msgs`` it never unsubscribes by itself): no queue, no task switch, no
    coroutine, about a microsecond less per message.
    """

    __slots__ = ("_on_message",)

    def __init__(self, on_message: Callable[[Msg], None]) -> None:
        self._on_message = on_message

    def cancelled(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        # This runs inside nats-py's reading loop, where an exception counts as a broken
        # connection: a bug of ours must cost one message, not a reconnection.
        try:
            self._on_message(msg)
        except Exception:
            logger.exception("handling a NATS message on %s failed", msg.subject)


class _Listened(Protocol):
    _future: object  # a _Sink for the subscriptions made by listen()


class _Nats(Protocol):
    async def connect(self, servers: str, **options: Any) -> Client: ...


class _Client(Protocol):
    def jetstream(self, *, timeout: float) -> JetStreamContext: ...

    async def subscribe(self, subject: str, *, future: _Sink) -> Subscription: ...

    async def _send_command(self, cmd: bytes) -> None: ...

    async def _flush_pending(self) -> object: ...


class _Manager(Protocol):
    async def add_stream(self, config: api.StreamConfig) -> api.StreamInfo: ...

    async def add_consumer(self, stream: str, config: api.ConsumerConfig) -> api.ConsumerInfo: ...


async def connect(servers: str, **options: Any) -> Client:
    """``nats.connect(servers, **options)`` with the bridge's parser (see the module's
    docstring): ``options`` are ``Client.connect``'s keywords."""
    from nats.aio.client import Client  # here, not above: see the module's docstring

    client = Client()
    client._ps = _parser_class()(client)  # before any byte is read: no state to carry over
    try:
        await cast(_Nats, client).connect(servers, **options)
    except BaseException:
        # Failed or cancelled in the handshake, it may still hold a socket: let it go.
        with contextlib.suppress(Exception):
            await client.close()
        raise
    return client


def _take_listened(client: Client, buf: bytearray) -> tuple[int, bool]:
    """Hand the complete ``MSG``s at the front of ``buf`` whose subscription was made by
    :func:`listen` to its sink: how many bytes they took (the caller deletes them), and
    whether what follows is one of them still arriving (so nats-py need not look at it yet).

    Stops at the first thing that is anything else, so that nats-py parses the rest in order.
    The line is ``MSG <subject> <sid> [<reply>] <size>``, then the payload, each ending CRLF.
    """
    subs = cast("dict[int, _Listened]", client._subs)
    build = client._build_message
    start = count = size = 0
    while buf.startswith(b"MSG ", start):
        end = buf.find(b"\r\n", start)
        if end < 0:
            return start, True  # the line is cut: the next read completes it
        fields = buf[start + 4 : end].split()
        if len(fields) == 4:
            subject, sid_field, reply, size_field = fields
        elif len(fields) == 3:
            subject, sid_field, size_field = fields
            reply = bytearray()
        else:
            break
        if not (sid_field.isdigit() and size_field.isdigit()):
            break  # nats-py's parser reports it
        sid = int(sid_field)
        sub = subs.get(sid)
        sink = sub._future if sub is not None else None
        if type(sink) is not _Sink:
            break
        body = end + 2
        stop = body + int(size_field)
        if len(buf) < stop + 2:
            return start, True  # the payload is cut
        data = bytes(buf[body:stop])
        sink.set_result(build(sid, bytes(subject), bytes(reply), data, None))
        count += 1
        size += len(data)
        start = stop + 2
    if count:
        client.stats["in_msgs"] += count
        client.stats["in_bytes"] += size
    return start, False


@functools.cache
def _parser_class() -> type[Parser]:
    from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

    class BridgeParser(Parser):
        """nats-py's parser, with the short way for :func:`listen` subscriptions in front."""

        def __init__(self, client: Client) -> None:
            super().__init__(client)  # pyright: ignore[reportUnknownMemberType] - nc: unannotated
            self._client = client

        async def parse(self, data: bytes = b"") -> None:
            buf = self.buf
            buf.extend(data)
            if self.state == AWAITING_CONTROL_LINE:  # not inside a message nats-py began
                taken, cut = _take_listened(self._client, buf)
                if taken:
                    del buf[:taken]
                if cut or not buf:
                    return
            await super().parse()

    return BridgeParser


def jetstream(client: Client, *, timeout: float) -> JetStreamContext:
    """``client.jetstream(timeout=timeout)``."""
    return cast(_Client, client).jetstream(timeout=timeout)


async def listen(client: Client, subject: str, on_message: Callable[[Msg], None]) -> Subscription:
    """Subscribe to ``subject``; ``on_message(msg)`` runs for each message as it is read.

    ``on_message`` is a plain function called from the connection's reading loop: it must be
    quick and must not block (it stores the message or resolves a future).
    """
    return await cast(_Client, client).subscribe(subject, future=_Sink(on_message))


async def publish_batch(
    client: Client, subject: str, reply: str, payloads: Sequence[bytes]
) -> None:
    """``await client.publish(subject, data, reply=reply)`` for each payload, in one write.

    nats-py's ``publish`` validates both subjects, builds and counts the command and queues a
    flush for each message (about 2 microseconds); the bridge checked its names once, so the
    batch's commands are built together and queued with one call of the private methods
    ``publish`` itself ends in. The caller checks that the client is connected, as ``publish``
    does; a payload over the server's limit raises ``MaxPayloadError`` as ``publish`` would.
    """
    if not payloads:
        return
    import nats.errors  # here, not above: see the module's docstring

    limit = client.max_payload
    if any(len(data) > limit for data in payloads):
        raise nats.errors.MaxPayloadError
    head = f"PUB {subject} {reply} ".encode()
    command = b"".join([b"%s%d\r\n%s\r\n" % (head, len(data), data) for data in payloads])
    client.stats["out_msgs"] += len(payloads)
    client.stats["out_bytes"] += sum(map(len, payloads))
    raw = cast(_Client, client)
    await raw._send_command(command)
    await raw._flush_pending()


async def add_stream(js: JetStreamManager, config: api.StreamConfig) -> api.StreamInfo:
    """``js.add_stream(config)``."""
    return await cast(_Manager, js).add_stream(config)


async def add_consumer(
    js: JetStreamManager, stream: str, config: api.ConsumerConfig
) -> api.ConsumerInfo:
    """``js.add_consumer(stream, config)``."""
    return await cast(_Manager, js).add_consumer(stream, config)
