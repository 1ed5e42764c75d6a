"""The seam between a :class:`~asignals.bridge.Bridge` and a message broker.

A transport moves opaque byte strings (the envelopes) and knows nothing of signals, codecs,
modes' meaning, retry policy, dead-letter provenance or timeouts: all of that lives in the
Bridge, once, so every transport behaves the same. What a transport provides is small:

Lifecycle (one transport instance per Bridge)
    ``await open(stream)`` binds the instance to one stream name, refuses what can never work
    (a name the broker cannot hold, an existing stream that does not fit: ``ValueError``) and
    tries the server once: :class:`Unavailable` if it cannot be reached. The Bridge calls it
    once per ``start()``, within ``publish_timeout``, and starts anyway on ``Unavailable``
    (or when ``open`` runs out of that time): the instance must stay usable, every other call
    connecting by itself and raising :class:`Unavailable` while it cannot, so the Bridge's
    publisher and reader retries connect it once the broker is back.
    ``await close()`` releases everything (idempotent).

Publishing
    ``await publish(messages)`` appends a batch and returns only once the server confirmed
    every message of it (stored durably as far as the broker promises). All or error: on
    :class:`Unavailable` the Bridge retries the batch later (so a lost reply can duplicate a
    message: delivery is at least once); on any other exception it fails the batch's sends.
    The Bridge bounds every call by ``publish_timeout`` and may cancel it: cancellation must
    leave the transport usable.

Dead letters
    ``await dead_letter(message, provenance)`` stores a message that will never be delivered,
    with ``provenance`` (str to str: ``reason``, ``error``, ``error_type``, ``attempts``,
    ``failed_receivers``, ``first_delivery``, ``last_delivery``, ``original_id``, ...; built by
    the Bridge) somewhere an operator can read it: ``<stream>:dead`` or the broker's equivalent.

Receiving
    ``await subscribe(mode=..., group=..., consumer=..., claim_idle=..., max_attempts=...)``
    returns a
    :class:`Subscription`, positioned so that every message published after it returned is
    fetched. ``mode`` is ``"broadcast"`` (every subscription gets every message, no
    acknowledgements) or ``"shared"`` (one subscription of ``group`` gets each message; the
    group is created at the tail of the stream if missing, and survives the process).
    ``await sub.fetch(count)`` returns at most ``count`` :class:`Delivery` objects, waiting at
    most a transport-chosen poll interval (about a second) and possibly returning ``[]``; the
    Bridge cancels a pending ``fetch`` to stop. Shared mode, in this order: this consumer's own
    unacknowledged messages (a restarted worker of the same name), messages whose worker went
    quiet for ``claim_idle`` seconds (neither acked nor extended: it died or its loop is
    stuck), messages due for retry, new messages. The Bridge dead-letters a message on its
    ``max_attempts``-th failed delivery, or on delivery ``max_attempts + 1`` (the last
    attempt's worker died); a broker that caps redeliveries (JetStream's ``max_deliver``) caps
    them there. ``count`` is only what the Bridge can start
    now: a transport must not hold back more than it returns (held messages would look busy
    to the rest of the group).

A :class:`Delivery` (shared mode; in broadcast mode the Bridge calls none of its methods)
    ``ack()``: done, never again. ``retry(delay)``: failed, deliver again (to any worker of the
    group) after ``delay`` seconds, counting one more attempt. ``extend()``: still working,
    restart the ``claim_idle`` clock (the Bridge calls it every ``claim_idle / 3`` while the
    receivers run). ``release()``: fetched but never started (the Bridge is stopping): hand it
    back to the group now, without waiting for ``claim_idle``.

Failures
    Raise :class:`Unavailable` (or a subclass) whenever the server cannot be reached or
    answered with something retrying later can fix (restarting, failover, lost group); the
    Bridge retries with its backoff, logs once per outage, and keeps ``publish_timeout``.
    Anything else is a permanent error of that call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, runtime_checkable

__all__ = ["DeadLetter", "Delivery", "ReadMode", "Subscription", "Transport", "Unavailable"]

ReadMode = Literal["broadcast", "shared"]


class Unavailable(ConnectionError):
    """The broker cannot be reached or is not ready; the same call may succeed later."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the bridge gave up on: its bytes as received and why, with provenance."""

    message: bytes
    """The message exactly as the broker held it (an envelope, or whatever was published).

    Decode it with the bridge's codec to inspect or re-send the event by hand.
    """
    provenance: Mapping[str, str]
    """Why and where it failed, str to str; read it to decide whether to fix and replay.

    ``reason`` (see :attr:`reason`) and ``error`` always; from a reader also ``error_type``,
    ``attempts``, ``failed_receivers``, ``first_delivery``, ``last_delivery``, ``original_id``;
    ``signal`` and ``envelope_id`` when the envelope could be read.
    """

    @property
    def reason(self) -> str:
        """Why it was dead-lettered: ``"undecodable"``, ``"max_attempts"``, ``"outbox"``, ..."""
        return self.provenance.get("reason", "")


@runtime_checkable
class Delivery(Protocol):
    """One message handed to one subscriber, with the calls that settle it."""

    @property
    def id(self) -> str:
        """The broker's id of the message (a Redis entry id, a JetStream sequence, ...)."""
        ...

    @property
    def data(self) -> bytes:
        """The message as published (``b""`` if the broker holds something else there)."""
        ...

    @property
    def attempt(self) -> int:
        """How many times the group delivered this message, this delivery included (1, 2, ...)."""
        ...

    async def ack(self) -> None:
        """Settle the message: no worker of the group gets it again."""

    async def retry(self, delay: float) -> None:
        """Deliver it again to the group after ``delay`` seconds, as the next attempt."""

    async def extend(self) -> None:
        """Restart the ``claim_idle`` clock: the worker is alive and still running it."""

    async def release(self) -> None:
        """Hand a fetched but unstarted message back to the group at once."""


@runtime_checkable
class Subscription(Protocol):
    """A position on the stream: what :meth:`Transport.subscribe` returns."""

    async def fetch(self, count: int) -> Sequence[Delivery]:
        """Up to ``count`` deliveries, waiting at most a poll interval; may return ``[]``."""
        ...

    async def close(self) -> None:
        """Stop reading (a shared group and its pending messages stay on the server)."""


@runtime_checkable
class Transport(Protocol):
    """What a broker must do for the Bridge; see the module docstring for the contract."""

    async def open(self, stream: str) -> None:
        """Bind to ``stream`` and try the server; :class:`Unavailable` while it is away."""

    async def close(self) -> None:
        """Release connections and tasks; safe to call twice or without a connection."""

    async def publish(self, messages: Sequence[bytes]) -> None:
        """Append ``messages`` in order; return once the broker confirmed all of them."""

    async def dead_letter(self, message: bytes, provenance: Mapping[str, str]) -> None:
        """Store ``message`` with ``provenance`` where operators look for dead letters."""

    async def subscribe(
        self,
        *,
        mode: ReadMode,
        group: str | None,
        consumer: str,
        claim_idle: float,
        max_attempts: int,
    ) -> Subscription:
        """Start reading at the tail (broadcast) or as ``consumer`` of ``group`` (shared)."""
        ...
