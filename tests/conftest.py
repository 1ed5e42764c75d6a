"""Shared fixtures: the three event-loop backends and the real servers the tests talk to."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"loop_factory": None}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


def _uvloop_factory() -> Any:
    import uvloop

    return uvloop.new_event_loop


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Core tests run on asyncio, asyncio with uvloop, and trio."""
    name, options = request.param
    if "loop_factory" in options:
        options = {"loop_factory": _uvloop_factory()}
    return name, options


@pytest.fixture
def asyncio_only() -> str:
    """Use as ``anyio_backend`` override in modules that need asyncio (ORMs, uvicorn)."""
    return "asyncio"


POSTGRES_DSN = os.environ.get("ASIGNALS_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ASIGNALS_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _require(name: str, url: str, default_port: int) -> None:
    if _reachable(url, default_port):
        return
    message = f"{name} is not reachable at {url}"
    # Skipping is only allowed when a developer says so; CI and everyone else get a failure.
    if os.environ.get("ASIGNALS_SERVICES_OPTIONAL") == "1" and not os.environ.get("CI"):
        pytest.skip(message + " (ASIGNALS_SERVICES_OPTIONAL=1)")
    pytest.fail(message + "; start it with scripts/services", pytrace=False)


@pytest.fixture
def postgres_dsn() -> str:
    """A libpq-style DSN of the real PostgreSQL; fails the test when it is down."""
    _require("PostgreSQL", POSTGRES_DSN, 5432)
    return POSTGRES_DSN


@pytest.fixture
def redis_url() -> str:
    """The URL of the real Redis; fails the test when it is down."""
    _require("Redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture
def connect() -> Iterator[Any]:
    """connect(signal, fn, sender=None): a strong connection for the test's lifetime only."""
    made: list[tuple[Any, Any, Any]] = []

    def _connect(sig: Any, fn: Any, sender: Any = None) -> None:
        sig.connect(fn, sender=sender, weak=False)
        made.append((sig, fn, sender))

    yield _connect
    for sig, fn, sender in made:
        sig.disconnect(fn, sender=sender)


@pytest.fixture
def free_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port
