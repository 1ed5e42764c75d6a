"""Issue 8: every receiver error is reported, in one group shape, on every loop and option."""

from __future__ import annotations

import gc
import logging
from typing import Any

import anyio
import pytest

import asignals
from asignals import AsyncSignal, receiver

pytestmark = pytest.mark.anyio

MODES = [
    pytest.param({}, id="driver"),
    pytest.param({"timeout": 5}, id="timeout"),
    pytest.param({"max_concurrency": 3}, id="max_concurrency"),
]


def shielded_failure(index: int, delay: float) -> Any:
    async def fails(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(0)
        with anyio.CancelScope(shield=True):
            await anyio.sleep(delay)
        raise ValueError(index)

    fails.__qualname__ = f"fails{index}"
    return fails


@pytest.mark.parametrize("options", MODES)
async def test_failures_raised_while_cancelled_are_all_in_the_group(
    options: dict[str, Any],
) -> None:
    sig = AsyncSignal(name="orders")
    receivers = [shielded_failure(i, 0.01 + 0.03 * i) for i in range(3)]
    for fn in receivers:
        sig.connect(fn)
    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await sig.send(None, **options)
    assert sorted(e.args[0] for e in info.value.exceptions) == [0, 1, 2]
    assert str(info.value).startswith("3 receiver(s) of <AsyncSignal 'orders'> raised")


async def test_failures_after_a_suspended_first_receiver_are_all_in_the_group() -> None:
    # The first receiver holds the sending task; the others run in tasks started after it.
    sig = AsyncSignal(name="orders")
    receivers = [shielded_failure(i, 0.04 - 0.015 * i) for i in range(3)]
    for fn in receivers:
        sig.connect(fn)
    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await sig.send(None)
    assert sorted(e.args[0] for e in info.value.exceptions) == [0, 1, 2]


@pytest.mark.parametrize(
    "options",
    [*MODES, pytest.param({"concurrent": False}, id="sequential")],
)
async def test_one_group_shape_for_every_option(options: dict[str, Any]) -> None:
    sig = AsyncSignal(name="orders")

    async def late(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(0)
        raise KeyError("late")

    sig.connect(late)
    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await sig.send(None, **options)
    assert type(info.value) is ExceptionGroup
    assert str(info.value) == "1 receiver(s) of <AsyncSignal 'orders'> raised (1 sub-exception)"
    assert [type(e) for e in info.value.exceptions] == [KeyError]


@pytest.mark.parametrize("concurrent", [True, False])
async def test_a_timeout_is_a_timeout_error_in_the_same_group(concurrent: bool) -> None:
    sig = AsyncSignal(name="orders")

    async def slow(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(5)

    sig.connect(slow)
    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await sig.send(None, timeout=0.02, concurrent=concurrent)
    assert type(info.value) is ExceptionGroup
    assert str(info.value).startswith("1 receiver(s) of <AsyncSignal 'orders'> raised")
    (error,) = info.value.exceptions
    assert isinstance(error, TimeoutError)
    assert "slow" in str(error) and "0.02" in str(error)


async def test_a_robust_timeout_is_logged_as_one_line(caplog: pytest.LogCaptureFixture) -> None:
    sig = AsyncSignal(name="orders")

    async def slow(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(5)

    sig.connect(slow)
    with caplog.at_level(logging.WARNING, logger="asignals"), anyio.fail_after(5):
        ((_, result),) = await sig.send_robust("shop", timeout=0.02)
    assert isinstance(result, TimeoutError)
    (record,) = caplog.records
    message = record.getMessage()
    assert record.exc_info is None and "\n" not in message
    assert "slow" in message and "'orders'" in message and "'shop'" in message
    assert "0.02" in message


# -- clear errors for bad input -------------------------------------------------------------


@pytest.mark.parametrize("bad", ["not_a_signal", 42, [AsyncSignal(), "x"]])
def test_receiver_of_something_else_than_signals_names_it(bad: Any) -> None:
    with pytest.raises(TypeError, match="@receiver takes an AsyncSignal") as info:
        receiver(bad)
    assert repr(bad if not isinstance(bad, list) else bad[1]) in str(info.value)


def test_send_nowait_outside_a_loop_says_how_to_open_a_dispatcher() -> None:
    sig = AsyncSignal(name="orders")
    with pytest.raises(RuntimeError) as info:
        sig.send_nowait(None)
    message = str(info.value)
    assert "async with asignals.dispatcher():" in message
    assert "lifespan" in message and "thread" in message


@pytest.mark.parametrize("method", ["send", "send_robust"])
async def test_extra_positional_arguments_get_the_tailored_message(method: str) -> None:
    sig = AsyncSignal(name="orders")
    sig.connect(sync_receiver)
    with pytest.raises(TypeError, match=r"takes the sender as its only positional argument"):
        await getattr(sig, method)(None, 1)


@pytest.mark.parametrize("options", [{"timeout": -1}, {"timeout": 1}, {"concurrent": "no"}])
async def test_background_sends_take_no_dispatch_options_whatever_their_value(
    options: dict[str, Any],
) -> None:
    sig = AsyncSignal(name="orders")
    async with asignals.dispatcher():
        with pytest.raises(TypeError, match="takes no dispatch options"):
            sig.send_nowait(None, **options)
        with pytest.raises(TypeError, match="takes no dispatch options"):
            await sig.send_later(None, **options)


# -- porting from Django and blinker --------------------------------------------------------


def sync_receiver(sender: Any, **kwargs: Any) -> str:
    return "sync"


async def test_connect_and_disconnect_take_receiver_by_keyword_as_in_django() -> None:
    sig = AsyncSignal()
    assert sig.connect(receiver=sync_receiver) is sync_receiver
    assert await sig.send(None) == [(sync_receiver, "sync")]
    assert sig.disconnect(receiver=sync_receiver) is True
    assert await sig.send(None) == []


async def test_connect_works_as_a_decorator_as_in_blinker() -> None:
    sig = AsyncSignal()

    @sig.connect
    def on_sent(sender: Any, **kwargs: Any) -> str:
        return "decorated"

    assert callable(on_sent)
    gc.collect()  # the name still holds it: a weak connection survives
    assert await sig.send(None) == [(on_sent, "decorated")]


def on_positional(obj: Any, **kwargs: Any) -> None:
    return None


def on_positional_only(sender: Any, /, **kwargs: Any) -> None:
    return None


@pytest.mark.parametrize("fn", [on_positional, on_positional_only])
def test_a_receiver_that_cannot_take_sender_by_keyword_is_refused(fn: Any) -> None:
    sig = AsyncSignal(name="orders")
    with pytest.raises(TypeError, match="signal= and sender= by keyword") as info:
        sig.connect(fn)
    assert fn.__name__ in str(info.value)
    assert not sig.has_listeners()


def test_django_receivers_naming_the_send_arguments_still_connect() -> None:
    sig = AsyncSignal()

    def on_save(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
        return None

    def on_any(signal: Any, sender: Any, **kwargs: Any) -> None:
        return None

    def on_keywords(**kwargs: Any) -> None:
        return None

    for fn in (on_save, on_any, on_keywords):
        assert sig.connect(fn, weak=False) is fn
    assert len(sig.receivers) == 3
