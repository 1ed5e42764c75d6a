"""End-to-end speed of the Redis bridge between two processes on loopback.

Run: ``python benchmarks/redis_bridge.py [REDIS_URL] [--events N] [--rate R] [--seconds S]``

1. Throughput: the producer sends N events as fast as it can (many sends in flight, so the
   bridge pipelines its XADDs); reported as events/s from the first send until the consumer
   process has received the last one.
2. Latency: the producer sends R events/s for S seconds, each stamped with
   ``time.monotonic_ns()`` (one clock for every process on Linux); the consumer reports
   p50/p99/max from send to its receiver running.

Targets (issue 5): >= 20,000 events/s, and p99 < 5 ms at 1,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from decimal import Decimal
from subprocess import PIPE
from typing import Any

from redis.asyncio import Redis

from asignals import AsyncSignal
from asignals.contrib.redis import RedisBridge

order_placed = AsyncSignal(name="order_placed")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def consumer(url: str, stream: str, events: int, latency_events: int) -> None:
    """Receive every phase and print one JSON line per phase."""
    counts: dict[str, int] = {}
    first_recv: dict[str, int] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    def receive(sender: Any, phase: str, sent: int, **kwargs: Any) -> None:
        now = time.monotonic_ns()
        if phase == "latency":
            latencies.append((now - sent) / 1e6)
            if len(latencies) == latency_events:
                done.set()
            return
        count = counts[phase] = counts.get(phase, 0) + 1
        if count == 1:
            first_recv[phase] = now
        if count == events:
            print(json.dumps({"phase": phase, "last_recv": now}), flush=True)

    order_placed.connect(receive, weak=False)
    async with RedisBridge(url, stream=stream, signals=[order_placed], batch_size=1000):
        print("ready", flush=True)
        await done.wait()
    print(json.dumps({"phase": "latency", "ms": latencies}), flush=True)


async def _throughput(
    url: str, stream: str, lines: asyncio.StreamReader, events: int, concurrency: int, confirm: bool
) -> None:
    """Send ``events`` from ``concurrency`` tasks (a web app's concurrent requests, say)."""
    phase = "confirmed" if confirm else "unconfirmed"
    amount = Decimal("19.99")
    bridge = RedisBridge(
        url, stream=stream, mode="publish", signals=[order_placed], confirm=confirm
    )
    async with bridge:
        start = time.monotonic_ns()

        async def sender(first: int) -> None:
            for n in range(first, events, concurrency):
                await order_placed.send(
                    "shop", phase=phase, sent=0, n=n, order_id=str(n), amount=amount
                )

        await asyncio.gather(*(sender(k) for k in range(concurrency)))
        await bridge.flush()
        sent_all = time.monotonic_ns()
    result = json.loads(await lines.readline())
    elapsed = (result["last_recv"] - start) / 1e9
    print(
        f"throughput, confirm={confirm}: {events:,} events in {elapsed:.2f} s = "
        f"{events / elapsed:,.0f} events/s end to end "
        f"(publishing took {(sent_all - start) / 1e9:.2f} s)"
    )


async def _latency(
    url: str, stream: str, lines: asyncio.StreamReader, rate: int, count: int
) -> None:
    """One send at a time, paced at ``rate`` per second, each stamped with its send time."""
    amount = Decimal("19.99")
    async with RedisBridge(url, stream=stream, mode="publish", signals=[order_placed]):
        interval = 1 / rate
        next_at = time.monotonic()
        for n in range(count):
            await order_placed.send(
                "shop", phase="latency", sent=time.monotonic_ns(), n=n, order_id=str(n),
                amount=amount,
            )  # fmt: skip
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    ms = json.loads(await lines.readline())["ms"]
    print(
        f"latency at {rate:,} events/s ({len(ms):,} events, confirm=True): "
        f"p50 {statistics.median(ms):.2f} ms, p99 {_percentile(ms, 0.99):.2f} ms, "
        f"max {max(ms):.2f} ms"
    )


async def producer(
    url: str, events: int, rate: int, seconds: float, concurrency: int, extra: list[str]
) -> int:
    stream = f"asignals-bench:{uuid.uuid4().hex}"
    latency_events = int(rate * seconds)
    args = [__file__, url, "--consume", stream, "--events", str(events), *extra]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, "--latency-events", str(latency_events), stdout=PIPE
    )
    assert proc.stdout is not None
    client = Redis.from_url(url)
    try:
        if (await proc.stdout.readline()).strip() != b"ready":
            raise SystemExit("consumer did not start")
        for confirm in (True, False):
            await _throughput(url, stream, proc.stdout, events, concurrency, confirm)
        await _latency(url, stream, proc.stdout, rate, latency_events)
    finally:
        await asyncio.wait_for(proc.wait(), 10)
        await client.delete(stream)
        await client.aclose()
    return proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_url = os.environ.get("ASIGNALS_REDIS_URL", "redis://127.0.0.1:6379/0")
    parser.add_argument("url", nargs="?", default=default_url)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=200, help="sends in flight")
    parser.add_argument("--consume", metavar="STREAM", help=argparse.SUPPRESS)
    parser.add_argument("--latency-events", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--uvloop", action="store_true", help="run both processes on uvloop")
    options = parser.parse_args()
    use_uvloop = options.uvloop
    if use_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if options.consume:
        asyncio.run(consumer(options.url, options.consume, options.events, options.latency_events))
        return
    loop_name = "uvloop" if use_uvloop else "asyncio"
    print(f"asignals Redis bridge, Python {sys.version.split()[0]}, {loop_name}, {options.url}")
    extra = ["--uvloop"] if use_uvloop else []
    run = producer(
        options.url, options.events, options.rate, options.seconds, options.concurrency, extra
    )
    sys.exit(asyncio.run(run))


if __name__ == "__main__":
    main()
