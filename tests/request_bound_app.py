"""A FastAPI app whose endpoints hold sends, for tests/test_request_bound.py.

The same app is driven in-process through httpx and served by a real uvicorn
(``uvicorn --app-dir tests --factory request_bound_app:served_app``). Every endpoint holds two
sends of ``held`` (``step=1`` then ``step=2``) for its request number ``n``, then succeeds or
fails its own way. ``served_app`` mounts it twice: ``/default`` with the middleware's default
``deliver_on`` and ``/lenient``, which also delivers on 409.

Under uvicorn the receiver appends each delivery as a JSON line to ``$HELD_LOG``, after
``$HELD_DELAY`` seconds (a slow side effect, still queued when the server is told to stop);
``/slow`` writes an ``arrived`` line first, so a test knows the request is in flight.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, WebSocket
from fastapi.responses import JSONResponse
from starlette.applications import Starlette
from starlette.routing import Mount

from asignals import AsyncSignal
from asignals.contrib.asgi import SignalsMiddleware, make_lifespan

held = AsyncSignal(name="held")
#: Set by an endpoint just before it holds: its receivers must see the value of that moment.
request_id: ContextVar[str] = ContextVar("request_id", default="-")


def hold_both(where: str, n: int) -> None:
    request_id.set(f"{where}-{n}")
    held.send_after_response(where, n=n, step=1)
    held.send_after_response(where, n=n, step=2)


def build(deliver_on: Any = None) -> FastAPI:
    """The endpoints, behind a SignalsMiddleware with this ``deliver_on`` (None: default)."""
    app = FastAPI()
    options = {} if deliver_on is None else {"deliver_on": deliver_on}
    app.add_middleware(SignalsMiddleware, **options)

    @app.post("/ok/{n}")
    async def ok(n: int) -> dict[str, int]:
        hold_both("ok", n)
        return {"n": n}

    @app.post("/raise/{n}")
    async def raises(n: int) -> None:
        hold_both("raise", n)
        raise RuntimeError(f"request {n} failed after holding its sends")

    @app.post("/conflict/{n}")
    async def conflict(n: int) -> None:
        hold_both("conflict", n)
        raise HTTPException(status_code=409, detail="already placed")

    @app.post("/error/{n}")
    async def error(n: int) -> JSONResponse:
        hold_both("error", n)
        return JSONResponse({"n": n}, status_code=500)

    @app.post("/sync/{n}")
    def sync(n: int) -> dict[str, int]:  # FastAPI runs it in a worker thread
        hold_both("sync", n)
        return {"n": n}

    @app.post("/slow/{n}")
    async def slow(n: int, seconds: float = 1.0) -> dict[str, int]:
        hold_both("slow", n)
        _log({"arrived": n})
        await anyio.sleep(seconds)
        return {"n": n}

    @app.websocket("/ws/{n}")
    async def ws(websocket: WebSocket, n: int) -> None:
        await websocket.accept()
        hold_both("ws", n)
        if await websocket.receive_text() == "fail":
            raise RuntimeError(f"websocket {n} failed after holding its sends")
        await websocket.close()

    return app


def _log(line: dict[str, Any]) -> None:
    path = os.environ.get("HELD_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")


async def _record_delivery(sender: str, n: int, step: int, **kwargs: Any) -> None:
    await anyio.sleep(float(os.environ.get("HELD_DELAY", "0")))
    _log({"where": sender, "n": n, "step": step, "request_id": request_id.get()})


def served_app() -> Starlette:
    """uvicorn's ``--factory`` target: both mounts, and a lifespan running the dispatcher."""
    held.connect(_record_delivery, weak=False)
    return Starlette(
        routes=[
            Mount("/default", app=build()),
            Mount("/lenient", app=build(lambda status: status < 400 or status == 409)),
        ],
        lifespan=make_lifespan(drain_timeout=30),
    )
