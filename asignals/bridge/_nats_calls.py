"""The nats-py calls whose own annotations leave a part unknown, with the types they really take,
and the two per-message paths the bridge takes around nats-py's general ones.

nats-py passes options through an unannotated ``**kwargs`` (``nats.connect``,
``Client.jetstream``, ``JetStreamManager.add_stream`` and ``add_consumer``) and annotates
``Client.subscribe``'s ``future`` as a bare ``asyncio.Future``, so a strict checker sees those
callables as partly unknown. The protocols below state them as the bridge calls them; each
function is the one place where its untyped call enters the typed code (a ``cast``), and the
JetStream tests run every one of them against a real server.

Every publish acknowledgement and every delivery is one NATS message, so what nats-py does per
message is most of the transport's cost: :func:`listen` hands messages over without its queue
and task, :func:`publish_batch` writes a batch without its per-message checks.

At import time nats-py is needed for type checking only (``connect`` and ``publish_batch``
import it when called): importing this module never fails, and
:mod:`asignals.bridge.jetstream` keeps its own clear error when the extra is missing.
"""

from __future__ import annotations

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
    """``nats.connect(servers, **options)``: ``options`` are ``Client.connect``'s keywords."""
    import nats  # here, not above: see the module's docstring

    return await cast(_Nats, nats).connect(servers, **options)


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
