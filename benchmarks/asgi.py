"""What do SignalsMiddleware and background dispatch cost? Measured on the FastAPI example.

Run ``python benchmarks/asgi.py`` from the repository root (under two minutes; ``--quick`` for
a smoke run). Needs the ``examples`` and ``test`` extras (FastAPI, uvicorn, httpx, uvloop, trio).

1. **Middleware overhead, real server.** Two uvicorn processes on loopback serve the example app
   (``examples/fastapi_app.py``), one as shipped and one with ``SignalsMiddleware`` taken out
   of its middleware list (``bare_app`` below: the same module, same routes). A bare keep-alive
   HTTP/1.1 client keeps ``--concurrency`` requests in flight against ``GET /orders/1`` (a 404
   through the whole FastAPI stack and the request signals); rounds alternate between
   the two servers so machine drift hits both alike. Reported: the median per-request latency
   of each, the median over rounds, and their ratio (target: at most 1.05x).
2. **Middleware overhead, in-process.** The same two apps called directly as ASGI callables (no
   network, no client), to isolate what the three signal sends add per request in nanoseconds.
3. **Background dispatch.** ``send_nowait`` of N sends to one async receiver that suspends once,
   inside ``asignals.dispatcher()``, on asyncio, uvloop and trio: sends per second from the first
   submission to the end of the drain, the peak backlog, and the memory per pending send
   (tracemalloc, separate pass). Also ``send_later`` with a bounded backlog.

4. **Held sends.** What ``send_after_response`` costs per request, in-process on a minimal
   FastAPI app behind ``SignalsMiddleware``: an endpoint that holds ``k`` sends (delivered after
   the response) against the same endpoint calling ``send_nowait`` ``k`` times and against one
   that sends nothing, for k = 1 and 3, on asyncio and uvloop. Each timing covers a chunk of 50
   requests, the event loop running between them, and the drain of their background sends (the
   receivers' work is in both); variants rotate chunk by chunk. Also the same sends with no
   request around them (hold and delivery against ``send_nowait``, submission only).

Every figure is the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fastapi_app.py"


def _load_example(name: str) -> ModuleType:
    os.environ.setdefault("ORDERS_EMAIL_DELAY", "0")
    os.environ.setdefault("ORDERS_OUTBOX", os.path.join(tempfile.gettempdir(), "bench-outbox"))
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def shipped_app() -> Any:
    """uvicorn --factory target: the example app as shipped."""
    return _load_example("orders_shipped").app


def bare_app() -> Any:
    """uvicorn --factory target: the example app without SignalsMiddleware."""
    from asignals.contrib.asgi import SignalsMiddleware

    app = _load_example("orders_bare").app
    app.user_middleware = [m for m in app.user_middleware if m.cls is not SignalsMiddleware]
    return app


# -- 1. real server ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(factory: str, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", f"benchmarks.asgi:{factory}", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level"]
    command += ["warning", "--loop", "uvloop", "--http", "h11"]
    return subprocess.Popen(command, cwd=ROOT)


def _wait_up(port: int) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


_REQUEST = b"GET /orders/1 HTTP/1.1\r\nHost: bench\r\n\r\n"
_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)


async def _round(port: int, requests: int, concurrency: int) -> float:
    """Median latency (seconds) of ``requests`` GETs with ``concurrency`` in flight.

    A bare HTTP/1.1 keep-alive client on asyncio streams: a full client library (httpx) costs
    more CPU per request than the server, and would measure itself rather than the app.
    """
    latencies: list[float] = []
    remaining = iter(range(requests))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in remaining:
                start = time.perf_counter()
                writer.write(_REQUEST)
                head = await reader.readuntil(b"\r\n\r\n")
                length = _LENGTH.search(head)
                assert head.startswith(b"HTTP/1.1 404") and length is not None, head
                await reader.readexactly(int(length.group(1)))
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statistics.median(latencies)


def real_server(rounds: int, requests: int, concurrency: int) -> float:
    ports = {"with": _free_port(), "without": _free_port()}
    procs = {
        "with": _start("shipped_app", ports["with"]),
        "without": _start("bare_app", ports["without"]),
    }
    try:
        for port in ports.values():
            _wait_up(port)
        for port in ports.values():  # warm-up
            asyncio.run(_round(port, requests // 4, concurrency))
        samples: dict[str, list[float]] = {"with": [], "without": []}
        for r in range(rounds):
            order = ["with", "without"] if r % 2 == 0 else ["without", "with"]
            for name in order:
                samples[name].append(asyncio.run(_round(ports[name], requests, concurrency)))
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(10)
    with_ = statistics.median(samples["with"])
    without = statistics.median(samples["without"])
    print(
        f"  uvicorn+uvloop, GET /orders/1, {concurrency} in flight, {rounds} rounds of "
        f"{requests} requests each"
    )
    print(f"    without SignalsMiddleware: median latency {without * 1e3:8.3f} ms")
    print(f"    with SignalsMiddleware:    median latency {with_ * 1e3:8.3f} ms")
    for name in ("without", "with"):
        rounds_ms = " ".join(f"{x * 1e3:.2f}" for x in samples[name])
        print(f"    per round, {name:7s} (ms): {rounds_ms}")
    print(f"    ratio: {with_ / without:.3f}x  (target <= 1.05x)")
    return with_ / without


# -- 2. in-process -------------------------------------------------------------------------


def _bench_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/orders/1",
        "raw_path": b"/orders/1",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "server": ("bench", 80),
        "client": ("127.0.0.1", 1234),
        "state": {},
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Any) -> None:
    pass


async def _asgi_ns(app: Any, count: int) -> float:
    scope = _bench_scope()
    start = time.perf_counter_ns()
    for _ in range(count):
        await app(dict(scope), _receive, _discard)
    return (time.perf_counter_ns() - start) / count


def in_process(repeats: int, count: int) -> None:
    with_app, without_app = shipped_app(), bare_app()

    async def measure() -> tuple[float, float]:
        await _asgi_ns(with_app, 200)
        await _asgi_ns(without_app, 200)
        a, b = [], []
        for _ in range(repeats):
            a.append(await _asgi_ns(with_app, count))
            b.append(await _asgi_ns(without_app, count))
        return statistics.median(a), statistics.median(b)

    with_ns, without_ns = asyncio.run(measure())
    print(f"  the app called as an ASGI callable, {count} requests x {repeats} repeats")
    print(f"    without SignalsMiddleware: {without_ns / 1e3:8.2f} us/request")
    print(f"    with SignalsMiddleware:    {with_ns / 1e3:8.2f} us/request")
    print(
        f"    added by the middleware: {(with_ns - without_ns) / 1e3:.2f} us/request "
        f"({with_ns / without_ns:.3f}x)"
    )


# -- 3. background dispatch ----------------------------------------------------------------


def _backends() -> list[tuple[str, str, dict[str, Any]]]:
    backends: list[tuple[str, str, dict[str, Any]]] = [("asyncio", "asyncio", {})]
    try:
        import uvloop

        backends.append(("uvloop", "asyncio", {"loop_factory": uvloop.new_event_loop}))
    except ImportError:
        pass
    backends.append(("trio", "trio", {}))
    return backends


def _run(fn: Callable[[], Coroutine[Any, Any, Any]], backend: str, options: dict[str, Any]) -> Any:
    return anyio.run(fn, backend=backend, backend_options=options)


def background(repeats: int, sends: int) -> None:
    import asignals

    signal_ = asignals.AsyncSignal(name="bench")

    async def receiver(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(0)  # one suspension, like any I/O

    signal_.connect(receiver, weak=False)

    async def nowait() -> tuple[float, int]:
        start = time.perf_counter()
        async with asignals.background.dispatcher(max_pending=None) as d:
            for n in range(sends):
                signal_.send_nowait("bench", n=n)
        return sends / (time.perf_counter() - start), d.peak_pending

    async def later() -> tuple[float, int]:
        start = time.perf_counter()
        async with asignals.background.dispatcher(max_pending=1000) as d:
            for n in range(sends):
                await signal_.send_later("bench", n=n)
        return sends / (time.perf_counter() - start), d.peak_pending

    async def memory() -> tuple[int, int]:
        async with asignals.background.dispatcher(max_pending=None) as d:
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for n in range(sends):
                signal_.send_nowait("bench", n=n)
            peak = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
        return peak, d.peak_pending

    print(f"  {sends} sends to one async receiver that suspends once; median of {repeats}")
    for name, backend, options in _backends():
        runs = [_run(nowait, backend, options) for _ in range(repeats)]
        rate, peak = statistics.median(r[0] for r in runs), max(r[1] for r in runs)
        bounded = [_run(later, backend, options) for _ in range(repeats)]
        rate_later = statistics.median(r[0] for r in bounded)
        peak_later = max(r[1] for r in bounded)
        mem, mem_peak = _run(memory, backend, options)
        print(
            f"    {name:8s} send_nowait: {rate:9,.0f} sends/s, peak backlog {peak:6d}, "
            f"{mem / mem_peak:,.0f} B per pending send ({mem / 2**20:.1f} MiB at peak)"
        )
        print(
            f"    {name:8s} send_later (max_pending=1000): {rate_later:9,.0f} sends/s, "
            f"peak backlog {peak_later}"
        )


# -- 4. held sends ----------------------------------------------------------------------


def _held_apps(signal_: Any) -> dict[str, Any]:
    from fastapi import FastAPI

    from asignals.contrib.asgi import SignalsMiddleware

    def app_with(endpoint: Callable[[], None]) -> Any:
        app = FastAPI()
        app.add_middleware(SignalsMiddleware)

        @app.get("/orders/1")
        async def order() -> dict[str, int]:
            endpoint()
            return {"id": 1}

        return app

    def nothing() -> None:
        pass

    def nowait(k: int) -> Callable[[], None]:
        def endpoint() -> None:
            for n in range(k):
                signal_.send_nowait("bench", n=n)

        return endpoint

    def held(k: int) -> Callable[[], None]:
        def endpoint() -> None:
            for n in range(k):
                signal_.send_after_response("bench", n=n)

        return endpoint

    return {
        "no send": app_with(nothing),
        **{f"send_nowait x{k}": app_with(nowait(k)) for k in (1, 3)},
        **{f"send_after_response x{k}": app_with(held(k)) for k in (1, 3)},
    }


def held_sends(repeats: int, count: int) -> None:
    import asignals

    signal_ = asignals.AsyncSignal(name="bench")

    async def receiver(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(0)

    signal_.connect(receiver, weak=False)
    apps = _held_apps(signal_)

    async def timed(app: Any, requests: int) -> float:
        """ns per request; the loop runs between requests, as a server's would, and the
        dispatcher's drain of what is left is timed too."""
        scope = _bench_scope()
        gc.collect()  # each chunk starts from the same heap: no collection left by the last
        start = time.perf_counter_ns()
        async with asignals.dispatcher(max_pending=None):
            for _ in range(requests):
                await app(dict(scope), _receive, _discard)
                await asyncio.sleep(0)
        return (time.perf_counter_ns() - start) / requests

    async def measure() -> dict[str, float]:
        chunk = 50  # short chunks, variants rotated: drift on a shared machine hits all alike
        for app in apps.values():  # warm-up
            await timed(app, chunk)
        samples: dict[str, list[float]] = {name: [] for name in apps}
        names = list(apps)
        for r in range(repeats * max(1, count // chunk)):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                samples[name].append(await timed(apps[name], chunk))
        return {name: statistics.median(values) for name, values in samples.items()}

    async def isolated() -> tuple[float, float]:
        """ns per send, no request around it: 3 sends per simulated request, held then
        delivered, against 3 ``send_nowait``. Submission only; the drain is not timed."""
        from asignals import _held

        nowait: list[float] = []
        held: list[float] = []
        for r in range(repeats):
            for variant in ("nowait", "held") if r % 2 == 0 else ("held", "nowait"):
                async with asignals.dispatcher(max_pending=None):
                    start = time.perf_counter_ns()
                    if variant == "nowait":
                        for _ in range(count):
                            for n in range(3):
                                signal_.send_nowait("bench", n=n)
                    else:
                        for _ in range(count):
                            hold: list[Any] = []
                            token = _held.current.set(hold)
                            for n in range(3):
                                signal_.send_after_response("bench", n=n)
                            _held.current.reset(token)
                            _held.deliver(hold)
                    elapsed = (time.perf_counter_ns() - start) / (3 * count)
                (nowait if variant == "nowait" else held).append(elapsed)
        return statistics.median(nowait), statistics.median(held)

    print(
        f"  in-process, chunks of 50 requests (and the drain of their sends), variants "
        f"rotated, median of {repeats * max(1, count // 50)} chunks"
    )
    for name, _, options in _backends():
        if name == "trio":
            continue  # FastAPI on trio works, but servers run it on asyncio/uvloop
        ns = _run(measure, "asyncio", options)
        base = ns["no send"]
        print(f"    {name}: no send {base / 1e3:.2f} us/request")
        for k in (1, 3):
            nowait, held = ns[f"send_nowait x{k}"], ns[f"send_after_response x{k}"]
            print(
                f"    {name}: {k} send(s)/request: send_nowait {nowait / 1e3:.2f} us, "
                f"send_after_response {held / 1e3:.2f} us; holding adds "
                f"{(held - nowait) / 1e3:+.2f} us/request ({held / nowait:.3f}x), "
                f"{(held - nowait) / k:+.0f} ns per held send"
            )
        nowait_ns, held_ns = _run(isolated, "asyncio", options)
        print(
            f"    {name}: isolated, per send: send_nowait {nowait_ns:.0f} ns, "
            f"send_after_response + delivery {held_ns:.0f} ns ({held_ns - nowait_ns:+.0f} ns)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run, seconds not minutes")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    quick = args.quick
    repeats = args.repeats or 3
    sys.path.insert(0, str(ROOT))
    print(
        f"asignals ASGI benchmark: Python {platform.python_version()} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    print("1. middleware overhead through a real server")
    real_server(
        rounds=2 * repeats if not quick else 2,
        requests=500 if quick else 3000,
        concurrency=args.concurrency,
    )
    print("2. middleware overhead in-process")
    in_process(5 * repeats, 100 if quick else 600)
    print("3. background dispatch")
    background(repeats, 2000 if quick else 10_000)
    print("4. held sends (send_after_response)")
    held_sends(5 * repeats, 100 if quick else 600)


if __name__ == "__main__":
    main()
