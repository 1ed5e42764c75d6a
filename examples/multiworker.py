"""Two worker processes, one Redis: a broadcast event seen by both, a job done by one.

Run against a local Redis (``redis-server`` on 127.0.0.1:6379, or set ASIGNALS_REDIS_URL):

    python examples/multiworker.py

The parent starts two workers (this file with ``--worker``), then sends
``order_placed`` (broadcast: every worker prints it) and ``send_receipt`` (shared by the
consumer group ``mailers``: exactly one worker prints it). Exits 0 when both were seen as
expected, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import sys
import uuid
from decimal import Decimal
from subprocess import PIPE
from typing import Any

from asignals import AsyncSignal
from asignals.bridge import Bridge, RedisStreams

REDIS_URL = os.environ.get("ASIGNALS_REDIS_URL", "redis://127.0.0.1:6379/0")

order_placed = AsyncSignal(name="order_placed")  # every worker updates its cache
send_receipt = AsyncSignal(name="send_receipt")  # one worker sends the e-mail


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    total: Decimal
    placed_at: dt.datetime


def bridges(run: str, mode: str) -> tuple[Bridge, Bridge]:
    """The same two bridges in every process: same stream names, same registrations.

    Moving to NATS is one constructor per bridge: ``JetStream("nats://127.0.0.1:4222")``.
    """
    events = Bridge(
        RedisStreams(REDIS_URL),
        stream=f"example:{run}:events",
        mode="publish" if mode == "publish" else "broadcast",
        signals=[order_placed],
        senders={"Order": Order},
    )
    jobs = Bridge(
        RedisStreams(REDIS_URL),
        stream=f"example:{run}:jobs",
        mode="publish" if mode == "publish" else "shared",
        group=None if mode == "publish" else "mailers",
        signals=[send_receipt],
        senders={"Order": Order},
    )
    for bridge in (events, jobs):
        bridge.codec.register(Order)  # dataclasses travel once registered on both sides
    return events, jobs


async def worker(run: str, name: str) -> None:
    def on_order(sender: Any, order: Order, **kwargs: Any) -> None:
        print(json.dumps({"worker": name, "saw": "order_placed", "total": str(order.total)}))

    def on_receipt(sender: Any, order: Order, email: str, **kwargs: Any) -> None:
        print(json.dumps({"worker": name, "saw": "send_receipt", "email": email}))

    order_placed.connect(on_order, sender=Order, weak=False)
    send_receipt.connect(on_receipt, weak=False)
    events, jobs = bridges(run, "worker")
    async with events, jobs:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the parent closes stdin to stop us


async def main() -> int:
    run = uuid.uuid4().hex[:8]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", run, name, stdin=PIPE, stdout=PIPE
        )
        for name in ("worker-1", "worker-2")
    ]
    for proc in procs:
        assert proc.stdout is not None
        if await asyncio.wait_for(proc.stdout.readline(), 15) != b"ready\n":
            print("a worker did not start; is Redis running at", REDIS_URL, "?")
            return 1

    events, jobs = bridges(run, "publish")
    async with events, jobs:
        order = Order(uuid.uuid4(), Decimal("42.50"), dt.datetime.now(dt.UTC))
        await order_placed.send(Order, order=order)
        await send_receipt.send(Order, order=order, email="ada@example.com")
        await asyncio.sleep(1.0)  # let both workers handle them

    seen: list[dict[str, Any]] = []
    for proc in procs:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        seen += [json.loads(line) for line in out.decode().splitlines()]
    for line in seen:
        print(line)
    orders = sorted(s["worker"] for s in seen if s["saw"] == "order_placed")
    receipts = [s for s in seen if s["saw"] == "send_receipt"]

    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    await client.delete(*(f"example:{run}:{s}" for s in ("events", "jobs", "jobs:dead")))
    await client.aclose()
    ok = orders == ["worker-1", "worker-2"] and len(receipts) == 1
    print("OK: both workers saw the order, one sent the receipt" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        asyncio.run(worker(*sys.argv[2:4]))
    else:
        sys.exit(asyncio.run(main()))
