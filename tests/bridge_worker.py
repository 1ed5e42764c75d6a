"""A worker process for the Redis bridge tests: bridges signal ``job`` and reports what it gets.

Usage: ``python tests/redis_worker.py URL STREAM MODE [GROUP] [--hang]``. Prints ``ready`` once
the bridge runs, then one JSON line per ``job`` event; with ``--hang`` its receiver blocks
forever on events carrying ``hang=True`` (so the test can kill it mid-event). Exits when stdin
closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from asignals import AsyncSignal
from asignals.contrib.redis import RedisBridge

job = AsyncSignal(name="job")


async def main(argv: list[str]) -> None:
    hang = "--hang" in argv
    args = [a for a in argv if not a.startswith("--")]
    url, stream, mode = args[:3]
    group = args[3] if len(args) > 3 else None

    async def on_job(sender: Any, **kwargs: Any) -> None:
        line = {"pid": os.getpid(), "sender": sender, "n": kwargs.get("n")}
        print(json.dumps(line), flush=True)
        if hang and kwargs.get("hang"):
            print(json.dumps({"hanging": kwargs.get("n")}), flush=True)
            await asyncio.Event().wait()

    job.connect(on_job, weak=False)
    bridge = RedisBridge(
        url,
        stream=stream,
        mode=mode,  # type: ignore[arg-type]
        group=group,
        signals=[job],
        claim_idle=0.2,
        block=0.1,
        reconnect_backoff=(0.02, 0.2),
    )
    async with bridge:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
