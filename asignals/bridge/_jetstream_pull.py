"""Pull requests on one JetStream consumer, answered the moment a message lands.

Why not nats-py's ``PullSubscription.fetch``: a fetch of a batch waits until the batch is full
or its timeout ran out, so a trickle of events waits for the timeout (hundreds of milliseconds
at 1,000 events/s). Here one pull request stays open on the server and :meth:`Puller.fetch`
returns as soon as anything arrived. Two ways to ask, for the two modes:

``streaming`` (broadcast: no acks, nothing can look busy to anyone)
    a request for ``batch`` messages stays open across fetches, so the server pushes each new
    message as it is stored, as to a push consumer.
one at a time (shared: a worker must hold no message it has not started, or its ``ack_wait``
clock runs while other workers idle)
    a request for a single message, left open until the poll interval ends (the bridge
    starts one shared event at a time).

Each request has its own reply subject, so a late status about an old request (it expired, it
was cut short) is told apart from the open one. The server's idle heartbeats on the open
request tell a quiet consumer from a lost one (a restarted server, a deleted ephemeral
consumer): silence raises :class:`ConsumerLost` and the caller re-creates or re-binds it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
from typing import TYPE_CHECKING

from . import _nats_calls

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["ConsumerLost", "Puller"]

_HEARTBEAT = "100"
_STREAMING_EXPIRES = 30.0
_GONE = ("consumer deleted", "push based")


class ConsumerLost(Exception):
    """The consumer stopped answering (deleted, or the server restarted without it)."""


class _Request:
    __slots__ = ("left", "reply", "until")

    def __init__(self, reply: str, left: int, until: float) -> None:
        self.reply = reply
        self.left = left  # messages it may still bring
        self.until = until  # loop time by which the server must have said something


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Puller:
    """Fetches from consumer ``consumer`` of ``stream`` through one inbox."""

    def __init__(
        self,
        client: Client,
        stream: str,
        consumer: str,
        *,
        wait: float,
        heartbeat: float,
        streaming: int = 0,
    ) -> None:
        self._client = client
        self._stream = stream
        self._wait = wait
        self._heartbeat = heartbeat
        self._streaming = streaming
        self._inbox = client.new_inbox()
        self._ids = itertools.count()
        self._queue: collections.deque[Msg] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._sub: Subscription | None = None
        self._open: _Request | None = None
        beat = int(heartbeat * 1e9)
        if streaming:  # long-lived: its heartbeats, not its expiry, show the consumer is there
            ask = {"batch": streaming, "expires": int(_STREAMING_EXPIRES * 1e9)}
        else:
            ask = {"batch": 1, "expires": int(wait * 1e9)}
        self._ask = json.dumps({**ask, "idle_heartbeat": beat}).encode()
        self.retarget(consumer)

    def retarget(self, consumer: str) -> None:
        """Pull from ``consumer`` from now on (after re-creating or re-binding it)."""
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{consumer}"
        self._open = None
        self._queue.clear()

    async def start(self) -> None:
        self._sub = await _nats_calls.listen(self._client, f"{self._inbox}.*", self._on_message)

    async def close(self) -> list[Msg]:
        """Stop listening; returns the messages that arrived but were never fetched."""
        sub, self._sub = self._sub, None
        if sub is not None and not self._client.is_closed:
            with contextlib.suppress(Exception):  # the connection is going away anyway
                await sub.unsubscribe()
        left = [m for m in self._queue if not m.headers or "Status" not in m.headers]
        self._queue.clear()
        return left

    def _on_message(self, msg: Msg) -> None:
        self._queue.append(msg)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None  # woken once: the messages behind it need not look again
            _wake(waiter)

    async def _request(self, body: bytes, left: int, lasts: float) -> None:
        reply = f"{self._inbox}.{next(self._ids)}"
        await self._client.publish(self._next, body, reply=reply)
        self._open = _Request(reply, left, asyncio.get_running_loop().time() + lasts)

    async def fetch(self, count: int) -> list[Msg]:
        """Up to ``count`` messages that arrived, waiting up to the poll interval for one."""
        out: list[Msg] = []
        self._take(out, count)
        if out:
            return out
        if self._open is None:
            # Until its first heartbeat (streaming) or its expiry (one at a time), plus slack.
            lasts = 3 * self._heartbeat if self._streaming else self._wait + self._heartbeat
            await self._request(self._ask, self._streaming or 1, lasts)
        await self._answer(out, count)
        return out

    def _take(self, out: list[Msg], count: int) -> None:
        """Move arrived data messages to ``out``; close the open request when it is over."""
        loop = asyncio.get_running_loop()
        while self._queue and len(out) < count:
            msg = self._queue.popleft()
            request = self._open
            headers = msg.headers
            status = headers.get("Status") if headers else None
            if status is None:
                out.append(msg)
                if request is not None:
                    request.left -= 1
                    if request.left <= 0:
                        self._open = None
                    elif self._streaming:
                        request.until = loop.time() + 3 * self._heartbeat
                continue
            if request is None or msg.subject != request.reply:
                continue  # about an earlier request, given up on already
            # Keys may be nats-py's str enum, whose hash differs from the plain str's.
            description = " ".join(v for k, v in (headers or {}).items() if k == "Description")
            if any(gone in description.lower() for gone in _GONE):
                self._open = None
                raise ConsumerLost(description)
            if status == _HEARTBEAT:
                request.until = loop.time() + 3 * self._heartbeat
                continue
            self._open = None  # 404 no messages, 408 expired or partly served, 409 cut short

    async def _answer(self, out: list[Msg], count: int) -> None:
        """Wait for a message, at most the poll interval; raise if the request went silent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while True:
            self._take(out, count)
            request = self._open
            if out or request is None:
                return
            now = loop.time()
            if now >= request.until:
                self._open = None
                if self._client.is_connected:
                    raise ConsumerLost("the consumer did not answer a pull request")
                return  # an outage: the caller reports it
            if now >= deadline:
                return  # the request stays open for the next fetch
            # A bare future and a timer: the message callback resolves it directly, one hop.
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(min(request.until, deadline) - now, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
