"""InMemory specifics: how bridges of one process find each other, what tests can inspect and
reset, and a worker that dies holding an event. The behaviour every transport shares is in
test_bridge.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from waiting import eventually

from asignals import AsyncSignal
from asignals.bridge import Bridge, InMemory

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {"retry_backoff": (0.01, 0.02)}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the bridge is asyncio-only


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    yield
    InMemory.reset()


def bridge(stream: str, *signals: Any, **options: Any) -> Bridge:
    return Bridge(InMemory(block=0.1), stream=stream, signals=list(signals), **options)


async def test_bridges_meet_by_stream_name_each_with_its_own_transport() -> None:
    here, there, elsewhere = (AsyncSignal(name="tick") for _ in range(3))
    got: list[Any] = []
    there.connect(lambda sender, n, **kw: got.append(("there", n)), weak=False)
    elsewhere.connect(lambda sender, n, **kw: got.append(("elsewhere", n)), weak=False)
    async with bridge("a", here), bridge("a", there), bridge("b", elsewhere):
        await here.send(None, n=1)
        await eventually(lambda: got != [])
        await asyncio.sleep(0.05)
    assert got == [("there", 1)]


async def test_dead_letters_stay_readable_after_stop_until_reset() -> None:
    producer, worker = AsyncSignal(name="job"), AsyncSignal(name="job")

    def fail(sender: Any, **kw: Any) -> None:
        raise LookupError("no such job")

    worker.connect(fail, weak=False)
    consumer = bridge("jobs", worker, mode="shared", group="g", max_attempts=2, **FAST)
    async with consumer, bridge("jobs", producer, mode="publish"):
        await producer.send(None, n=1)
        await eventually(lambda: consumer.dead_letters != [])
    (letter,) = consumer.dead_letters  # the bridge stopped: still there
    assert letter.reason == "max_attempts" and letter.provenance["attempts"] == "2"
    assert b'"signal":"job"' in letter.message
    InMemory.reset()
    assert consumer.dead_letters == []


async def test_an_event_held_by_a_dead_worker_goes_to_another_after_claim_idle() -> None:
    """A worker that fetched an event and then went silent (no ack, no extend: it died) loses
    it to a live worker of the group once claim_idle has passed, as attempt 2."""
    stream = f"s-{uuid.uuid4().hex}"
    producer, worker = AsyncSignal(name="job"), AsyncSignal(name="job")
    runs: list[tuple[int, float]] = []
    worker.connect(lambda sender, n, **kw: runs.append((n, time.monotonic())), weak=False)
    dead = InMemory()
    await dead.open(stream)
    claim = await dead.subscribe(
        mode="shared", group="g", consumer="dead", claim_idle=0.3, max_attempts=5
    )
    async with bridge(stream, producer, mode="publish"):
        await producer.send(None, n=1)
        (held,) = await claim.fetch(1)  # the dead worker's last act
        assert held.attempt == 1
        taken = time.monotonic()
        async with bridge(stream, worker, mode="shared", group="g", claim_idle=0.3):
            await eventually(lambda: runs != [])
    ((n, at),) = runs
    assert n == 1 and at - taken >= 0.25
