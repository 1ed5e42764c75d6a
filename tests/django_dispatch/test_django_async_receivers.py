"""Django's tests of async receivers and ``asend``, run against asignals as test_django_dispatch.

Origin: the ``AsyncReceiversTests`` of ``tests/signals/tests.py`` of Django 5.2.19 (the tests of
``Signal.asend``/``asend_robust`` and of async receivers in ``send``), Copyright (c) Django
Software Foundation and individual contributors, BSD 3-Clause License (LICENSE-django beside
this file); rewritten for pytest under the upstream names. ``AsyncHandler`` drops asgiref's
``markcoroutinefunction(self)``: asignals sees an ``async def __call__`` by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import django_signal
import pytest
from django_signal import Signal

SYNC_FIRST = (
    "asignals differs on purpose: results come in connection order; Django puts the sync "
    "receivers' first (docs/coming-from/django.md, Differences; API.md, Core)"
)


@pytest.fixture(autouse=True)
def backend(anyio_backend: tuple[str, dict[str, Any]]) -> Iterator[None]:
    django_signal.BACKEND = anyio_backend
    yield
    django_signal.BACKEND = ("asyncio", {})


class SyncHandler:
    param = 0

    def __call__(self, **kwargs: Any) -> int:
        self.param += 1
        return self.param


class AsyncHandler:
    param = 0

    async def __call__(self, **kwargs: Any) -> int:
        self.param += 1
        return self.param


class ReceiverException(Exception):
    pass


class AsyncReceiversTests:
    """Stands for upstream's ``self.__class__``, the sender of every send there."""


@pytest.mark.anyio
async def test_asend() -> None:
    sync_handler = SyncHandler()
    async_handler = AsyncHandler()
    signal = Signal()
    signal.connect(sync_handler)
    signal.connect(async_handler)
    result = await signal.asend(AsyncReceiversTests)
    assert result == [(sync_handler, 1), (async_handler, 1)]


def test_send() -> None:
    sync_handler = SyncHandler()
    async_handler = AsyncHandler()
    signal = Signal()
    signal.connect(sync_handler)
    signal.connect(async_handler)
    result = signal.send(AsyncReceiversTests)
    assert result == [(sync_handler, 1), (async_handler, 1)]


def _robust_setup() -> tuple[Signal, list[Any], ReceiverException]:
    """Upstream's receivers, connected failing async, async, sync; and the expected order."""
    receiver_exception = ReceiverException()

    async def failing_async_handler(**kwargs: Any) -> None:
        raise receiver_exception

    sync_handler = SyncHandler()
    async_handler = AsyncHandler()
    signal = Signal()
    signal.connect(failing_async_handler)
    signal.connect(async_handler)
    signal.connect(sync_handler)
    # Kept alive by the returned list: the signal holds them weakly.
    return signal, [failing_async_handler, async_handler, sync_handler], receiver_exception


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=SYNC_FIRST)
def test_send_robust() -> None:
    signal, (failing, async_handler, sync_handler), exc = _robust_setup()
    result = signal.send_robust(AsyncReceiversTests)
    # The ordering here is different than the order that signals were connected in.
    assert result == [(sync_handler, 1), (failing, exc), (async_handler, 1)]


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=SYNC_FIRST)
@pytest.mark.anyio
async def test_asend_robust() -> None:
    signal, (failing, async_handler, sync_handler), exc = _robust_setup()
    result = await signal.asend_robust(AsyncReceiversTests)
    # The ordering here is different than the order that signals were connected in.
    assert result == [(sync_handler, 1), (failing, exc), (async_handler, 1)]


def test_send_robust_in_connection_order() -> None:
    """What asignals does instead, for send_robust and asend_robust alike."""
    signal, (failing, async_handler, sync_handler), exc = _robust_setup()
    result = signal.send_robust(AsyncReceiversTests)
    assert result == [(failing, exc), (async_handler, 1), (sync_handler, 1)]


@pytest.mark.anyio
async def test_asend_robust_in_connection_order() -> None:
    signal, (failing, async_handler, sync_handler), exc = _robust_setup()
    result = await signal.asend_robust(AsyncReceiversTests)
    assert result == [(failing, exc), (async_handler, 1), (sync_handler, 1)]


@pytest.mark.anyio
async def test_asend_only_async_receivers() -> None:
    async_handler = AsyncHandler()
    signal = Signal()
    signal.connect(async_handler)
    assert await signal.asend(AsyncReceiversTests) == [(async_handler, 1)]


@pytest.mark.anyio
async def test_asend_robust_only_async_receivers() -> None:
    async_handler = AsyncHandler()
    signal = Signal()
    signal.connect(async_handler)
    assert await signal.asend_robust(AsyncReceiversTests) == [(async_handler, 1)]
