"""The nats-py calls whose own annotations leave a part unknown, with the types they really take.

nats-py passes options through an unannotated ``**kwargs`` (``nats.connect``,
``Client.jetstream``, ``JetStreamManager.add_stream`` and ``add_consumer``) and annotates
``Client.subscribe``'s ``future`` as a bare ``asyncio.Future``, so a strict checker sees those
callables as partly unknown. The protocols below state them as the bridge calls them; each
function is the one place where its untyped call enters the typed code (a ``cast``), and the
JetStream tests run every one of them against a real server.

At import time nats-py is needed for type checking only (``connect`` imports it when called):
importing this module never fails, and :mod:`asignals.bridge.jetstream` keeps its own clear
error when the extra is missing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import api
    from nats.js.client import JetStreamContext
    from nats.js.manager import JetStreamManager

__all__ = ["add_consumer", "add_stream", "connect", "jetstream", "subscribe"]


class _Nats(Protocol):
    async def connect(self, servers: str, **options: Any) -> Client: ...


class _Client(Protocol):
    def jetstream(self, *, timeout: float) -> JetStreamContext: ...

    async def subscribe(
        self, subject: str, *, cb: Callable[[Msg], Awaitable[None]]
    ) -> Subscription: ...


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


async def subscribe(
    client: Client, subject: str, cb: Callable[[Msg], Awaitable[None]]
) -> Subscription:
    """``client.subscribe(subject, cb=cb)``."""
    return await cast(_Client, client).subscribe(subject, cb=cb)


async def add_stream(js: JetStreamManager, config: api.StreamConfig) -> api.StreamInfo:
    """``js.add_stream(config)``."""
    return await cast(_Manager, js).add_stream(config)


async def add_consumer(
    js: JetStreamManager, stream: str, config: api.ConsumerConfig
) -> api.ConsumerInfo:
    """``js.add_consumer(stream, config)``."""
    return await cast(_Manager, js).add_consumer(stream, config)
