"""``RedisBridge``: the bridge over Redis Streams in one constructor.

``RedisBridge(url, **options)`` is ``Bridge(RedisStreams(url, maxlen=..., dead_letter_stream=...,
dead_letter_maxlen=..., block=...), **options)``: code written for the Redis-only bridge keeps
working, and moves to another transport by changing this one constructor.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from ..bridge import (
    Bridge,
    DecodeError,
    Deduplicator,
    EncodeError,
    JsonCodec,
    Mode,
    PublishError,
    RedisStreams,
)

__all__ = [
    "DecodeError",
    "Deduplicator",
    "EncodeError",
    "JsonCodec",
    "Mode",
    "PublishError",
    "RedisBridge",
]


class RedisBridge(Bridge):
    """A :class:`~asignals.bridge.Bridge` over :class:`~asignals.bridge.RedisStreams`.

    ``redis`` (a URL or a client), ``maxlen``, ``dead_letter_stream``, ``dead_letter_maxlen``
    and ``block`` configure the transport; every other keyword is the Bridge's.
    """

    def __init__(
        self,
        redis: str | Redis = "redis://127.0.0.1:6379/0",
        *,
        maxlen: int | None = 100_000,
        dead_letter_stream: str | None = None,
        dead_letter_maxlen: int | None = 10_000,
        block: float = 1.0,
        **options: Any,
    ) -> None:
        transport = RedisStreams(
            redis,
            maxlen=maxlen,
            dead_letter_stream=dead_letter_stream,
            dead_letter_maxlen=dead_letter_maxlen,
            block=block,
        )
        super().__init__(transport, **options)
        self.dead_letter_stream = dead_letter_stream or f"{self.stream}:dead"
        """The Redis stream key dead letters go to: read it with ``XRANGE`` to inspect them.

        ``dead_letter_stream=`` if given, else ``<stream>:dead``.
        """
