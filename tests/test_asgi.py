"""SignalsMiddleware with raw ASGI apps, and the lifespan helper, on asyncio, uvloop and trio."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asignals import AsyncSignal
from asignals.contrib.asgi import SignalsMiddleware, lifespan, make_lifespan
from asignals.signals import got_request_exception, request_finished, request_started

pytestmark = pytest.mark.anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


def http_scope(path: str = "/orders") -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "method": "GET",
        "path": path,
        "headers": [],
    }


async def call(app: Any, scope: Scope) -> list[Message]:
    """Drive one connection the way a server would; return what the app sent."""
    sent: list[Message] = []
    first = {"http": "http.request", "websocket": "websocket.connect"}.get(scope["type"])

    async def receive() -> Message:
        return {"type": first, "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


class Events:
    """Collects request signals and what the app did, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any, dict[str, Any]]] = []

    def receiver(self, name: str) -> Callable[..., None]:
        def record(sender: Any, **kwargs: Any) -> None:
            kwargs.pop("signal")
            self.log.append((name, sender, kwargs))

        return record

    def names(self) -> list[str]:
        return [name for name, _, _ in self.log]


@asynccontextmanager
async def listening(events: Events) -> AsyncIterator[None]:
    with (
        request_started.connected_to(started := events.receiver("started")),
        request_finished.connected_to(finished := events.receiver("finished")),
        got_request_exception.connected_to(failed := events.receiver("exception")),
    ):
        del started, finished, failed
        yield


def raw_app(events: Events, *, fail: BaseException | None = None, delay: float = 0) -> Any:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        events.log.append(("app", None, {}))
        if delay:
            await anyio.sleep(delay)
        if fail is not None:
            raise fail
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})

    return app


async def test_http_request_sends_started_and_finished_around_the_app() -> None:
    events = Events()
    app = raw_app(events)
    scope = http_scope()
    async with listening(events):
        sent = await call(SignalsMiddleware(app), scope)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert events.names() == ["started", "app", "finished"]
    for name, sender, kwargs in events.log:
        if name != "app":
            assert sender is app  # no scope["app"]: the wrapped app is the sender
            assert kwargs == {"scope": scope}


async def test_websocket_connections_send_the_request_signals() -> None:
    events = Events()
    async with listening(events):
        sent = await call(SignalsMiddleware(raw_app(events)), {"type": "websocket", "path": "/ws"})
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert events.names() == ["started", "app", "finished"]


async def test_lifespan_and_unknown_scopes_pass_through_silently() -> None:
    events = Events()
    seen: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async with listening(events):
        await call(SignalsMiddleware(app), {"type": "lifespan"})
        await call(SignalsMiddleware(app), {"type": "custom.extension"})
    assert seen == ["lifespan", "custom.extension"]
    assert events.log == []


async def test_an_app_exception_is_reported_then_reraised_unchanged() -> None:
    events = Events()
    boom = ValueError("boom")

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("a broken receiver must not mask the app's exception")

    async with listening(events):
        with got_request_exception.connected_to(broken), pytest.raises(ValueError) as caught:
            await call(SignalsMiddleware(raw_app(events, fail=boom)), http_scope())
    assert caught.value is boom
    assert events.names() == ["started", "app", "exception", "finished"]
    assert events.log[2][2]["exception"] is boom


async def test_request_finished_is_sent_when_the_request_is_cancelled() -> None:
    events = Events()
    async with listening(events):
        with anyio.move_on_after(0.02):
            await call(SignalsMiddleware(raw_app(events, delay=5)), http_scope())
    assert events.names() == ["started", "app", "finished"]


async def test_a_failing_request_started_receiver_fails_the_request_as_in_django() -> None:
    events = Events()

    def veto(sender: Any, **kwargs: Any) -> None:
        raise PermissionError("maintenance")

    with request_started.connected_to(veto), pytest.raises(ExceptionGroup) as caught:
        await call(SignalsMiddleware(raw_app(events)), http_scope())
    assert caught.group_contains(PermissionError)
    assert events.log == []  # the app never ran


async def test_sender_is_scope_app_when_the_framework_sets_it_or_the_one_given() -> None:
    events = Events()
    app = raw_app(events)
    framework_app = object()
    async with listening(events):
        await call(SignalsMiddleware(app), {**http_scope(), "app": framework_app})
        await call(SignalsMiddleware(app, sender="orders-api"), {**http_scope(), "app": object()})
    senders = [sender for name, sender, _ in events.log if name == "started"]
    assert senders[0] is framework_app and senders[1] == "orders-api"


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("main:app", "not the import string"),
        (None, "got None"),
        (Starlette, "got the class Starlette"),
        (lambda scope: None, "does not take those three arguments"),
    ],
    ids=["string", "none", "class", "wrong-arity"],
)
def test_a_non_asgi_app_is_refused_clearly(app: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        SignalsMiddleware(app)


# -- the lifespan helper, with the lifespan run in its own task as servers do -------------


class Server:
    """What a test server keeps: the lifespan messages sent and the lifespan state."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.messages: list[str] = []
        self.state: dict[str, Any] = {}

    async def get(self, path: str) -> tuple[int, bytes]:
        # Each request gets a shallow copy of the lifespan state, as servers do.
        scope = {**http_scope(path), "query_string": b"", "state": dict(self.state)}
        sent = await call(self.app, scope)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[Server]:
    """Run the ASGI lifespan protocol in a separate task, as uvicorn does."""
    server = Server(app)
    inbox_send, inbox_receive = anyio.create_memory_object_stream[Message](4)
    started, stopped = anyio.Event(), anyio.Event()

    async def send(message: Message) -> None:
        server.messages.append(message["type"])
        if message["type"].startswith("lifespan.startup."):
            started.set()
        if message["type"].startswith("lifespan.shutdown."):
            stopped.set()

    async with anyio.create_task_group() as tg, inbox_send, inbox_receive:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": server.state}
        tg.start_soon(app, scope, inbox_receive.receive, send)
        await inbox_send.send({"type": "lifespan.startup"})
        await started.wait()
        yield server
        await inbox_send.send({"type": "lifespan.shutdown"})
        await stopped.wait()


def starlette_app(on_request: Callable[[Request], Awaitable[None]], lifespan_: Any) -> Starlette:
    async def endpoint(request: Request) -> PlainTextResponse:
        await on_request(request)
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)], lifespan=lifespan_)


async def test_lifespan_lets_request_tasks_send_nowait_and_drains_at_shutdown() -> None:
    delivered: list[int] = []
    email = AsyncSignal(name="email")

    async def deliver(sender: Any, n: int, **kwargs: Any) -> None:
        await anyio.sleep(0.05)
        delivered.append(n)

    email.connect(deliver, weak=False)
    counter = iter(range(100))

    async def on_request(request: Request) -> None:
        email.send_nowait("shop", n=next(counter))

    app = SignalsMiddleware(starlette_app(on_request, lifespan))
    async with served(app) as server:
        for _ in range(5):
            assert await server.get("/") == (200, b"ok")
        assert delivered == []
    assert sorted(delivered) == [0, 1, 2, 3, 4]
    assert server.messages == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    with pytest.raises(RuntimeError, match="dispatcher"):
        email.send_nowait("shop", n=99)


async def test_make_lifespan_runs_the_dispatcher_inside_the_users_lifespan() -> None:
    steps: list[str] = []
    email = AsyncSignal(name="email")

    async def deliver(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(0.05)
        steps.append("email delivered")

    email.connect(deliver, weak=False)

    @asynccontextmanager
    async def resources(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        steps.append("startup")
        yield {"db": "a pool"}
        steps.append("shutdown")

    async def on_request(request: Request) -> None:
        assert request.state.db == "a pool"  # the user's lifespan state passes through
        email.send_nowait("shop")

    app = starlette_app(on_request, make_lifespan(resources, drain_timeout=5))
    async with served(app) as server:
        assert await server.get("/") == (200, b"ok")
    assert steps == ["startup", "email delivered", "shutdown"]


async def test_a_fastapi_def_endpoint_can_send_nowait_from_its_worker_thread() -> None:
    """FastAPI runs `def` endpoints in a worker thread (anyio.to_thread): send_nowait hops to
    the event loop from there."""
    delivered: list[tuple[int, bool]] = []
    email = AsyncSignal(name="email")
    endpoint_threads: list[int] = []

    async def deliver(sender: Any, n: int, **kwargs: Any) -> None:
        await anyio.sleep(0.05)
        delivered.append((n, threading.get_ident() in endpoint_threads))

    email.connect(deliver, weak=False)
    app = FastAPI(lifespan=lifespan)

    @app.get("/sync/{n}")
    def sync_endpoint(n: int) -> dict[str, int]:
        endpoint_threads.append(threading.get_ident())
        email.send_nowait("shop", n=n)
        return {"n": n}

    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        for n in range(3):
            response = await client.get(f"/sync/{n}")
            assert (response.status_code, response.json()) == (200, {"n": n})
        loop_thread = threading.get_ident()
    assert loop_thread not in endpoint_threads  # the endpoint really ran in a worker thread
    assert sorted(delivered) == [(0, False), (1, False), (2, False)]  # drained on shutdown


@asynccontextmanager
async def _resources(app: Any) -> AsyncIterator[None]:
    yield


async def _bare_generator(app: Any) -> AsyncIterator[None]:
    yield


@pytest.mark.parametrize(
    ("user_lifespan", "message"),
    [
        (object(), r"needs a lifespan function, lifespan\(app\) -> async context manager"),
        (_bare_generator, "bare async generator function: decorate it"),
        (_resources(None), r"not make_lifespan\(my_lifespan\(app\)\)"),
        (lambda: None, "does not take that one argument"),
    ],
    ids=["object", "bare-async-generator", "entered-context-manager", "wrong-arity"],
)
def test_make_lifespan_refuses_what_is_not_a_lifespan_at_construction(
    user_lifespan: Any, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        make_lifespan(user_lifespan)
