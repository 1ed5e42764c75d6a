"""Carry chosen signals to other processes over a message broker.

``Bridge(transport, stream=..., mode=..., signals=[...], senders={...})`` does everything that
does not depend on the broker; a transport moves the bytes: :class:`RedisStreams` (Redis
Streams, ``pip install "asyncsignals[redis]"``), :class:`JetStream` (NATS JetStream,
``pip install "asyncsignals[nats]"``) and :class:`InMemory` (one process, for tests). The
transports are imported on first use, so ``import asignals.bridge`` needs no client library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._bridge import Bridge, Mode
from ._codec import DecodeError, EncodeError, JsonCodec
from ._dedup import Deduplicator
from ._envelope import Encoded
from ._publisher import PublishError
from ._transport import DeadLetter, Delivery, Subscription, Transport, Unavailable

if TYPE_CHECKING:
    from .jetstream import JetStream
    from .memory import InMemory
    from .redis import RedisStreams

__all__ = [
    "Bridge",
    "DeadLetter",
    "DecodeError",
    "Deduplicator",
    "Delivery",
    "EncodeError",
    "Encoded",
    "InMemory",
    "JetStream",
    "JsonCodec",
    "Mode",
    "PublishError",
    "RedisStreams",
    "Subscription",
    "Transport",
    "Unavailable",
]

#: Transports by class name -> the submodule defining it (imported when first used).
_TRANSPORTS = {
    "RedisStreams": "redis",
    "JetStream": "jetstream",
    "InMemory": "memory",
}


def __getattr__(name: str) -> Any:
    module = _TRANSPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
