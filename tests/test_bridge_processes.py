"""The reliability scenarios of issue 12 on real processes and real servers, once per server
transport (Redis Streams, NATS JetStream): broadcast to three, a shared group of three, a
SIGKILLed worker, a SIGTERM mid-event, hostile messages, a restarted server, publish_timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BRIDGE_TRANSPORTS, BridgeKit
from servers import PrivateServer
from waiting import STEP_TIMEOUT, Child, eventually, until

from asignals import AsyncSignal
from asignals.bridge import Bridge, PublishError

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("bridge_worker.py")
FAST: dict[str, Any] = {"claim_idle": 0.5, "reconnect_backoff": (0.02, 0.2)}
SERVER_TRANSPORTS = ["redis", "jetstream"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the broker clients are asyncio-only


@pytest.fixture(params=SERVER_TRANSPORTS)
async def kit(request: pytest.FixtureRequest) -> AsyncIterator[BridgeKit]:
    """Each transport with a server, as a :class:`BridgeKit`."""
    made: BridgeKit = BRIDGE_TRANSPORTS[request.param]()
    yield made
    await made.cleanup()


@pytest.fixture
def stream() -> str:
    return f"asignals-test-{uuid.uuid4().hex}"


def bridge(kit: BridgeKit, stream: str, *signals: Any, **options: Any) -> Bridge:
    return Bridge(kit.make(), stream=stream, signals=list(signals), **{**FAST, **options})


class Worker(Child):
    """A ``tests/bridge_worker.py`` subprocess; its stdout lines are JSON after ``ready``."""

    def __init__(self, kit: BridgeKit, stream: str, mode: str, *args: str) -> None:
        super().__init__(
            sys.executable,
            str(WORKER),
            kit.name,
            kit.url,
            stream,
            mode,
            *args,
            env={**os.environ, "PYTHONPATH": str(WORKER.parent.parent)},
        )

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def numbers(self) -> list[int]:
        return [line["n"] for line in self.events() if "n" in line]

    async def started(self) -> Worker:
        await self.expect("the worker starting its bridge", "ready")
        return self


@pytest.fixture
async def workers() -> AsyncIterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        await w.stop()


async def test_broadcast_to_three_processes_loses_and_doubles_nothing(
    kit: BridgeKit, stream: str, workers: list[Worker]
) -> None:
    workers += [Worker(kit, stream, "broadcast") for _ in range(3)]
    await asyncio.gather(*(w.started() for w in workers))
    job = AsyncSignal(name="job")
    async with bridge(kit, stream, job, mode="publish"):
        await asyncio.gather(*(job.send("api", n=n) for n in range(300)))
        await eventually(
            lambda: all(len(w.numbers()) >= 300 for w in workers),
            STEP_TIMEOUT,
            step="each of 3 workers handling the 300 events",
            children=workers,
        )
        await asyncio.sleep(0.3)
    for w in workers:
        await w.stop()
        assert sorted(w.numbers()) == list(range(300))  # every event, once, in each process
        assert {line["sender"] for line in w.events() if "n" in line} == {"api"}


async def test_shared_group_of_three_processes_runs_each_event_once(
    kit: BridgeKit, stream: str, workers: list[Worker]
) -> None:
    workers += [
        Worker(kit, stream, "shared", "--group", "svc", "--work", "0.005") for _ in range(3)
    ]
    await asyncio.gather(*(w.started() for w in workers))
    job = AsyncSignal(name="job")
    async with bridge(kit, stream, job, mode="publish"):
        await asyncio.gather(*(job.send(None, n=n) for n in range(300)))
        await eventually(
            lambda: sum(len(w.numbers()) for w in workers) >= 300,
            STEP_TIMEOUT,
            step="the group of 3 workers handling the 300 events",
            children=workers,
        )
        await asyncio.sleep(0.5)
    handled = [n for w in workers for n in w.numbers()]
    assert sorted(handled) == list(range(300))  # none lost, none run twice
    assert all(w.numbers() for w in workers)  # all three took a share
    assert await kit.pending(stream, "svc") == 0


async def test_sigkilled_worker_loses_no_event(
    kit: BridgeKit, stream: str, workers: list[Worker]
) -> None:
    doomed = Worker(kit, stream, "shared", "--group", "svc", "--hang")
    workers.append(doomed)
    await doomed.started()
    job = AsyncSignal(name="job")
    async with bridge(kit, stream, job, mode="publish"):
        for n in range(5):
            await job.send(None, n=n)
        await job.send(None, n=5, hang=True)  # the doomed worker is mid-event when killed
        for n in range(6, 30):
            await job.send(None, n=n)
        await doomed.expect("the doomed worker inside event 5", '{"hanging": 5}')
        doomed.kill()  # SIGKILL: no stop, no acknowledgement, no hand-back
        survivors = [
            Worker(kit, stream, "shared", "--group", "svc", "--work", "0.002") for _ in range(2)
        ]
        workers.extend(survivors)
        await asyncio.gather(*(w.started() for w in survivors))
        everyone = [doomed, *survivors]
        await eventually(
            lambda: set(n for w in everyone for n in w.numbers()) >= set(range(30)),
            STEP_TIMEOUT,
            step="the survivors handling every event, the killed one's included",
            children=everyone,
        )
    handled = [n for w in everyone for n in w.numbers()]
    assert set(handled) == set(range(30))  # 0 lost
    assert handled.count(5) == 1  # the event it died in ran once, on a survivor

    async def settled() -> bool:
        return await kit.pending(stream, "svc") == 0

    await until(settled, step="no pending entry left in the group", children=everyone)


async def test_sigterm_during_a_slow_event_stops_after_that_event(
    kit: BridgeKit, stream: str, workers: list[Worker]
) -> None:
    """Issue 8: a stop waits for the event being run, not for events read after it."""
    slow = Worker(kit, stream, "shared", "--group", "svc", "--work", "1.0")
    workers.append(slow)
    await slow.started()
    job = AsyncSignal(name="job")
    async with bridge(kit, stream, job, mode="publish"):
        for n in range(5):
            await job.send(None, n=n)
        await asyncio.sleep(0.3)  # the worker is inside event 0
        t0 = time.monotonic()
        slow.signal(signal.SIGTERM)
        await slow.exited("the worker stopping on SIGTERM")
        took = time.monotonic() - t0
        fresh = Worker(kit, stream, "shared", "--group", "svc")
        workers.append(fresh)
        await fresh.started()
        await eventually(
            lambda: sorted(fresh.numbers()) == [1, 2, 3, 4],
            STEP_TIMEOUT,
            step="a fresh worker handling the 4 events the stopped one left",
            children=[slow, fresh],
        )
    assert slow.numbers() == [0]
    assert took < 2.0, f"SIGTERM during a 1 s event took {took:.1f} s"


async def test_hostile_messages_are_never_unpickled(
    kit: BridgeKit, stream: str, tmp_path: Path
) -> None:
    """A message that would run code if unpickled is dead-lettered; the code never runs."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(Exploit())
    sig = AsyncSignal(name="job")
    got: list[Any] = []
    sig.connect(lambda sender, **kw: got.append(kw), weak=False)
    consumer = bridge(kit, stream, sig, mode="shared", group="g")
    async with consumer:
        await kit.inject(stream, payload)

        async def dead_lettered() -> bool:
            return len(await kit.dead_letters(consumer)) == 1

        await until(dead_lettered)
    assert not marker.exists()
    assert got == []
    (dead,) = await kit.dead_letters(consumer)
    assert dead.message == payload and dead.reason == "undecodable"


# -- the server going away --------------------------------------------------------------------


@pytest.fixture
def private(kit: BridgeKit, free_port: int, tmp_path: Path) -> Iterator[PrivateServer]:
    """A server of the kit's kind on a free port, with its own store; killed by pid."""
    server = kit.server(free_port, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.parametrize("mode", ["shared", "broadcast"])
async def test_no_confirmed_event_is_lost_across_a_server_restart(
    kit: BridgeKit, private: PrivateServer, mode: str
) -> None:
    here = type(kit)(private.url)
    stream = "events"
    producer, consumer = AsyncSignal(name="job"), AsyncSignal(name="job")
    got: list[int] = []
    consumer.connect(lambda sender, n, **kw: got.append(n), weak=False)
    options: dict[str, Any] = {"mode": mode, "group": "svc"} if mode == "shared" else {}
    async with (
        bridge(here, stream, consumer, **options),
        bridge(here, stream, producer, mode="publish", publish_timeout=10),
    ):
        for n in range(20):
            await producer.send(None, n=n)
        private.kill()
        # Sends while the server is down wait for it (up to publish_timeout) instead of failing.
        during = asyncio.gather(*(producer.send(None, n=n) for n in range(20, 40)))
        await asyncio.sleep(0.3)
        private.start()
        await asyncio.wait_for(during, 10)
        for n in range(40, 60):
            await producer.send(None, n=n)
        await eventually(lambda: set(got) >= set(range(60)), timeout=10)
    assert set(got) == set(range(60))  # at least once; a retried batch may duplicate


async def test_every_waiting_send_fails_within_publish_timeout_whatever_the_backoff(
    kit: BridgeKit, private: PrivateServer
) -> None:
    """Issue 8: with a reconnect backoff far longer than publish_timeout (1 to 5 s against
    0.5 s), each send made while the server is down fails 0.5 s after it started (plus a
    scheduling margin): queued ones, ones waiting for room (max_pending), and unconfirmed
    ones are dropped in that time. Before, a send waited out the backoff (1.5 to 5.5 s)."""
    here = type(kit)(private.url)
    sig, quiet = AsyncSignal(name="s"), AsyncSignal(name="q")
    limit, margin = 0.5, 0.4
    options: dict[str, Any] = {"publish_timeout": limit, "reconnect_backoff": (1.0, 5.0)}
    confirmed = Bridge(
        here.make(), stream="a", mode="publish", signals=[sig], max_pending=3, **options
    )
    unconfirmed = Bridge(
        here.make(), stream="b", mode="publish", signals=[quiet], confirm=False, **options
    )
    async with confirmed, unconfirmed:
        private.kill()
        await sig.send_robust(None, n=0)  # the first failure starts the long backoff

        async def timed_send(delay: float) -> float:
            await asyncio.sleep(delay)
            started = time.monotonic()
            with pytest.raises(ExceptionGroup) as caught:
                await sig.send(None, n=1)
            assert caught.group_contains(PublishError, match=r"within 0.5s|max_pending")
            return time.monotonic() - started

        async def dropped() -> float:
            started = time.monotonic()
            await quiet.send(None, n=1)
            await asyncio.wait_for(unconfirmed.flush(), limit + margin)  # dropped, not stuck
            return time.monotonic() - started

        *waits, dropped_after = await asyncio.gather(
            *(timed_send(d) for d in (0, 0.1, 0.2, 0.3, 0.7, 1.1)), dropped()
        )
    assert all(limit - 0.05 <= w < limit + margin for w in waits), waits
    assert dropped_after < limit + margin
