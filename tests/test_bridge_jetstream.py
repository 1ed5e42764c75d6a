"""JetStream specifics: what an operator sees on the server, names, lost consumers, restarts
of the stream. The behaviour every transport shares is in test_bridge.py; real processes and
server restarts in test_bridge_processes.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.js.api import AckPolicy
from servers import NatsServer
from waiting import eventually, until

from asignals import AsyncSignal
from asignals.bridge import Bridge, JetStream, PublishError

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {"reconnect_backoff": (0.02, 0.2), "retry_backoff": (0.02, 0.05)}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # nats-py is asyncio-only


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[Any]:
    client = await nats.connect(nats_url)
    yield client.jetstream()
    await client.close()


@pytest.fixture
async def stream(js: Any) -> AsyncIterator[str]:
    name = f"asignals-test-{uuid.uuid4().hex}"
    yield name
    for each in (name, f"{name}:dead"):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(each)


def bridge(url: str, stream: str, *signals: Any, **options: Any) -> Bridge:
    return Bridge(JetStream(url, block=0.2), stream=stream, signals=list(signals), **options)


async def test_a_group_is_a_durable_consumer_set_from_the_bridge_options(
    nats_url: str, js: Any, stream: str
) -> None:
    """claim_idle is the consumer's ack wait and max_attempts its max deliver (plus the one
    delivery that dead-letters an event whose last worker died); a restart with other
    options updates the consumer in place, keeping its position."""
    sig = AsyncSignal(name="job")
    async with bridge(nats_url, stream, sig, mode="shared", group="mailers", claim_idle=7.5):
        info = await js.consumer_info(stream, "mailers")
    assert info.config.ack_policy == AckPolicy.EXPLICIT
    assert (info.config.ack_wait, info.config.max_deliver) == (7.5, 6)
    stream_info = await js.stream_info(stream)
    assert stream_info.config.subjects == [stream]
    async with bridge(
        nats_url, stream, sig, mode="shared", group="mailers", claim_idle=2, max_attempts=3
    ):
        info = await js.consumer_info(stream, "mailers")
    assert (info.config.ack_wait, info.config.max_deliver) == (2, 4)


async def test_dead_letters_keep_the_message_and_carry_provenance_as_headers(
    nats_url: str, js: Any, stream: str
) -> None:
    producer, worker = AsyncSignal(name="job"), AsyncSignal(name="job")

    def fail(sender: Any, **kw: Any) -> None:
        raise LookupError("no such job\non two lines")

    worker.connect(fail, weak=False)
    opts: dict[str, Any] = {"mode": "shared", "group": "g", "max_attempts": 2, **FAST}
    async with (
        bridge(nats_url, stream, worker, **opts),
        bridge(nats_url, stream, producer, mode="publish"),
    ):
        await producer.send(None, n=1)
        deadline = time.monotonic() + 5
        while True:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                if (await js.stream_info(f"{stream}:dead")).state.messages:
                    break
            assert time.monotonic() < deadline, "no dead letter"
            await asyncio.sleep(0.05)
    letter = await js.get_msg(f"{stream}:dead", 1)
    assert b'"signal":"job"' in letter.data  # the envelope, as published: replayable
    headers = letter.headers
    assert headers["reason"] == "max_attempts" and headers["attempts"] == "2"
    assert headers["error_type"] == "builtins.LookupError"
    assert headers["error"] == "no such job on two lines"  # header values hold one line
    assert headers["original_id"] == "1"  # the stream sequence


async def test_broadcast_resumes_after_its_consumer_is_deleted_without_loss(
    nats_url: str, js: Any, stream: str
) -> None:
    """An ordered consumer that the server dropped (restart, admin) is re-created after the
    last event it delivered: nothing is skipped or seen twice."""
    here, there = AsyncSignal(name="tick"), AsyncSignal(name="tick")
    got: list[int] = []
    there.connect(lambda sender, n, **kw: got.append(n), weak=False)
    async with bridge(nats_url, stream, there), bridge(nats_url, stream, here, mode="publish"):
        for n in range(10):
            await here.send(None, n=n)
        await eventually(lambda: len(got) == 10)
        (consumer,) = [c.name async for c in _consumers(js, stream)]
        await js.delete_consumer(stream, consumer)
        for n in range(10, 20):
            await here.send(None, n=n)
        await eventually(lambda: len(got) >= 20)
        await asyncio.sleep(0.3)
    assert got == list(range(20))


async def _consumers(js: Any, stream: str) -> AsyncIterator[Any]:
    for info in await js.consumers_info(stream):
        yield info


async def test_names_jetstream_cannot_hold_are_refused_with_the_reason(
    nats_url: str, js: Any, stream: str
) -> None:
    with pytest.raises(ValueError, match=r"'shop\.events' cannot be a JetStream stream name"):
        await bridge(nats_url, "shop.events", AsyncSignal(name="s")).start()
    with pytest.raises(RuntimeError, match="reader") as caught:
        await bridge(nats_url, stream, AsyncSignal(name="s"), mode="shared", group="mail*").start()
    assert "'mail*' cannot be a JetStream consumer (group) name" in str(caught.value.__cause__)
    await js.add_stream(name=f"{stream}-other", subjects=["elsewhere"])
    try:
        with pytest.raises(ValueError, match="exists but does not capture subject"):
            await bridge(nats_url, f"{stream}-other", AsyncSignal(name="s")).start()
    finally:
        await js.delete_stream(f"{stream}-other")


async def test_with_nats_down_start_still_refuses_names_jetstream_cannot_hold(
    free_port: int,
) -> None:
    """A bridge starts while NATS is away (see test_bridge_boot.py), but a name that can
    never work fails its start at once, not after publish_timeout (here a minute)."""
    url = f"nats://127.0.0.1:{free_port}"  # nothing listens there
    async with asyncio.timeout(20):
        with pytest.raises(ValueError, match=r"'shop\.events' cannot be a JetStream stream"):
            await Bridge(JetStream(url), stream="shop.events", publish_timeout=60).start()
        shared = Bridge(JetStream(url), stream="s", mode="shared", group="mail*",
                        publish_timeout=60, **FAST)  # fmt: skip
        with pytest.raises(RuntimeError, match="reader") as caught:
            await shared.start()
    assert "'mail*' cannot be a JetStream consumer (group) name" in str(caught.value.__cause__)
    assert not shared.running


async def test_a_stream_found_unfit_after_a_boot_with_nats_down_is_reported_and_retried(
    free_port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Booted while NATS was away, bridges learn only when it is back that their stream (made
    by an operator) does not capture their subject: sends fail naming it, the reader logs it
    as an error and keeps trying, and once the operator deletes it both work."""
    server = NatsServer(free_port, tmp_path)
    server.start()
    client = await nats.connect(server.url)
    await client.jetstream().add_stream(name="events", subjects=["elsewhere"])
    await client.close()
    server.kill()  # the file store keeps the stream
    here, worker = AsyncSignal(name="t"), AsyncSignal(name="t")
    handled: list[int] = []
    worker.connect(lambda sender, n, **kw: handled.append(n), weak=False)
    reader = Bridge(JetStream(server.url), stream="events", signals=[worker], mode="shared",
                    group="g", publish_timeout=0.5, **FAST)  # fmt: skip
    # A refusal fails a send at once: a long publish_timeout shows it is not a time-out.
    writer = bridge(server.url, "events", here, mode="publish", publish_timeout=10, **FAST)
    try:
        await reader.start()
        await writer.start()
        with caplog.at_level(logging.ERROR, logger="asignals.bridge"):
            server.start()
            with pytest.raises(ExceptionGroup) as caught:
                await here.send(None, n=-1)
            assert caught.group_contains(PublishError, match="does not capture subject")
            await eventually(
                lambda: any(
                    r.message.startswith("reading 'events' failed")
                    and "does not capture subject" in r.message
                    for r in caplog.records
                ),
            )
        client = await nats.connect(server.url)
        await client.jetstream().delete_stream("events")
        await client.close()
        numbers = iter(range(1000))

        async def one_handled() -> bool:
            await here.send(None, n=next(numbers))
            return bool(handled)

        await until(one_handled, timeout=15)
    finally:
        await writer.stop()
        await reader.stop()
        server.kill()
    assert -1 not in handled


async def test_bridges_carry_on_when_a_restarted_server_lost_every_stream(
    free_port: int, tmp_path: Path
) -> None:
    """A server restarted on an empty store (no persistence): the publisher creates the
    stream again and sends at once; the readers, noticing later, re-create the group and the
    broadcast consumer at the new stream's beginning, so those events reach both."""
    server = NatsServer(free_port, tmp_path / "before")
    server.start()
    here, there, worker = (AsyncSignal(name="t") for _ in range(3))
    seen: list[int] = []
    handled: list[int] = []
    there.connect(lambda sender, n, **kw: seen.append(n), weak=False)
    worker.connect(lambda sender, n, **kw: handled.append(n), weak=False)
    slow = {"block": 2.0}  # the readers notice the lost consumers seconds after the publisher
    try:
        async with (
            Bridge(JetStream(server.url, **slow), stream="events", signals=[there], **FAST),
            Bridge(
                JetStream(server.url, **slow),
                stream="events",
                signals=[worker],
                mode="shared",
                group="g",
                **FAST,
            ),  # fmt: skip
            bridge(server.url, "events", here, mode="publish", **FAST),
        ):
            for n in range(5):
                await here.send(None, n=n)
            await eventually(lambda: len(seen) == len(handled) == 5)
            server.kill()
            server.dir = tmp_path / "after"  # everything the server knew is gone
            server.start()
            for n in range(5, 10):
                await here.send(None, n=n)
            await eventually(lambda: len(seen) >= 10 and len(handled) >= 10, timeout=15)
    finally:
        server.kill()
    assert seen == handled == list(range(10))


async def test_a_message_the_stream_refuses_fails_its_send_at_once(
    nats_url: str, js: Any, stream: str
) -> None:
    """JetStream's negative acknowledgement (here: over the stream's max_msg_size, set by an
    operator) is the send's PublishError, not a retry until publish_timeout."""
    await js.add_stream(name=stream, subjects=[stream], max_msg_size=300)
    sig = AsyncSignal(name="s")
    async with bridge(nats_url, stream, sig, mode="publish", publish_timeout=5, **FAST):
        await sig.send(None, note="fits")
        started = time.monotonic()
        with pytest.raises(ExceptionGroup) as caught:
            await sig.send(None, note="x" * 400)
        assert time.monotonic() - started < 2
    assert caught.group_contains(
        PublishError, match="refused the message: message size exceeds maximum"
    )
    assert (await js.stream_info(stream)).state.messages == 1


async def test_events_of_every_size_arrive_whole_and_in_order(
    nats_url: str, js: Any, stream: str
) -> None:
    """The bridge reads its acknowledgements and deliveries with its own parser: bursts of
    small events, events larger than one socket read, and payloads holding the protocol's own
    words (``\\r\\nMSG ...``) all arrive intact, in the order sent, to broadcast and shared."""
    here, there, worker = (AsyncSignal(name="parcel") for _ in range(3))
    seen: list[tuple[int, str]] = []
    handled: list[tuple[int, str]] = []
    there.connect(lambda sender, n, note, **kw: seen.append((n, note)), weak=False)
    worker.connect(lambda sender, n, note, **kw: handled.append((n, note)), weak=False)
    notes = ["", "x", "\r\nMSG fake 1 2\r\nab\r\n", "PING\r\n", "é" * 70_000, "y" * 200_000]
    sent = [(n, notes[n % len(notes)]) for n in range(600)]
    async with (
        bridge(nats_url, stream, there),
        bridge(nats_url, stream, worker, mode="shared", group="g"),
        bridge(nats_url, stream, here, mode="publish", confirm=False) as producer,
    ):
        for n, note in sent:
            await here.send(None, n=n, note=note)  # queued: written in batches
        await producer.flush()
        await here.send(None, n=len(sent), note="confirmed")  # one acknowledged alone
        await eventually(lambda: len(seen) == len(handled) == len(sent) + 1, timeout=30)
    assert seen == handled == [*sent, (len(sent), "confirmed")]
    assert (await js.stream_info(stream)).state.messages == len(sent) + 1


async def test_a_payload_over_the_servers_limit_fails_its_send_and_nothing_else(
    nats_url: str, js: Any, stream: str
) -> None:
    """With max_message_bytes above the server's max_payload (1 MB by default), the send of
    a bigger event fails with PublishError at once, nothing of its batch is stored, and the
    connection carries the next events as usual."""
    here, there = AsyncSignal(name="blob"), AsyncSignal(name="blob")
    got: list[int] = []
    there.connect(lambda sender, size, **kw: got.append(size), weak=False)
    async with (
        bridge(nats_url, stream, there),
        bridge(nats_url, stream, here, mode="publish", max_message_bytes=4 << 20, **FAST),
    ):
        with pytest.raises(ExceptionGroup) as caught:
            await here.send(None, size=2 << 20, blob="z" * (2 << 20))
        await here.send(None, size=1, blob="z")
        await eventually(lambda: got == [1])
    assert caught.group_contains(PublishError, match="refused the event: MaxPayloadError")
    assert (await js.stream_info(stream)).state.messages == 1
