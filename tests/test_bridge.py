"""Bridge behaviour every transport shares; each test runs once per ``transport`` kit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
from conftest import BridgeKit
from waiting import eventually

from asignals import AsyncSignal
from asignals.bridge import Bridge, DecodeError, Encoded, EncodeError, PublishError

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {
    "claim_idle": 0.3,
    "reconnect_backoff": (0.02, 0.2),
    "retry_backoff": (0.02, 0.05),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the broker clients are asyncio-only


@pytest.fixture
def stream() -> str:
    return f"asignals-test-{uuid.uuid4().hex}"


@dataclasses.dataclass
class Point:
    x: int
    y: int
    at: dt.datetime


class Order:
    """A sender class, as a model class would be for post_save."""


def make(kit: BridgeKit, stream: str, *signals: Any, **options: Any) -> Bridge:
    return Bridge(kit.make(), stream=stream, signals=list(signals), **{**FAST, **options})


@contextlib.asynccontextmanager
async def two_workers(
    transport: BridgeKit, stream: str, receiver: Any, claim_idle: float
) -> AsyncIterator[AsyncSignal]:
    """Two bridges of group ``g`` whose ``job`` signals run ``receiver``, and a publishing
    bridge; yields the ``job`` signal that sends to them."""
    producer = AsyncSignal(name="job")
    workers = [AsyncSignal(name="job") for _ in range(2)]
    for sig in workers:
        sig.connect(receiver, weak=False)
    opts: dict[str, Any] = {"mode": "shared", "group": "g", "claim_idle": claim_idle}
    async with (
        make(transport, stream, workers[0], **opts),
        make(transport, stream, workers[1], **opts),
        make(transport, stream, producer, mode="publish"),
    ):
        yield producer


def envelope(**override: Any) -> bytes:
    body = {"v": 2, "id": "x", "ts": 0, "origin": "evil", "group": None, "signal": "public",
            "sender": None, "kwargs": {"n": 0}, "headers": {}}  # fmt: skip
    return json.dumps({**body, **override}).encode()


# -- broadcast --------------------------------------------------------------------------------


async def test_broadcast_reaches_every_other_bridge_once_and_never_echoes(
    transport: BridgeKit, stream: str
) -> None:
    here, there, third = (AsyncSignal(name="placed") for _ in range(3))
    local: list[Any] = []
    remote: list[Any] = []
    here.connect(lambda sender, **kw: local.append((sender, kw)), weak=False)
    there.connect(lambda sender, **kw: remote.append(("there", sender, kw["total"])), weak=False)
    third.connect(lambda sender, **kw: remote.append(("third", sender, kw["total"])), weak=False)
    a, b, c = (make(transport, stream, sig) for sig in (here, there, third))
    for bridge in (a, b, c):
        bridge.codec.register(Point)
    async with a, b, c:
        point = Point(1, 2, dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        await here.send("orders", point=point, total=Decimal("9.99"))
        await eventually(lambda: len(remote) == 2)
        await asyncio.sleep(0.3)  # give any echo or duplicate time to show up
    assert sorted(remote) == [
        ("there", "orders", Decimal("9.99")),
        ("third", "orders", Decimal("9.99")),
    ]
    assert local == [("orders", {"signal": here, "point": point, "total": Decimal("9.99")})]


async def test_senders_travel_by_registered_name(transport: BridgeKit, stream: str) -> None:
    here, there = AsyncSignal(name="saved"), AsyncSignal(name="saved")
    got: list[Any] = []
    there.connect(lambda sender, **kw: got.append(("Order", kw["n"])), sender=Order, weak=False)
    there.connect(lambda sender, **kw: got.append((sender, kw["n"])), sender=7, weak=False)
    a = make(transport, stream, here, senders={"order": Order})
    b = make(transport, stream, there, senders={"order": Order})
    async with a, b:
        await here.send(Order, n=1)
        await here.send(7, n=2)
        await here.send("other", n=3)  # nobody listens to this sender over there
        await eventually(lambda: len(got) == 2)
    assert sorted(got, key=str) == [("Order", 1), (7, 2)]


async def test_send_from_a_remote_receiver_is_a_new_event(
    transport: BridgeKit, stream: str
) -> None:
    """Loop prevention suppresses only the re-send of the remote event itself."""
    ping_a, pong_a = AsyncSignal(name="ping"), AsyncSignal(name="pong")
    ping_b, pong_b = AsyncSignal(name="ping"), AsyncSignal(name="pong")
    pongs: list[int] = []

    async def answer(sender: Any, n: int, **kw: Any) -> None:
        await pong_b.send(sender, n=n + 1)

    ping_b.connect(answer)
    pong_a.connect(lambda sender, n, **kw: pongs.append(n), weak=False)
    a = make(transport, stream, ping_a, pong_a)
    async with a, make(transport, stream, ping_b, pong_b):
        await ping_a.send(None, n=1)
        await eventually(lambda: pongs == [2])
        await asyncio.sleep(0.2)
    assert pongs == [2]


# -- a send that cannot cross does nothing (issue 8) -----------------------------------------


@pytest.mark.parametrize("method", ["send", "send_robust"])
async def test_a_send_that_cannot_cross_runs_no_receiver(
    transport: BridgeKit, stream: str, method: str
) -> None:
    sig, there = AsyncSignal(name="s"), AsyncSignal(name="s")
    ran: list[Any] = []
    remote: list[Any] = []
    sig.connect(lambda sender, **kw: ran.append(kw), weak=False)
    there.connect(lambda sender, **kw: remote.append(kw), weak=False)
    async with (
        make(transport, stream, sig, max_message_bytes=10_000),
        make(transport, stream, there),
    ):
        send = getattr(sig, method)
        with pytest.raises(EncodeError, match=r"'point'.*Point.*register"):
            await send(None, point=Point(1, 2, dt.datetime(2024, 1, 1)))
        with pytest.raises(EncodeError, match="register_sender"):
            await send(object(), n=4)
        with pytest.raises(EncodeError, match=r"[\d,]+ bytes, over max_message_bytes=10,000"):
            await send(None, blob="x" * 20_000)
        assert ran == []  # nothing ran here ...
        await send(None, n=5)  # ... and the bridge still works
        await eventually(lambda: remote != [])
        await asyncio.sleep(0.2)
    assert [kw["n"] for kw in ran] == [5]
    assert [kw["n"] for kw in remote] == [5]  # ... nor there


async def test_oversized_event_is_refused_by_the_sender_not_dead_lettered(
    transport: BridgeKit, stream: str
) -> None:
    sig, there = AsyncSignal(name="s"), AsyncSignal(name="s")
    b = make(transport, stream, there)
    async with make(transport, stream, sig), b:
        with pytest.raises(EncodeError, match=r"2,097,\d+ bytes, over max_message_bytes=1,048,576"):
            await sig.send(None, blob=b"x" * (3 << 19))
        await asyncio.sleep(0.3)
    assert await transport.dead_letters(b) == []


# -- hostile input ----------------------------------------------------------------------------


async def test_hostile_and_malformed_messages_are_dead_lettered(
    transport: BridgeKit, stream: str
) -> None:
    bridged, secret = AsyncSignal(name="public"), AsyncSignal(name="secret")
    got: list[Any] = []
    bridged.connect(lambda sender, **kw: got.append(kw["n"]), weak=False)
    secret.connect(lambda sender, **kw: got.append("secret reached"), weak=False)
    hostile = [
        b"\xff\xfe not json",
        b"[1, 2]",
        envelope(signal="secret"),  # a real signal here, but not bridged
        envelope(sender={"ref": "Order"}),  # unknown sender name
        envelope(sender={"import": "os.system"}),
        envelope(kwargs={"n": {"$t": "builtins.eval", "v": "1"}}),
        envelope(kwargs={"timeout": 0}),  # must not become a dispatch option
        envelope(kwargs={"sender": 1}),
        envelope(kwargs={"n": json.loads("[" * 100 + "]" * 100)}),  # too deep
        envelope(kwargs={"n": 1, "pad": "x" * 2000}),  # over max_message_bytes
        envelope(kwargs={"n": {"$t": "=", "v": {}}}),  # a spec-typed value, no spec here
    ]
    bridge = make(transport, stream, bridged, max_message_bytes=1000)
    async with bridge:
        for data in hostile:
            await transport.inject(stream, data)
        await transport.inject(stream, envelope(kwargs={"n": 42}))
        await eventually(lambda: got == [42])
        await asyncio.sleep(0.1)
    dead = await transport.dead_letters(bridge)
    assert [d.message for d in dead] == hostile  # the original bytes, kept for inspection
    assert {d.reason for d in dead} == {"undecodable"}
    errors = [d.provenance["error"] for d in dead]
    assert "not valid JSON" in errors[0]
    assert "unknown signal 'secret'" in errors[2]
    assert "unknown sender 'Order'" in errors[3]
    assert "builtins.eval" in errors[5]
    assert "'timeout' is not allowed" in errors[6]
    assert "nested deeper" in errors[8]
    assert "max_message_bytes" in errors[9]
    assert all(d.provenance["error_type"].endswith("DecodeError") for d in dead)
    assert all(d.provenance["original_id"] for d in dead)


# -- shared (consumer group) ------------------------------------------------------------------


async def test_shared_mode_hands_each_event_to_one_worker(
    transport: BridgeKit, stream: str
) -> None:
    producer_sig = AsyncSignal(name="job")
    workers = [AsyncSignal(name="job") for _ in range(3)]
    handled: list[tuple[int, int]] = []

    def on_job(i: int) -> Callable[..., Any]:
        async def handle(sender: Any, n: int, **kw: Any) -> None:
            handled.append((i, n))
            await asyncio.sleep(0.002)  # real work: the others get their share meanwhile

        return handle

    for i, sig in enumerate(workers):
        sig.connect(on_job(i), weak=False)
    group = {"mode": "shared", "group": "billing"}
    async with (
        make(transport, stream, workers[0], **group),
        make(transport, stream, workers[1], **group),
        make(transport, stream, workers[2], **group),
        make(transport, stream, producer_sig, mode="publish"),
    ):
        await asyncio.gather(*(producer_sig.send(None, n=n) for n in range(150)))
        await eventually(lambda: len(handled) >= 150)
        await asyncio.sleep(0.3)
    assert sorted(n for _, n in handled) == list(range(150))  # each once
    assert {i for i, _ in handled} == {0, 1, 2}  # every worker took a share


async def test_sending_worker_handles_its_own_event_for_its_service(
    transport: BridgeKit, stream: str
) -> None:
    sender_sig, peer_sig, other_sig = (AsyncSignal(name="job") for _ in range(3))
    seen: list[str] = []
    sender_sig.connect(lambda sender, **kw: seen.append("sender"), weak=False)
    peer_sig.connect(lambda sender, **kw: seen.append("peer"), weak=False)
    other_sig.connect(lambda sender, **kw: seen.append("other service"), weak=False)
    async with (
        make(transport, stream, sender_sig, mode="shared", group="web"),
        make(transport, stream, peer_sig, mode="shared", group="web"),
        make(transport, stream, other_sig, mode="shared", group="mail"),
    ):
        await sender_sig.send(None)
        await eventually(lambda: "other service" in seen)
        await asyncio.sleep(0.3)
    assert sorted(seen) == ["other service", "sender"]


async def test_failed_events_are_retried_then_dead_lettered_with_provenance(
    transport: BridgeKit, stream: str
) -> None:
    producer, worker = AsyncSignal(name="job"), AsyncSignal(name="job")
    attempts: dict[str, int] = {"flaky": 0, "broken": 0}

    def handle(sender: Any, kind: str, **kw: Any) -> None:
        attempts[kind] += 1
        if kind == "broken" or attempts[kind] == 1:
            raise LookupError(f"{kind} failed #{attempts[kind]}")

    worker.connect(handle, weak=False)
    consumer = make(transport, stream, worker, mode="shared", group="g", max_attempts=3)
    async with consumer, make(transport, stream, producer, mode="publish"):
        await producer.send(None, kind="flaky")
        await producer.send(None, kind="broken")
        await eventually(lambda: attempts == {"flaky": 2, "broken": 3}, timeout=5)
        for _ in range(100):
            dead = await transport.dead_letters(consumer)
            if dead:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    assert attempts == {"flaky": 2, "broken": 3}
    assert len(dead) == 1
    letter = dead[0]
    assert b'"broken"' in letter.message
    p = letter.provenance
    assert (p["reason"], p["attempts"], p["error"]) == ("max_attempts", "3", "broken failed #3")
    assert p["error_type"] == "builtins.LookupError"
    assert p["failed_receivers"].endswith("handle")
    assert p["first_delivery"] < p["last_delivery"]
    assert p["original_id"] and p["group"] == "g" and p["signal"] == "job"


async def test_healthy_workers_redo_nothing(transport: BridgeKit, stream: str) -> None:
    """Issue 8: per-event acks and live claims; two workers with 10 ms receivers and a short
    claim_idle (0.5 s; before, 300 of 300 ran twice with claim_idle=1) run every event once."""
    runs: list[int] = []

    async def handle(sender: Any, n: int, **kw: Any) -> None:
        runs.append(n)
        await asyncio.sleep(0.01)

    async with two_workers(transport, stream, handle, claim_idle=0.5) as producer:
        await asyncio.gather(*(producer.send(None, n=n) for n in range(200)))
        await eventually(lambda: len(set(runs)) == 200, timeout=20)
        await asyncio.sleep(0.3)
    duplicates = len(runs) - len(set(runs))
    assert duplicates == 0, f"{duplicates} of 200 events ran twice"


async def test_stop_waits_for_the_current_event_only(transport: BridgeKit, stream: str) -> None:
    """Issue 8: a stop during one slow event hands the rest back to the group at once."""
    producer, slow_sig, peer_sig = (AsyncSignal(name="job") for _ in range(3))
    done: list[tuple[str, int]] = []
    started = asyncio.Event()

    async def slow(sender: Any, n: int, **kw: Any) -> None:
        started.set()
        await asyncio.sleep(0.5)
        done.append(("slow", n))

    slow_sig.connect(slow, weak=False)
    peer_sig.connect(lambda sender, n, **kw: done.append(("peer", n)), weak=False)
    opts: dict[str, Any] = {"mode": "shared", "group": "g", "claim_idle": 30.0}
    slow_bridge = make(transport, stream, slow_sig, **opts)
    async with make(transport, stream, producer, mode="publish"):
        async with slow_bridge:
            for n in range(5):
                await producer.send(None, n=n)
            await asyncio.wait_for(started.wait(), 5)
            t0 = time.monotonic()
        stopped_in = time.monotonic() - t0
        async with make(transport, stream, peer_sig, **opts):
            await eventually(lambda: len(done) == 5, timeout=5)
    assert stopped_in < 1.5, f"stop took {stopped_in:.2f}s for one 0.5s event"
    assert done[0] == ("slow", 0)
    assert sorted(done[1:]) == [("peer", n) for n in range(1, 5)]  # none waited for claim_idle


class _Delegate:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _SwallowingExtends(_Delegate):
    """A transport whose claim renewals stay in flight until cancelled, then return as if
    they had completed: what redis-py 8 does with a cancel that lands mid-command (in about a
    third of the cancels of an ``XCLAIM`` on Python 3.11)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.renewing = asyncio.Event()

    async def subscribe(self, **options: Any) -> Any:
        return _Fetching(await self._inner.subscribe(**options), self)


class _Fetching(_Delegate):
    def __init__(self, inner: Any, transport: _SwallowingExtends) -> None:
        super().__init__(inner)
        self._transport = transport

    async def fetch(self, count: int) -> Any:
        return [_Renewal(d, self._transport) for d in await self._inner.fetch(count)]


class _Renewal(_Delegate):
    def __init__(self, inner: Any, transport: _SwallowingExtends) -> None:
        super().__init__(inner)
        self._transport = transport

    async def extend(self) -> None:
        await self._inner.extend()
        self._transport.renewing.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)


async def test_stop_ends_even_when_the_client_swallows_the_cancel_of_a_claim_renewal(
    transport: BridgeKit, stream: str
) -> None:
    """CI flake of the OpenTelemetry process test: the worker's stop hung for good when the
    heartbeat was renewing a claim and the Redis client ate the one cancel it got."""
    producer, worker = AsyncSignal(name="job"), AsyncSignal(name="job")
    renewing = _SwallowingExtends(transport.make())
    done: list[int] = []

    async def handle(sender: Any, n: int, **kw: Any) -> None:
        await renewing.renewing.wait()  # the heartbeat is inside extend() now
        done.append(n)

    worker.connect(handle, weak=False)
    consumer = Bridge(renewing, stream=stream, signals=[worker], mode="shared", group="g", **FAST)
    async with make(transport, stream, producer, mode="publish"):
        await consumer.start()
        await producer.send(None, n=1)
        await eventually(lambda: done == [1])
        try:
            await asyncio.wait_for(consumer.stop(), 10)
        except TimeoutError:
            pytest.fail("stop() hung: its claim renewal task outlived a swallowed cancel")


# -- publishing -------------------------------------------------------------------------------


async def test_bridge_publishes_only_while_running(transport: BridgeKit, stream: str) -> None:
    sig, there = AsyncSignal(name="s"), AsyncSignal(name="s")
    got: list[int] = []
    there.connect(lambda sender, n, **kw: got.append(n), weak=False)
    b = make(transport, stream, sig, mode="publish")
    async with make(transport, stream, there):
        await sig.send(None, n=0)
        async with b:
            with pytest.raises(RuntimeError, match="already running"):
                await b.start()
            await sig.send(None, n=1)
        await sig.send(None, n=2)
        assert not sig.receivers_for(None)
        assert "send" not in vars(sig)  # the signal is exactly as before
        async with b:  # a stopped bridge can be started again
            await sig.send(None, n=3)
        await eventually(lambda: got == [1, 3])


async def test_unconfirmed_sends_are_written_by_flush_and_stop(
    transport: BridgeKit, stream: str
) -> None:
    sig, there = AsyncSignal(name="s"), AsyncSignal(name="s")
    got: list[int] = []
    there.connect(lambda sender, n, **kw: got.append(n), weak=False)
    async with make(transport, stream, there):
        async with make(transport, stream, sig, mode="publish", confirm=False) as b:
            for n in range(300):
                await sig.send(None, n=n)
            await b.flush()
            for n in range(300, 400):
                await sig.send(None, n=n)
        await eventually(lambda: len(got) == 400)  # stop() wrote what was still queued
    assert got == list(range(400))


# -- the outbox port --------------------------------------------------------------------------


async def test_outbox_port_encodes_then_publishes_the_same_bytes(
    transport: BridgeKit, stream: str
) -> None:
    sig, other, there = AsyncSignal(name="paid"), AsyncSignal(name="x"), AsyncSignal(name="paid")
    got: list[Any] = []
    there.connect(lambda sender, **kw: got.append((sender, kw["total"])), weak=False)
    sender_bridge = make(transport, stream, sig, mode="publish", senders={"Order": Order})
    receiver_bridge = make(transport, stream, there, senders={"Order": Order})
    assert sender_bridge.carries(sig) and not sender_bridge.carries(other)
    encoded = sender_bridge.encode(sig, Order, {"total": Decimal("5")})
    assert isinstance(encoded, Encoded) and len(encoded.id) == 24
    assert json.loads(encoded.data)["id"] == encoded.id
    with pytest.raises(EncodeError, match="not bridged"):
        sender_bridge.encode(other, None, {})
    with pytest.raises(EncodeError, match="register_sender"):
        sender_bridge.encode(sig, object(), {})
    with pytest.raises(EncodeError, match="max_message_bytes"):
        sender_bridge.encode(sig, None, {"blob": "x" * (2 << 20)})
    with pytest.raises(PublishError, match="not running"):
        await sender_bridge.publish_encoded(encoded.data)
    async with sender_bridge, receiver_bridge:
        await sender_bridge.publish_encoded(encoded.data)
        await sender_bridge.publish_encoded(encoded.data)  # a relay's retry: same id twice
        await eventually(lambda: len(got) == 2)
        with pytest.raises(DecodeError, match="not valid JSON"):
            await sender_bridge.publish_encoded(b"garbage")
        with pytest.raises(DecodeError, match="unknown signal 'secret'"):
            await sender_bridge.publish_encoded(envelope(signal="secret"))
        await sender_bridge.dead_letter_encoded(b"garbage", "outbox row undecodable")
    assert got == [(Order, Decimal("5"))] * 2
    dead = await transport.dead_letters(sender_bridge)
    assert [(d.message, d.reason) for d in dead] == [(b"garbage", "outbox row undecodable")]


async def test_deduplicator_drops_a_repeated_envelope(transport: BridgeKit, stream: str) -> None:
    from asignals.bridge import Deduplicator

    sig, there = AsyncSignal(name="paid"), AsyncSignal(name="paid")
    got: list[int] = []
    there.connect(lambda sender, n, **kw: got.append(n), weak=False)
    sender_bridge = make(transport, stream, sig, mode="publish")
    async with sender_bridge, make(transport, stream, there, dedupe=Deduplicator()):
        encoded = sender_bridge.encode(sig, None, {"n": 1})
        for _ in range(3):
            await sender_bridge.publish_encoded(encoded.data)
        await sig.send(None, n=2)
        await eventually(lambda: 2 in got)
        await asyncio.sleep(0.1)
    assert got == [1, 2]


# -- typed signals (issue 9) ------------------------------------------------------------------


def shipped(sender: type[Order], *, point: Point, when: dt.date, note: str) -> None:
    """Sent when an order leaves the warehouse."""


async def test_a_typed_signals_classes_arrive_as_those_classes(
    transport: BridgeKit, stream: str
) -> None:
    from test_bridge_codec import typed

    here, there = typed(shipped, "shipped"), typed(shipped, "shipped")
    got: list[Any] = []
    there.connect(lambda sender, **kw: got.append((sender, kw["point"], kw["when"])), weak=False)
    senders = {"Order": Order}
    async with (
        make(transport, stream, here, senders=senders),
        make(transport, stream, there, senders=senders),
    ):  # no codec.register(Point) on either side
        point = Point(3, 4, dt.datetime(2024, 2, 1, tzinfo=dt.UTC))
        await here.send(Order, point=point, when=dt.date(2024, 2, 2), note="x")
        await eventually(lambda: got != [])
    assert got == [(Order, point, dt.date(2024, 2, 2))]
    assert type(got[0][1]) is Point


# -- tracing hooks ----------------------------------------------------------------------------


class RecordingHooks:
    """A BridgeHooks that adds a header on publish and records what the bridge reports."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.delivered: list[tuple[str, dict[str, str], int]] = []
        self.dead: list[tuple[str, str]] = []

    def on_publish(self, signal_name: str, headers: dict[str, str]) -> None:
        headers["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        self.published.append(signal_name)

    def on_deliver(
        self, signal_name: str, headers: dict[str, str], attempt: int
    ) -> contextlib.AbstractContextManager[None]:
        self.delivered.append((signal_name, dict(headers), attempt))
        return contextlib.nullcontext()

    def on_dead_letter(self, signal_name: str, reason: str) -> None:
        self.dead.append((signal_name, reason))


async def test_tracing_hooks_carry_headers_beside_the_kwargs(
    transport: BridgeKit, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asignals.bridge import _hooks

    hooks = RecordingHooks()
    monkeypatch.setattr(_hooks, "hooks", hooks)
    here, there = AsyncSignal(name="public"), AsyncSignal(name="public")
    got: list[dict[str, Any]] = []
    there.connect(lambda sender, **kw: got.append(kw), weak=False)
    async with make(transport, stream, here, mode="publish"), make(transport, stream, there):
        await here.send(None, n=1)
        await transport.inject(stream, envelope(kwargs={"n": 2}, headers={"bad": 1}))
        await transport.inject(stream, envelope(kwargs={"n": 3}, headers="not a dict"))
        await transport.inject(stream, b"not json")
        await eventually(lambda: len(got) == 3 and hooks.dead != [])
    assert [kw["n"] for kw in got] == [1, 2, 3]
    assert all(set(kw) == {"signal", "n"} for kw in got)  # headers never reach receivers
    assert hooks.published == ["public"]
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert hooks.delivered == [
        ("public", {"traceparent": traceparent}, 1),
        ("public", {}, 1),  # malformed headers are dropped, the event is not
        ("public", {}, 1),
    ]
    assert hooks.dead == [("", "undecodable")]


# -- how the bridge hooks a signal ------------------------------------------------------------


async def test_background_and_class_level_sends_are_bridged_too(
    transport: BridgeKit, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    """send_nowait is encoded before its receivers run, like send; a send that bypasses the
    instance (the class's method called directly) is still published."""
    import asignals

    sig, there = AsyncSignal(name="s"), AsyncSignal(name="s")
    ran: list[Any] = []
    got: list[Any] = []
    sig.connect(lambda sender, **kw: ran.append(kw.get("n")), weak=False)
    there.connect(lambda sender, **kw: got.append(kw.get("n")), weak=False)
    async with asignals.dispatcher(), make(transport, stream, sig), make(transport, stream, there):
        sig.send_nowait(None, n=1)
        sig.send_nowait(None, n=Point(0, 0, dt.datetime(2024, 1, 1)))  # cannot cross
        await type(sig).send(sig, None, n=2)
        await eventually(lambda: sorted(got) == [1, 2])
    assert sorted(ran) == [1, 2]  # the unencodable background send ran nothing
    assert "cannot encode a value of type" in caplog.text


async def test_two_bridges_on_one_signal_both_publish_or_neither(
    transport: BridgeKit, stream: str
) -> None:
    sig, there_a, there_b = AsyncSignal(name="s"), AsyncSignal(name="s"), AsyncSignal(name="s")
    got: list[tuple[str, int]] = []
    there_a.connect(lambda sender, n, **kw: got.append(("a", len(n))), weak=False)
    there_b.connect(lambda sender, n, **kw: got.append(("b", len(n))), weak=False)
    a, b = f"{stream}-a", f"{stream}-b"
    async with (
        make(transport, a, sig, mode="publish"),
        make(transport, b, sig, mode="publish", max_message_bytes=1000),
        make(transport, a, there_a),
        make(transport, b, there_b),
    ):
        with pytest.raises(EncodeError, match="max_message_bytes=1,000"):
            await sig.send(None, n="x" * 2000)  # too big for b: a does not get it either
        await sig.send(None, n="x")
        await eventually(lambda: len(got) == 2)
        await asyncio.sleep(0.2)
    assert sorted(got) == [("a", 1), ("b", 1)]


async def test_a_local_only_send_runs_receivers_and_publishes_nothing(
    transport: BridgeKit, stream: str
) -> None:
    """What an outbox uses: the remote copy goes through its table, not the bridge; a send
    made by a receiver of that send is published as usual."""
    from asignals.bridge._sending import local_only

    sig, other = AsyncSignal(name="paid"), AsyncSignal(name="audit")
    there_sig, there_other = AsyncSignal(name="paid"), AsyncSignal(name="audit")
    ran: list[int] = []
    got: list[tuple[str, int]] = []

    async def on_paid(sender: Any, n: int, **kw: Any) -> None:
        ran.append(n)
        await other.send(None, n=n)  # a new event: bridged as usual

    sig.connect(on_paid, weak=False)
    there_sig.connect(lambda sender, n, **kw: got.append(("paid", n)), weak=False)
    there_other.connect(lambda sender, n, **kw: got.append(("audit", n)), weak=False)
    async with make(transport, stream, sig, other), make(transport, stream, there_sig, there_other):
        token = local_only.set(True)
        try:
            await sig.send(None, n=1)
        finally:
            local_only.reset(token)
        await sig.send(None, n=2)
        await eventually(lambda: len(got) == 3)
        await asyncio.sleep(0.2)
    assert ran == [1, 2]
    assert sorted(got) == [("audit", 1), ("audit", 2), ("paid", 2)]


async def test_concurrent_sends_with_nested_sends_publish_each_event_once(
    transport: BridgeKit, stream: str
) -> None:
    """Receivers share (and copy back) their context, so a send's encoded event must not
    travel in a context variable: here many sends run at once, each with a receiver that
    suspends and makes a bridged send of its own."""
    sig, nested = AsyncSignal(name="outer"), AsyncSignal(name="inner")
    there_sig, there_nested = AsyncSignal(name="outer"), AsyncSignal(name="inner")
    got: list[tuple[str, int]] = []

    async def relay(sender: Any, n: int, **kw: Any) -> None:
        await asyncio.sleep(0)
        await nested.send(None, n=n)
        await asyncio.sleep(0)

    sig.connect(relay, weak=False)
    sig.connect(lambda sender, n, **kw: None, weak=False)  # the bridge's receiver comes later
    there_sig.connect(lambda sender, n, **kw: got.append(("outer", n)), weak=False)
    there_nested.connect(lambda sender, n, **kw: got.append(("inner", n)), weak=False)
    here = make(transport, stream, sig, nested)
    async with here, make(transport, stream, there_sig, there_nested):
        await asyncio.gather(*(sig.send(None, n=n) for n in range(50)))
        await eventually(lambda: len(got) >= 100)
        await asyncio.sleep(0.2)
        assert here._outgoing == []  # nothing left behind
    assert sorted(got) == sorted(
        [("outer", n) for n in range(50)] + [("inner", n) for n in range(50)]
    )


async def test_a_live_worker_keeps_an_event_longer_than_claim_idle(
    transport: BridgeKit, stream: str
) -> None:
    """Issue 8: an event is claimable only when its worker is gone or stuck, not because its
    receivers take longer than claim_idle: the bridge renews the claim while they run."""
    runs: list[int] = []

    async def slow(sender: Any, n: int, **kw: Any) -> None:
        runs.append(n)
        await asyncio.sleep(1.0)  # more than three times claim_idle

    async with two_workers(transport, stream, slow, claim_idle=0.3) as producer:
        await producer.send(None, n=1)
        await eventually(lambda: runs != [])
        await asyncio.sleep(1.5)
    assert runs == [1]


# -- a bridge and the pytest recorder on one signal ------------------------------------------


@pytest.mark.parametrize("recorder_first", [True, False], ids=["recorder-first", "bridge-first"])
async def test_a_recorder_and_a_bridge_on_one_signal_both_keep_working(
    transport: BridgeKit, stream: str, recorder_first: bool
) -> None:
    from asignals.testing import SignalRecorder

    sig, there = AsyncSignal(name="s"), AsyncSignal(name="s")
    remote: list[Any] = []
    there.connect(lambda sender, **kw: remote.append(kw["n"]), weak=False)
    ran: list[Any] = []
    sig.connect(lambda sender, **kw: ran.append(kw), weak=False)
    recorder = SignalRecorder(sig) if recorder_first else None
    bridge = make(transport, stream, sig, max_message_bytes=10_000)
    async with make(transport, stream, there):
        async with bridge:
            if recorder is None:
                recorder = SignalRecorder(sig)
            await sig.send(None, n=1)
            with pytest.raises(EncodeError):  # encoded before any receiver runs
                await sig.send(None, blob="x" * 20_000)
            assert [kw.get("n") for kw in ran] == [1]
            await eventually(lambda: remote == [1])
            recorder.close()
            # The recorder is gone, the bridge still encodes first and publishes.
            with pytest.raises(EncodeError):
                await sig.send(None, blob="x" * 20_000)
            await sig.send(None, n=2)
            await eventually(lambda: remote == [1, 2])
        # The recorder saw the n=1 send (and, wrapped outside the bridge, the refused one too),
        # nothing after it was closed.
        recorded = [s.kwargs.get("n") for s in recorder.sends]
        assert recorded == ([1] if recorder_first else [1, None])
        assert "send" not in vars(sig) and "send_robust" not in vars(sig)  # nothing left behind
