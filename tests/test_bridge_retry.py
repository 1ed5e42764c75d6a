"""A failed event waits ``retry_backoff`` before its next attempt, on every transport.

The delays double from the first to the maximum, each drawn from [d/2, d]: so the n-th retry
of an event comes no sooner than half its delay after the attempt before it (JetStream does it
with a delayed ``nak``, Redis and the in-memory transport by holding the entry back).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from conftest import BridgeKit
from waiting import eventually

from asignals import AsyncSignal
from asignals.bridge import Bridge

pytestmark = pytest.mark.anyio

# Scheduling may only make a retry later: a small margin covers the clocks' resolution.
MARGIN = 0.02


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the broker clients are asyncio-only


async def test_retries_wait_the_doubling_backoff(transport: BridgeKit) -> None:
    stream = f"asignals-test-{uuid.uuid4().hex}"
    producer, worker = AsyncSignal(name="job"), AsyncSignal(name="job")
    attempts: list[float] = []

    def fails(sender: Any, **kwargs: Any) -> None:
        attempts.append(time.monotonic())
        raise LookupError(f"attempt {len(attempts)}")

    worker.connect(fails, weak=False)
    options: dict[str, Any] = {"claim_idle": 5.0, "reconnect_backoff": (0.02, 0.2)}
    consumer = Bridge(
        transport.make(),
        stream=stream,
        mode="shared",
        group="g",
        signals=[worker],
        max_attempts=3,
        retry_backoff=(0.4, 0.8),
        **options,
    )
    sending = Bridge(transport.make(), stream=stream, mode="publish", signals=[producer], **options)
    async with consumer, sending:
        await producer.send(None)
        await eventually(lambda: len(attempts) == 3, timeout=15)
    first, second = attempts[1] - attempts[0], attempts[2] - attempts[1]
    assert first >= 0.2 - MARGIN, f"the first retry came {first:.3f} s after the attempt"
    assert second >= 0.4 - MARGIN, f"the second retry came {second:.3f} s after the first"
