"""Pull requests on one JetStream consumer that never hold back messages nobody asked for.

Why not nats-py's ``PullSubscription.fetch``: a fetch of a batch waits until the batch is full
or its timeout ran out, so a trickle of events waits for the timeout (hundreds of milliseconds
at 1,000 events/s), and whatever it pulled beyond what the caller can start sits unacked with
its ``ack_wait`` clock running. Here each :meth:`Puller.fetch` first asks for what is there now
(``no_wait``, up to ``count``); only when nothing is, it leaves a request for *one* message open
until the poll interval ends, and returns the moment that message lands. At most one request
is open at a time (each has its own reply subject, so a late status of an old one is told
apart), so at most one message can arrive that no fetch is waiting for. The server's idle
heartbeats on the open request tell a quiet consumer from a lost one (a restarted server, a
deleted ephemeral consumer): silence raises :class:`ConsumerLost` and the caller re-creates or
re-binds the consumer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["ConsumerLost", "Puller"]

_HEARTBEAT = "100"
_GONE = ("consumer deleted", "push based")


class ConsumerLost(Exception):
    """The consumer stopped answering (deleted, or the server restarted without it)."""


class _Request:
    __slots__ = ("left", "reply", "until")

    def __init__(self, reply: str, left: int, until: float) -> None:
        self.reply = reply
        self.left = left  # messages it may still bring
        self.until = until  # loop time by which the server must have said something


class Puller:
    """Fetches from consumer ``consumer`` of ``stream`` through one inbox."""

    def __init__(
        self, client: Client, stream: str, consumer: str, *, wait: float, heartbeat: float
    ) -> None:
        self._client = client
        self._stream = stream
        self._wait = wait
        self._heartbeat = heartbeat
        self._inbox = client.new_inbox()
        self._ids = itertools.count()
        self._queue: collections.deque[Msg] = collections.deque()
        self._wake = asyncio.Event()
        self._sub: Subscription | None = None
        self._open: _Request | None = None
        self._linger = json.dumps(
            {"batch": 1, "expires": int(wait * 1e9), "idle_heartbeat": int(heartbeat * 1e9)}
        ).encode()
        self.retarget(consumer)

    def retarget(self, consumer: str) -> None:
        """Pull from ``consumer`` from now on (after re-creating or re-binding it)."""
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{consumer}"
        self._open = None
        self._queue.clear()

    async def start(self) -> None:
        self._sub = await self._client.subscribe(f"{self._inbox}.*", cb=self._on_message)

    async def close(self) -> list[Msg]:
        """Stop listening; returns the messages that arrived but were never fetched."""
        sub, self._sub = self._sub, None
        if sub is not None and not self._client.is_closed:
            with contextlib.suppress(Exception):  # the connection is going away anyway
                await sub.unsubscribe()
        left = [m for m in self._queue if not m.headers or "Status" not in m.headers]
        self._queue.clear()
        return left

    async def _on_message(self, msg: Msg) -> None:
        self._queue.append(msg)
        self._wake.set()

    async def _request(self, body: bytes, left: int, lasts: float) -> None:
        reply = f"{self._inbox}.{next(self._ids)}"
        await self._client.publish(self._next, body, reply=reply)
        self._open = _Request(reply, left, asyncio.get_running_loop().time() + lasts)

    async def fetch(self, count: int) -> list[Msg]:
        """At most ``count`` messages: those available now, else the first within the wait."""
        out: list[Msg] = []
        self._take(out, count)
        if out:
            return out
        if self._open is None and count > 1:
            body = json.dumps({"batch": count, "no_wait": True}).encode()
            await self._request(body, count, 2 * self._heartbeat)
            await self._answer(out, count)
            if out:
                return out
        if self._open is None:  # else the open request may still bring its message: wait
            await self._request(self._linger, 1, self._wait + self._heartbeat)
        await self._answer(out, 1)
        return out

    def _take(self, out: list[Msg], count: int) -> None:
        """Move arrived data messages to ``out``; close the open request when it is over."""
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
                continue
            if request is None or msg.subject != request.reply:
                continue  # about an earlier request, given up on already
            # Keys may be nats-py's str enum, whose hash differs from the plain str's.
            description = " ".join(v for k, v in (headers or {}).items() if k == "Description")
            if any(gone in description.lower() for gone in _GONE):
                self._open = None
                raise ConsumerLost(description)
            if status == _HEARTBEAT:
                request.until = asyncio.get_running_loop().time() + 3 * self._heartbeat
                continue
            self._open = None  # 404 no messages, 408 expired or partly served, 409 cut short

    async def _answer(self, out: list[Msg], count: int) -> None:
        """Wait until ``out`` has something or the open request is over or overdue."""
        loop = asyncio.get_running_loop()
        while True:
            self._take(out, count)
            request = self._open
            if out or request is None:
                return
            remaining = request.until - loop.time()
            if remaining <= 0:
                self._open = None
                if self._client.is_connected:
                    raise ConsumerLost("the consumer did not answer a pull request")
                return  # an outage: the caller reports it
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
