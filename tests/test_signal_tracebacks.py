"""A failing receiver's traceback shows the receiver's own line, whatever path ran it.

An operator reading the ``send_robust`` log, or a developer catching ``send``'s group, must
see where in *their* code the receiver failed; a traceback that stops in the library is no
help. Every path a receiver can take is covered: inline (sync, and the last async receiver),
the driver, a task started after another receiver suspended, and each dispatch option.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import anyio
import pytest

from asignals import AsyncSignal

pytestmark = pytest.mark.anyio


def frames(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def sync_fails(sender: Any, **kwargs: Any) -> None:
    raise ValueError("sync_fails")


async def fails_at_once(sender: Any, **kwargs: Any) -> None:
    raise ValueError("fails_at_once")


async def fails_after_suspending(sender: Any, **kwargs: Any) -> None:
    await anyio.sleep(0)
    raise ValueError("fails_after_suspending")


async def suspends(sender: Any, **kwargs: Any) -> None:
    await anyio.sleep(0.01)


# Which receivers, in which order: each puts the failing one on another path of the send.
LAYOUTS = [
    pytest.param([sync_fails], id="inline-sync"),
    pytest.param([fails_after_suspending], id="inline-last-async"),
    pytest.param([fails_after_suspending, suspends], id="driver"),
    pytest.param([fails_at_once, suspends], id="driver-at-once"),
    pytest.param([suspends, fails_after_suspending], id="task-after-a-suspension"),
    pytest.param([suspends, fails_at_once], id="task-failing-at-once"),
    pytest.param([suspends, sync_fails], id="sync-after-a-suspension"),
]
OPTIONS = [
    pytest.param({}, id="defaults"),
    pytest.param({"timeout": 5}, id="timeout"),
    pytest.param({"max_concurrency": 2}, id="max_concurrency"),
    pytest.param({"concurrent": False}, id="sequential"),
]


def failing(receivers: list[Any]) -> str:
    [name] = [fn.__name__ for fn in receivers if fn is not suspends]
    return name


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("receivers", LAYOUTS)
async def test_sends_group_holds_the_receivers_traceback(
    receivers: list[Any], options: dict[str, Any]
) -> None:
    sig = AsyncSignal(name="orders")
    for fn in receivers:
        sig.connect(fn)
    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await sig.send("shop", **options)
    [error] = info.value.exceptions
    assert failing(receivers) in frames(error)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("receivers", LAYOUTS)
async def test_send_robust_logs_and_returns_the_receivers_traceback(
    receivers: list[Any], options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    sig = AsyncSignal(name="orders")
    for fn in receivers:
        sig.connect(fn)
    with anyio.fail_after(5), caplog.at_level(logging.ERROR, logger="asignals"):
        results = await sig.send_robust("shop", **options)
    [error] = [value for _, value in results if isinstance(value, Exception)]
    assert failing(receivers) in frames(error)
    [record] = [r for r in caplog.records if r.name == "asignals"]
    assert record.exc_info is not None and record.exc_info[1] is error
    assert failing(receivers) in caplog.text.split("Traceback", 1)[1]
