"""The FastAPI example, in-process through httpx and for real under uvicorn (asyncio only)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from waiting import Child

from asignals import AsyncSignal
from asignals.contrib.asgi import SignalsMiddleware, lifespan
from asignals.testing import SignalRecorder

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fastapi_app.py"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def read_outbox(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def orders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of the example module (its own app, signals and counters)."""
    monkeypatch.setenv("ORDERS_OUTBOX", str(tmp_path / "outbox.jsonl"))
    monkeypatch.setenv("ORDERS_EMAIL_DELAY", "0.2")
    spec = importlib.util.spec_from_file_location("orders_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


async def test_orders_through_the_asgi_transport(
    orders: ModuleType, signal_recorder: SignalRecorder
) -> None:
    signal_recorder.watch(orders.order_confirmed)
    app = orders.app
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        placed = [
            await client.post(
                "/orders", json={"item": "gadget", "quantity": 1, "email": f"{n}@example.com"}
            )
            for n in range(3)
        ]
        assert [r.status_code for r in placed] == [201, 201, 201]
        assert placed[0].json()["receivers"] == ["order 1 recorded"]
        refused = await client.post(
            "/orders", json={"item": "gadget", "quantity": 1, "email": "late@example.com"}
        )
        assert refused.status_code == 409 and "only 0 gadget" in refused.json()["detail"]
        assert (await client.get("/boom")).status_code == 500
        assert read_outbox(orders.OUTBOX) == []  # the responses did not wait for the emails
        stats = (await client.get("/stats")).json()
    assert stats["requests"] == 5  # the /stats request itself finishes after it is counted
    assert stats["by_route"] == {"POST /orders": 4, "GET /boom": 1}
    assert stats["errors"] == {"RuntimeError": 1}
    emails = read_outbox(orders.OUTBOX)  # the lifespan's exit drained them
    assert sorted(e["to"] for e in emails) == ["0@example.com", "1@example.com", "2@example.com"]
    # The refused order's email was held, then dropped with the 409.
    [dropped] = signal_recorder.dropped
    assert (dropped.kwargs["order"].email, dropped.status) == ("late@example.com", 409)
    assert len(signal_recorder.of(orders.order_confirmed)) == 3


async def test_plain_lifespan_helper_and_middleware_on_a_fastapi_app() -> None:
    done: list[str] = []
    audit = AsyncSignal(name="audit")

    async def write(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(0.05)
        done.append(kwargs["what"])

    audit.connect(write, weak=False)
    app = FastAPI(lifespan=lifespan)
    app.add_middleware(SignalsMiddleware)

    @app.get("/")
    async def index() -> dict[str, str]:
        audit.send_nowait("api", what="index")
        return {"ok": "yes"}

    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        assert (await client.get("/")).json() == {"ok": "yes"}
    assert done == ["index"]


def _start_uvicorn(port: int, env: dict[str, str]) -> Child:
    """The command the README gives, on a free loopback port."""
    command = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app"]
    return Child(*command, "--host", "127.0.0.1", "--port", str(port), cwd=ROOT, env=env)


async def test_uvicorn_sigterm_delivers_every_queued_email(tmp_path: Path, free_port: int) -> None:
    outbox = tmp_path / "outbox.jsonl"
    env = {**os.environ, "ORDERS_OUTBOX": str(outbox), "ORDERS_EMAIL_DELAY": "1.0"}
    base_url = f"http://127.0.0.1:{free_port}"
    server = _start_uvicorn(free_port, env)
    try:
        await server.serving(base_url + "/stats", "uvicorn starting the example app")
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            responses: list[httpx.Response] = []

            async def place(n: int) -> None:
                body = {"item": "widget", "quantity": 1, "email": f"buyer{n}@example.com"}
                responses.append(await client.post("/orders", json=body))

            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(place, n)
            assert sorted(r.status_code for r in responses) == [201] * 20
            stats = (await client.get("/stats")).json()
            assert stats["by_route"]["POST /orders"] == 20
        assert len(read_outbox(outbox)) < 20  # emails still in flight when SIGTERM arrives
        server.signal(signal.SIGTERM)
        code = await server.exited("the graceful shutdown after SIGTERM")
    finally:
        server.kill()
    # Recent uvicorn re-raises the signal after its graceful shutdown: -SIGTERM is a clean exit.
    assert code in (0, -signal.SIGTERM), str(server)
    assert "Application shutdown complete" in server.stderr(), str(server)
    emails = read_outbox(outbox)
    assert sorted(e["to"] for e in emails) == sorted(f"buyer{n}@example.com" for n in range(20))
