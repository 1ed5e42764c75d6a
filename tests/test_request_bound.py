"""send_after_response through SignalsMiddleware: a real FastAPI app (tests/request_bound_app.py)
in process through httpx on asyncio, uvloop and trio, then served by a real uvicorn."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI, HTTPException
from request_bound_app import build, held, request_id, served_app
from starlette.applications import Starlette
from waiting import STEP_TIMEOUT, Child, eventually

import asignals
import asignals.background
from asignals import AsyncSignal, dispatcher
from asignals.contrib.asgi import SignalsMiddleware
from asignals.signals import request_finished
from asignals.testing import SignalRecorder

pytestmark = pytest.mark.anyio

TESTS = Path(__file__).resolve().parent


@asynccontextmanager
async def client_of(
    app: Starlette, *, raise_app_exceptions: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the app, inside its lifespan (the dispatcher): leaving drains it."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client


def delivered(recorder: SignalRecorder) -> list[tuple[str, int, int]]:
    """The delivered sends, sorted: they run concurrently (the order they are handed over in
    is asserted on its own)."""
    return sorted((s.sender, s.kwargs["n"], s.kwargs["step"]) for s in recorder.of(held))


def dropped(recorder: SignalRecorder) -> list[tuple[str, int, int]]:
    return [(d.sender, d.kwargs["n"], d.kwargs["step"]) for d in recorder.dropped]


# -- in process ----------------------------------------------------------------------------


async def test_a_200_delivers_the_held_sends_in_call_order_after_request_finished(
    signal_recorder: SignalRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    signal_recorder.watch(held)
    steps: list[str] = []
    submit = asignals.background.submit

    def watched_submit(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
        steps.append(f"submit step {kwargs['step']}")
        submit(signal, sender, kwargs)

    def finished(sender: Any, **kwargs: Any) -> None:
        steps.append("request_finished")

    def context_of_the_call(sender: Any, step: int, **kwargs: Any) -> str:
        return request_id.get()

    monkeypatch.setattr(asignals.background, "submit", watched_submit)
    with request_finished.connected_to(finished), held.connected_to(context_of_the_call):
        async with client_of(served_app()) as client:
            response = await client.post("/default/ok/7")
            assert (response.status_code, response.json()) == (200, {"n": 7})
            assert steps == ["request_finished", "submit step 1", "submit step 2"]
    assert delivered(signal_recorder) == [("ok", 7, 1), ("ok", 7, 2)]
    assert signal_recorder.dropped == []
    # Each receiver saw the context variables of the moment its send was held.
    for sent in signal_recorder.of(held):
        assert dict(sent.results or [])[context_of_the_call] == "ok-7"


@pytest.mark.parametrize(
    ("path", "status", "exception"),
    [
        ("raise", 500, RuntimeError),
        ("conflict", 409, None),
        ("error", 500, None),
    ],
    ids=["raised-exception", "http-exception-409", "500-response"],
)
async def test_a_failed_request_drops_its_held_sends_and_logs_why(
    path: str,
    status: int,
    exception: type[Exception] | None,
    signal_recorder: SignalRecorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    signal_recorder.watch(held)
    caplog.set_level(logging.DEBUG, logger="asignals.asgi")
    async with client_of(served_app()) as client:
        assert (await client.post(f"/default/{path}/3")).status_code == status
        assert (await client.post("/default/ok/4")).status_code == 200
    assert delivered(signal_recorder) == [("ok", 4, 1), ("ok", 4, 2)]  # after the drain
    assert dropped(signal_recorder) == [(path, 3, 1), (path, 3, 2)]
    [first, _] = signal_recorder.dropped
    if exception is None:
        assert (first.status, first.exception) == (status, None)
    else:
        assert isinstance(first.exception, exception)
    [message] = [r.getMessage() for r in caplog.records if r.name == "asignals.asgi"]
    assert f"dropped 2 held send(s) of POST /default/{path}/3 (held, held)" in message
    assert ("RuntimeError" if exception else f"status {status}") in message


async def test_a_custom_deliver_on_is_honoured(signal_recorder: SignalRecorder) -> None:
    signal_recorder.watch(held)
    async with client_of(served_app()) as client:
        assert (await client.post("/lenient/conflict/1")).status_code == 409
        assert (await client.post("/lenient/error/2")).status_code == 500
        assert (await client.post("/default/conflict/3")).status_code == 409
    assert delivered(signal_recorder) == [("conflict", 1, 1), ("conflict", 1, 2)]
    assert dropped(signal_recorder) == [
        ("error", 2, 1),
        ("error", 2, 2),
        ("conflict", 3, 1),
        ("conflict", 3, 2),
    ]


async def test_a_def_endpoint_holds_sends_from_its_worker_thread(
    signal_recorder: SignalRecorder,
) -> None:
    signal_recorder.watch(held)
    seen: list[str] = []

    def context_of_the_call(sender: Any, **kwargs: Any) -> None:
        seen.append(request_id.get())

    with held.connected_to(context_of_the_call):
        async with client_of(served_app()) as client:
            for n in range(3):
                assert (await client.post(f"/default/sync/{n}")).status_code == 200
    assert sorted(delivered(signal_recorder)) == [("sync", n, s) for n in range(3) for s in (1, 2)]
    assert sorted(seen) == sorted(f"sync-{n}" for n in range(3) for _ in (1, 2))


async def test_sends_held_under_a_base_http_middleware_reach_the_signals_middleware(
    signal_recorder: SignalRecorder,
) -> None:
    """BaseHTTPMiddleware runs the rest of the app in a child task, in a copy of the context."""
    signal_recorder.watch(held)
    app = FastAPI()
    tasks: set[object] = set()

    @app.middleware("http")
    async def tag(request: Any, call_next: Any) -> Any:
        return await call_next(request)

    app.add_middleware(SignalsMiddleware)  # added last: outermost, around the http middleware

    @app.post("/{n}")
    async def endpoint(n: int) -> None:
        tasks.add(anyio.get_current_task().id)
        held.send_after_response("base", n=n, step=1)

    async with dispatcher():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.post("/1")).status_code == 200
            outer = anyio.get_current_task().id
    assert outer not in tasks
    assert delivered(signal_recorder) == [("base", 1, 1)]


async def test_a_websocket_delivers_when_its_app_returns_and_drops_when_it_raises(
    signal_recorder: SignalRecorder,
) -> None:
    signal_recorder.watch(held)
    app = build()
    async with dispatcher():
        await websocket(app, "/ws/0", "bye")
        with pytest.raises(RuntimeError, match="websocket 1 failed"):
            await websocket(app, "/ws/1", "fail")
    assert delivered(signal_recorder) == [("ws", 0, 1), ("ws", 0, 2)]
    assert dropped(signal_recorder) == [("ws", 1, 1), ("ws", 1, 2)]
    assert isinstance(signal_recorder.dropped[0].exception, RuntimeError)


async def websocket(app: Any, path: str, text: str) -> None:
    """One websocket connection driven as a server does (httpx speaks no websocket)."""
    inbox = [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": text}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "path": path, "root_path": ""}
    await app({**scope, "headers": [], "query_string": b""}, receive, send)


async def test_a_cancelled_request_drops_its_held_sends(signal_recorder: SignalRecorder) -> None:
    signal_recorder.watch(held)

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        held.send_after_response("slow", n=1, step=1)
        await anyio.sleep(10)  # the client goes away before this ends

    scope = {"type": "http", "method": "GET", "path": "/slow", "headers": []}
    async with dispatcher():
        with anyio.move_on_after(0.05):
            await SignalsMiddleware(slow_app)(scope, _never, _ignore)
    assert delivered(signal_recorder) == []
    assert dropped(signal_recorder) == [("slow", 1, 1)]
    assert isinstance(signal_recorder.dropped[0].exception, anyio.get_cancelled_exc_class())


async def _never() -> dict[str, Any]:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def _ignore(message: Any) -> None:
    pass


async def test_200_concurrent_requests_half_failing_deliver_exactly_the_successful_half(
    signal_recorder: SignalRecorder,
) -> None:
    signal_recorder.watch(held)
    kinds = ["ok", "raise", "sync", "conflict"]
    statuses: dict[int, int] = {}
    async with client_of(served_app()) as client:

        async def request(n: int) -> None:
            statuses[n] = (await client.post(f"/default/{kinds[n % 4]}/{n}")).status_code

        async with anyio.create_task_group() as tg:
            for n in range(200):
                tg.start_soon(request, n)
    succeeded = {n for n, status in statuses.items() if status == 200}
    assert succeeded == {n for n in range(200) if n % 2 == 0}
    assert sorted(delivered(signal_recorder)) == sorted(
        (kinds[n % 4], n, s) for n in succeeded for s in (1, 2)
    )
    assert len(signal_recorder.dropped) == 200


def test_outside_a_request_send_after_response_says_how_to_add_the_middleware() -> None:
    with pytest.raises(RuntimeError, match=r"add_middleware\(SignalsMiddleware\).*send_nowait"):
        held.send_after_response("script", n=1, step=1)


async def test_a_task_outliving_its_request_cannot_hold_any_more() -> None:
    errors: list[RuntimeError] = []
    app = FastAPI()
    app.add_middleware(SignalsMiddleware)

    async def later() -> None:
        await anyio.sleep(0.05)
        try:
            held.send_after_response("late", n=0, step=1)
        except RuntimeError as exc:
            errors.append(exc)

    async with dispatcher(), anyio.create_task_group() as tg:

        @app.get("/")
        async def index() -> None:
            # A task started from the request's context, living on after the response.
            tg.start_soon(later)

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/")).status_code == 200
    [error] = errors
    assert "after its request had finished" in str(error)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: held.send_after_response(n=1), "needs a sender"),
        (lambda: held.send_after_response("api", 1), "only positional argument"),
        (lambda: held.send_after_response("api", signal=1), "keyword argument 'signal'"),
        (lambda: held.send_after_response("api", timeout=1), "takes no dispatch options"),
        (lambda: held.send_after_response("api", sender="x"), "sender twice"),
    ],
    ids=["no-sender", "positional", "signal-kwarg", "dispatch-option", "sender-twice"],
)
def test_send_after_response_checks_its_arguments_as_send_nowait(call: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        call()


@asignals.signal
def order_confirmed(sender: str, *, order_id: int) -> None:
    """A typed signal: its keyword names are checked when the send is held."""


def test_a_typed_signal_checks_the_keyword_names_when_the_send_is_held() -> None:
    with pytest.raises(TypeError, match="order_id"):
        order_confirmed.send_after_response("api", order=1)  # type: ignore[call-arg]


@pytest.mark.parametrize("deliver_on", [400, "status < 400", None], ids=["int", "str", "none"])
def test_a_deliver_on_that_is_not_callable_is_refused_at_construction(deliver_on: Any) -> None:
    with pytest.raises(TypeError, match=r"deliver_on=.*predicate on the response status"):
        SignalsMiddleware(build(), deliver_on=deliver_on)


async def test_without_a_dispatcher_the_delivery_error_reaches_the_server() -> None:
    transport = httpx.ASGITransport(app=build())  # no lifespan: no dispatcher
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.raises(RuntimeError, match="needs a running dispatcher"):
            await client.post("/ok/1")


async def test_a_deliver_on_that_raises_drops_and_logs_an_error(
    signal_recorder: SignalRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    signal_recorder.watch(held)

    def broken(status: int) -> bool:
        raise ValueError("broken predicate")

    async with dispatcher():
        transport = httpx.ASGITransport(app=build(broken))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.post("/ok/1")).status_code == 200
    assert delivered(signal_recorder) == []
    assert isinstance(signal_recorder.dropped[0].exception, ValueError)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "deliver_on(200) raised for POST /ok/1" in record.getMessage()


async def test_the_recorder_lists_dropped_sends_of_watched_signals_until_closed() -> None:
    other = AsyncSignal(name="other")
    app = FastAPI()
    app.add_middleware(SignalsMiddleware)

    @app.post("/")
    async def refused() -> None:
        held.send_after_response("api", n=1, step=1)
        other.send_after_response("api")
        raise HTTPException(status_code=409)

    transport = httpx.ASGITransport(app=app)
    async with dispatcher(), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with SignalRecorder(held) as recorder:
            assert (await client.post("/")).status_code == 409
        assert (await client.post("/")).status_code == 409  # after close: not recorded
    [drop] = recorder.dropped
    assert (drop.signal, drop.sender, drop.kwargs, drop.status) == (
        held,
        "api",
        {"n": 1, "step": 1},
        409,
    )
    assert recorder.sends == []


# -- under a real uvicorn --------------------------------------------------------------------


class Uvicorn(Child):
    """``uvicorn --factory request_bound_app:served_app`` on a free loopback port."""

    def __init__(self, port: int, log: Path, delay: float) -> None:
        env = {**os.environ, "HELD_LOG": str(log), "HELD_DELAY": str(delay)}
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(TESTS), "--factory"]
        command += ["request_bound_app:served_app", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--no-access-log"]
        super().__init__(*command, env=env)
        self.log = log
        self.base_url = f"http://127.0.0.1:{port}"

    def records(self) -> list[dict[str, Any]]:
        """What the app's held sends wrote to ``HELD_LOG``."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def deliveries(self) -> list[tuple[str, int, int]]:
        return sorted((x["where"], x["n"], x["step"]) for x in self.records() if "step" in x)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    async def stopped(self) -> None:
        """Wait for the graceful shutdown that SIGTERM started; it must complete."""
        code = await self.exited("uvicorn's graceful shutdown after SIGTERM")
        # Recent uvicorn re-raises the signal after its graceful shutdown: -SIGTERM is clean.
        assert code in (0, -signal.SIGTERM), str(self)
        assert "Application shutdown complete" in self.stderr(), str(self)

    async def shutdown(self) -> None:
        self.terminate()
        await self.stopped()


@pytest.fixture
def uvicorn(tmp_path: Path, free_port: int) -> Iterator[Any]:
    """await start(delay=0) -> a running Uvicorn whose deliveries wait ``delay`` s each."""
    started: list[Uvicorn] = []

    async def start(delay: float = 0.0) -> Uvicorn:
        server = Uvicorn(free_port, tmp_path / "held.jsonl", delay)
        started.append(server)
        await server.serving(server.base_url + "/default/docs", "uvicorn starting the app")
        return server

    yield start
    for server in started:
        server.kill()


on_asyncio = pytest.mark.parametrize("anyio_backend", ["asyncio"])
# uvicorn closes the connection of a request whose app raised: no keep-alive to trip on that.
FRESH = httpx.Limits(max_connections=200, max_keepalive_connections=0)
KINDS = ["ok", "raise", "sync", "conflict"]  # n % 4: the even ones succeed


@on_asyncio
async def test_uvicorn_delivers_on_success_and_drops_on_failure(uvicorn: Any) -> None:
    server = await uvicorn()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=20, limits=FRESH) as client:
        for path, status in [
            ("default/ok/1", 200),
            ("default/raise/2", 500),
            ("default/conflict/3", 409),
            ("default/error/4", 500),
            ("default/sync/5", 200),
            ("lenient/conflict/6", 409),
            ("lenient/error/7", 500),
        ]:
            assert (await client.post(f"/{path}")).status_code == status, path
    await server.shutdown()
    assert server.deliveries() == [
        (where, n, step)
        for where, n in [("conflict", 6), ("ok", 1), ("sync", 5)]
        for step in (1, 2)
    ]
    assert {x["request_id"] for x in server.records()} == {"ok-1", "sync-5", "conflict-6"}


@on_asyncio
async def test_uvicorn_200_concurrent_requests_half_failing_deliver_the_successful_half(
    uvicorn: Any,
) -> None:
    server = await uvicorn()
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=FRESH) as client:

        async def request(n: int) -> None:
            statuses[n] = (await client.post(f"/default/{KINDS[n % 4]}/{n}")).status_code

        async with anyio.create_task_group() as tg:
            for n in range(200):
                tg.start_soon(request, n)
    await server.shutdown()
    succeeded = sorted(n for n, status in statuses.items() if status == 200)
    assert succeeded == list(range(0, 200, 2))
    assert server.deliveries() == sorted((KINDS[n % 4], n, s) for n in succeeded for s in (1, 2))


@on_asyncio
async def test_uvicorn_sigterm_delivers_every_held_and_queued_send_of_every_success(
    uvicorn: Any,
) -> None:
    server = await uvicorn(1.0)  # each delivery takes 1 s
    statuses: dict[tuple[str, int], int] = {}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=FRESH) as client:

        async def post(kind: str, n: int, query: str = "") -> None:
            statuses[kind, n] = (await client.post(f"/default/{kind}/{n}{query}")).status_code

        # Answered before SIGTERM: the deliveries of the successful ones are queued.
        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(post, KINDS[n % 4], n)
        assert len(server.deliveries()) < 10  # still queued when SIGTERM arrives
        # In flight at SIGTERM, their sends held: they finish during the graceful shutdown.
        async with anyio.create_task_group() as tg:
            for n in range(10, 16):
                tg.start_soon(post, "slow", n, "?seconds=1.5")
            await eventually(
                lambda: sum("arrived" in x for x in server.records()) >= 6,
                STEP_TIMEOUT,
                step="the 6 slow requests arriving in the app",
                children=[server],
            )
            server.terminate()
    await server.stopped()
    succeeded = sorted(key for key, status in statuses.items() if status == 200)
    assert sorted(n for _, n in succeeded) == [0, 2, 4, 6, 8, *range(10, 16)]
    assert server.deliveries() == sorted((kind, n, s) for kind, n in succeeded for s in (1, 2))
