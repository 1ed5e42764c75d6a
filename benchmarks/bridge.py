"""End-to-end speed of the bridge between two processes on loopback, every transport side by side.

Run: ``python benchmarks/bridge.py [--transports redis,...] [--events N] [--rate R]
[--seconds S] [--repeats K] [--uvloop]``

For each transport a consumer process runs a broadcast bridge; this process publishes.

1. Throughput: N events sent as fast as possible from 200 concurrent tasks (a web app's
   concurrent requests), with ``confirm=True`` (each send returns once the broker stored it)
   and with ``confirm=False``; events/s from the first send until the consumer process ran
   the receiver of the last one. Beside it the same N stamped payloads sent by 200 tasks
   through the bare client (each send awaiting the server's reply: ``XADD`` with redis-py,
   ``js.publish`` with nats-py) to its plain consumer, and the bridge's rate as a share of
   it, which a loaded machine changes much less than the rates themselves. The CPU time per
   event of the sending and of the receiving process is shown too (the server's is not).
   Repeated K times, transports interleaved (A, B, A, B...) so that drifts of the machine
   hit all alike; the medians are reported.
2. Latency: one send at a time at R events/s for S seconds, each stamped with
   ``time.monotonic_ns()`` (one clock for every process on Linux); the consumer reports
   p50/p99/max from the send call to its receiver running. Beside each transport, its
   *limit*: the same stamped payload through the bare client (Redis: ``XADD`` / blocking
   ``XREAD`` with redis-py; JetStream: ``js.publish`` / nats-py's ordered push consumer), no
   asignals. Repeated K times, interleaved with the limit; the medians are reported. On a
   shared machine the tail is mostly scheduling noise that hits the limit alike, which is why
   it is measured beside it.

Targets (issue 12): >= 30,000 events/s confirmed, p99 < 2 ms at 1,000 events/s.

A transport plugs in with one entry in ``TRANSPORTS``: a name, its default URL (overridable
with ``--url NAME=URL``) and a factory ``(url) -> Transport``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from subprocess import PIPE
from typing import Any

from asignals import AsyncSignal
from asignals.bridge import Bridge, Transport

order_placed = AsyncSignal(name="order_placed")


def _redis(url: str) -> Transport:
    from asignals.bridge import RedisStreams

    return RedisStreams(url)


async def _redis_raw_consumer(url: str, stream: str, on_message: Callable[[bytes], bool]) -> None:
    """The latency limit: a blocking XREAD loop with redis-py, nothing else."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    last = "$"
    while True:
        response = await client.xread({stream: last}, count=100, block=1000)
        for _stream, entries in response or ():
            for entry_id, fields in entries:
                last = entry_id
                if not on_message(fields[b"e"]):
                    await client.aclose()
                    return


async def _redis_raw_producer(url: str, stream: str) -> tuple[Any, Callable[[bytes], Any]]:
    from redis.asyncio import BlockingConnectionPool, Redis

    # 200 concurrent sends share 20 connections, as a web app's requests share its pool.
    client = Redis(
        connection_pool=BlockingConnectionPool.from_url(url, max_connections=20, timeout=None)
    )

    async def send(data: bytes) -> None:
        await client.xadd(stream, {"e": data}, maxlen=100_000, approximate=True)

    return client, send


def _jetstream(url: str) -> Transport:
    from asignals.bridge import JetStream

    return JetStream(url)


async def _jetstream_context(url: str, stream: str) -> tuple[Any, Any]:
    import nats
    import nats.js.errors

    client = await nats.connect(url)
    js = client.jetstream()
    try:
        await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(name=stream, subjects=[stream])
    return client, js


async def _jetstream_raw_consumer(
    url: str, stream: str, on_message: Callable[[bytes], bool]
) -> None:
    """The latency limit: nats-py's own ordered push consumer, nothing else."""
    from nats.js.api import DeliverPolicy

    client, js = await _jetstream_context(url, stream)
    done = asyncio.Event()

    async def receive(msg: Any) -> None:
        if not on_message(msg.data):
            done.set()

    await js.subscribe(stream, cb=receive, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
    await done.wait()
    await client.close()


async def _jetstream_raw_producer(url: str, stream: str) -> tuple[Any, Callable[[bytes], Any]]:
    """``js.publish``: one message, awaiting JetStream's ack."""
    client, js = await _jetstream_context(url, stream)

    class Closing:
        async def aclose(self) -> None:
            await client.close()

    async def send(data: bytes) -> None:
        await js.publish(stream, data)

    return Closing(), send


#: name -> (default URL, factory, bare-client limit (consumer, producer) or None).
#: Other transports add themselves here.
TRANSPORTS: dict[str, tuple[str, Callable[[str], Transport], Any]] = {
    "redis": (
        os.environ.get("ASIGNALS_REDIS_URL", "redis://127.0.0.1:6379/0"),
        _redis,
        (_redis_raw_consumer, _redis_raw_producer),
    ),
    "jetstream": (
        os.environ.get("ASIGNALS_NATS_URL", "nats://127.0.0.1:4222"),
        _jetstream,
        (_jetstream_raw_consumer, _jetstream_raw_producer),
    ),
}


def _median(runs: list[Rate], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _bridge(name: str, url: str, stream: str, **options: Any) -> Bridge:
    return Bridge(TRANSPORTS[name][1](url), stream=stream, signals=[order_placed], **options)


# -- the consumer process ---------------------------------------------------------------------


async def consumer(name: str, url: str, stream: str) -> None:
    """Count each phase; print a JSON line when a phase's last event arrived."""
    counts: dict[str, int] = {}
    expected: dict[str, int] = {}
    cpu_start: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    def receive(sender: Any, phase: str, sent: int, total: int, **kwargs: Any) -> None:
        now = time.monotonic_ns()
        if phase == "end":
            done.set()
            return
        if phase.startswith("latency"):
            latencies.append((now - sent) / 1e6)
            if len(latencies) == total:
                print(json.dumps({"phase": phase, "ms": latencies}), flush=True)
                latencies.clear()
            return
        count = counts[phase] = counts.get(phase, 0) + 1
        expected[phase] = total
        if count == 1:
            cpu_start[phase] = time.process_time()
        if count == total:
            cpu_us = (time.process_time() - cpu_start[phase]) / max(1, total - 1) * 1e6
            print(json.dumps({"phase": phase, "last_recv": now, "cpu_us": cpu_us}), flush=True)

    def raw(data: bytes) -> bool:
        body = json.loads(data)
        if body["phase"] == "end":
            return False
        receive(None, **body)
        return True

    order_placed.connect(receive, weak=False)
    async with _bridge(name, url, stream, batch_size=1000):
        limit = TRANSPORTS[name][2]
        raw_task = (
            asyncio.create_task(limit[0](url, stream + "-raw", raw)) if limit is not None else None
        )
        print("ready", flush=True)
        await done.wait()
        if raw_task is not None:
            await raw_task


# -- the producer (this process) --------------------------------------------------------------


class Remote:
    """One consumer process and the lines it prints."""

    def __init__(self, name: str, url: str, stream: str, extra: list[str]) -> None:
        self.name, self.url, self.stream, self.extra = name, url, stream, extra
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        args = [__file__, "--consume", self.name, self.url, self.stream, *self.extra]
        self.proc = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=PIPE)
        if (await self.line()) != "ready":
            raise SystemExit(f"the {self.name} consumer did not start")

    async def line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), 120)).decode().strip()

    async def result(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(await self.line())
        return result


class Rate:
    """One throughput run: events/s end to end, CPU microseconds per event on each side."""

    def __init__(self, events: int, start: int, cpu: float, result: dict[str, Any]) -> None:
        self.rate = events / ((result["last_recv"] - start) / 1e9)
        self.sender_us = cpu / events * 1e6
        self.receiver_us: float = result["cpu_us"]


async def throughput(
    remote: Remote, events: int, concurrency: int, confirm: bool, run: int
) -> Rate:
    phase = f"{'confirmed' if confirm else 'unconfirmed'}-{run}"
    amount = Decimal("19.99")
    async with _bridge(
        remote.name, remote.url, remote.stream, mode="publish", confirm=confirm
    ) as b:
        start = time.monotonic_ns()
        cpu = time.process_time()

        async def sender(first: int) -> None:
            for n in range(first, events, concurrency):
                await order_placed.send(
                    "shop", phase=phase, sent=0, total=events, n=n, order_id=str(n), amount=amount
                )

        await asyncio.gather(*(sender(k) for k in range(concurrency)))
        await b.flush()
        cpu = time.process_time() - cpu
    return Rate(events, start, cpu, await remote.result())


async def raw_throughput(remote: Remote, events: int, concurrency: int, run: int) -> Rate:
    """The same events through the bare client: each send awaits the server's reply."""
    client, send = await TRANSPORTS[remote.name][2][1](remote.url, remote.stream + "-raw")
    try:
        start = time.monotonic_ns()
        cpu = time.process_time()

        async def sender(first: int) -> None:
            for n in range(first, events, concurrency):
                body = {"phase": f"bare-{run}", "sent": 0, "total": events, "n": n,
                        "order_id": str(n), "amount": "19.99"}  # fmt: skip
                await send(json.dumps(body).encode())

        await asyncio.gather(*(sender(k) for k in range(concurrency)))
        cpu = time.process_time() - cpu
    finally:
        await client.aclose()
    return Rate(events, start, cpu, await remote.result())


async def latency(remote: Remote, rate: int, count: int) -> list[float]:
    amount = Decimal("19.99")
    async with _bridge(remote.name, remote.url, remote.stream, mode="publish"):
        interval = 1 / rate
        next_at = time.monotonic()
        for n in range(count):
            await order_placed.send(
                "shop", phase="latency", sent=time.monotonic_ns(), total=count, n=n,
                order_id=str(n), amount=amount,
            )  # fmt: skip
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    ms: list[float] = (await remote.result())["ms"]
    return ms


async def raw_latency(remote: Remote, rate: int, count: int) -> list[float]:
    """The same paced, stamped sends through the bare client."""
    client, send = await TRANSPORTS[remote.name][2][1](remote.url, remote.stream + "-raw")
    try:
        interval = 1 / rate
        next_at = time.monotonic()
        for n in range(count):
            body = {"phase": "latency", "sent": time.monotonic_ns(), "total": count, "n": n,
                    "order_id": str(n), "amount": "19.99"}  # fmt: skip
            await send(json.dumps(body).encode())
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        await client.aclose()
    ms: list[float] = (await remote.result())["ms"]
    return ms


async def finish(remote: Remote) -> None:
    if TRANSPORTS[remote.name][2] is not None:
        client, send = await TRANSPORTS[remote.name][2][1](remote.url, remote.stream + "-raw")
        await send(json.dumps({"phase": "end"}).encode())
        await client.aclose()
    async with _bridge(remote.name, remote.url, remote.stream, mode="publish"):
        await order_placed.send("shop", phase="end", sent=0, total=0)
    assert remote.proc is not None
    await asyncio.wait_for(remote.proc.wait(), 30)
    await _drop_stream(remote)


async def _drop_stream(remote: Remote) -> None:
    if remote.name == "redis":
        from redis.asyncio import Redis

        client = Redis.from_url(remote.url)
        await client.delete(remote.stream, remote.stream + "-raw")
        await client.aclose()
    elif remote.name == "jetstream":
        import nats
        import nats.js.errors

        nc = await nats.connect(remote.url)
        for name in (remote.stream, remote.stream + "-raw"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_stream(name)
        await nc.close()


async def producer(options: argparse.Namespace, extra: list[str]) -> None:
    names = options.transports.split(",")
    urls = {name: TRANSPORTS[name][0] for name in names}
    urls.update(dict(item.split("=", 1) for item in options.url))
    remotes = [
        Remote(name, urls[name], f"asignals-bench-{uuid.uuid4().hex}", extra) for name in names
    ]
    for remote in remotes:
        await remote.start()
    rates: dict[tuple[str, str], list[Rate]] = {}
    try:
        for run in range(options.repeats):
            for kind in ("confirmed", "bare", "unconfirmed"):
                for remote in remotes:  # interleaved: A, B, A, B ...
                    if kind == "bare":
                        if TRANSPORTS[remote.name][2] is None:
                            continue
                        rate = await raw_throughput(
                            remote, options.events, options.concurrency, run
                        )
                    else:
                        rate = await throughput(
                            remote, options.events, options.concurrency, kind == "confirmed", run
                        )
                    rates.setdefault((remote.name, kind), []).append(rate)
        count = int(options.rate * options.seconds)
        lat: dict[str, list[list[float]]] = {}
        for _run in range(options.repeats):
            for remote in remotes:
                lat.setdefault(remote.name, []).append(await latency(remote, options.rate, count))
                if TRANSPORTS[remote.name][2] is not None:
                    lat.setdefault(f"{remote.name} (bare client)", []).append(
                        await raw_latency(remote, options.rate, count)
                    )
    finally:
        for remote in remotes:
            await finish(remote)
    width = max(len(n) for n in names) + 2
    print(
        f"\nevents/s end to end, {options.events:,} events, {options.concurrency} sends in "
        f"flight, median of {options.repeats} (target >= 30,000 confirmed):"
    )
    print(f"{'transport':<{width}}{'confirmed':>11}{'unconfirmed':>13}{'bare client':>13}"
          f"{'share':>7}   CPU us/event sent/received (bare)   all runs (confirmed)")  # fmt: skip
    for name in names:
        conf, unconf = rates[(name, "confirmed")], rates[(name, "unconfirmed")]
        bare = rates.get((name, "bare"), [])
        runs = ", ".join(f"{r.rate:,.0f}" for r in conf)
        cpu = f"{_median(conf, 'sender_us'):.1f} / {_median(conf, 'receiver_us'):.1f}"
        bare_rate = share = ""
        if bare:
            bare_rate = f"{_median(bare, 'rate'):,.0f}"
            # Per run (the same minute of the machine), then the median.
            share = (
                f"{statistics.median(c.rate / b.rate for c, b in zip(conf, bare, strict=True)):.0%}"
            )
            cpu += f" ({_median(bare, 'sender_us'):.1f} / {_median(bare, 'receiver_us'):.1f})"
        print(
            f"{name:<{width}}{_median(conf, 'rate'):>11,.0f}{_median(unconf, 'rate'):>13,.0f}"
            f"{bare_rate:>13}{share:>7}   {cpu:<34}  {runs}"
        )
    print(f"\nsend -> remote receiver latency at {options.rate:,} events/s, {count:,} events, "
          f"confirm=True, median of {options.repeats} (target p99 < 2 ms):")  # fmt: skip
    width = max(len(n) for n in lat) + 2
    print(f"{'transport':<{width}}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}   p99 of each run")
    for name, runs in lat.items():
        p50 = statistics.median(statistics.median(ms) for ms in runs)
        p99s = [_percentile(ms, 0.99) for ms in runs]
        worst = statistics.median(max(ms) for ms in runs)
        each = ", ".join(f"{p:.2f}" for p in p99s)
        print(f"{name:<{width}}{p50:>10.2f}{statistics.median(p99s):>10.2f}{worst:>10.2f}   {each}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--url", action="append", default=[], metavar="NAME=URL")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200, help="sends in flight")
    parser.add_argument(
        "--consume", nargs=3, metavar=("NAME", "URL", "STREAM"), help=argparse.SUPPRESS
    )
    parser.add_argument("--uvloop", action="store_true", help="run both processes on uvloop")
    options = parser.parse_args()
    if options.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if options.consume:
        asyncio.run(consumer(*options.consume))
        return
    loop_name = "uvloop" if options.uvloop else "asyncio"
    print(f"asignals bridge, Python {sys.version.split()[0]}, {loop_name}, transports: "
          f"{options.transports}")  # fmt: skip
    asyncio.run(producer(options, ["--uvloop"] if options.uvloop else []))


if __name__ == "__main__":
    main()
