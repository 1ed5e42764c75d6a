"""A worker process for the bridge tests: bridges signal ``job`` and reports what it handles.

Usage: ``python tests/bridge_worker.py TRANSPORT URL STREAM MODE [--group G] [--hang]
[--work SECONDS] [--claim-idle SECONDS]``. ``TRANSPORT`` names a transport (``redis``,
``jetstream``). Prints ``ready`` once the bridge runs, then one JSON line per ``job`` event
*after* its receiver finished (``{"pid", "sender", "n"}``); with ``--hang`` the receiver blocks
forever on events carrying ``hang=True`` (printing ``{"hanging": n}``) so a test can kill it
mid-event; ``--work`` makes every event take that long. Exits when stdin closes (a clean stop)
or on SIGTERM (the same).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from asignals import AsyncSignal
from asignals.bridge import Bridge

job = AsyncSignal(name="job")


def make_transport(name: str, url: str) -> Any:
    if name == "redis":
        from asignals.bridge import RedisStreams

        return RedisStreams(url, block=0.1)
    if name == "jetstream":
        from asignals.bridge import JetStream

        return JetStream(url, block=0.2)
    raise SystemExit(f"unknown transport {name!r}")


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport")
    parser.add_argument("url")
    parser.add_argument("stream")
    parser.add_argument("mode")
    parser.add_argument("--group")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--work", type=float, default=0.0)
    parser.add_argument("--claim-idle", type=float, default=0.5)
    args = parser.parse_args(argv)

    async def on_job(sender: Any, **kwargs: Any) -> None:
        if args.hang and kwargs.get("hang"):
            print(json.dumps({"hanging": kwargs.get("n")}), flush=True)
            await asyncio.Event().wait()
        if args.work:
            await asyncio.sleep(args.work)
        print(json.dumps({"pid": os.getpid(), "sender": sender, "n": kwargs.get("n")}), flush=True)

    job.connect(on_job, weak=False)
    bridge = Bridge(
        make_transport(args.transport, args.url),
        stream=args.stream,
        mode=args.mode,
        group=args.group,
        signals=[job],
        claim_idle=args.claim_idle,
        reconnect_backoff=(0.02, 0.2),
        retry_backoff=(0.05, 0.2),
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stdin_closed = asyncio.ensure_future(asyncio.to_thread(sys.stdin.readline))
    stdin_closed.add_done_callback(lambda _: stop.set())
    async with bridge:
        print("ready", flush=True)
        await stop.wait()
    print(json.dumps({"stopped": True}), flush=True)
    os._exit(0)  # the stdin reader thread may still be blocked


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
