"""asignals.testing: the SignalRecorder and its pytest plugin (run for real with pytester)."""

from __future__ import annotations

from typing import Any

import pytest

from asignals import AsyncSignal
from asignals.background import dispatcher
from asignals.testing import SignalRecorder

pytest_plugins = ["pytester"]


class Order:
    pass


def reserve(sender: Any, **kwargs: Any) -> str:
    return "reserved"


def refuse(sender: Any, **kwargs: Any) -> None:
    raise ValueError("out of stock")


@pytest.mark.anyio
async def test_records_signal_sender_kwargs_and_results() -> None:
    sig = AsyncSignal(name="order_placed")
    sig.connect(reserve, weak=False)
    with SignalRecorder(sig) as rec:
        results = await sig.send(Order, order_id=1)
        await sig.send_robust("api", order_id=2, timeout=5)
        with pytest.raises(TypeError, match="needs a sender"):
            await sig.send(order_id=3)  # the signal's own argument checks still apply
    [first, second, third] = rec.sends
    assert (first.signal, first.sender, first.kwargs) == (sig, Order, {"order_id": 1})
    assert second.kwargs == {"order_id": 2}  # the dispatch option is not a receiver argument
    assert isinstance(third.error, TypeError)
    assert first.results == results == [(reserve, "reserved")]
    assert not first.robust and second.robust and second.sender == "api"
    assert rec.assert_sent(sig, sender=Order, order_id=1) is first
    assert vars(sig).keys().isdisjoint({"send", "send_robust"})  # unwrapped on exit


@pytest.mark.anyio
async def test_wait_for_times_out_with_the_at_least_rule_in_its_message() -> None:
    sig = AsyncSignal(name="order_placed")
    with SignalRecorder(sig) as rec:
        await sig.send(Order, order_id=1)
        await sig.send(Order, order_id=1)
        # The rule is "at least": two matching sends satisfy times=1 and times=2.
        assert (await rec.wait_for(sig, order_id=1, times=2, timeout=0.5)).kwargs == {"order_id": 1}
        with pytest.raises(AssertionError) as info:
            await rec.wait_for(sig, order_id=1, times=3, timeout=0.05)
    message = str(info.value)
    assert "at least 3 time(s)" in message and "exactly" not in message
    assert "2 matching send(s)" in message


@pytest.mark.anyio
async def test_records_errors_background_sends_and_muted_signals() -> None:
    sig = AsyncSignal(name="order_placed")
    sig.connect(refuse, weak=False)
    with SignalRecorder(sig) as rec:
        with pytest.raises(ExceptionGroup):
            await sig.send(Order)
        async with dispatcher():
            sig.send_nowait(Order, background=True)
            sent = await rec.wait_for(sig, background=True)
        with sig.muted():
            await sig.send(Order, muted=True)
    assert isinstance(rec.sends[0].error, ExceptionGroup) and rec.sends[0].results is None
    [(receiver, result)] = sent.results or []
    assert receiver is refuse and isinstance(result, ValueError)
    rec.assert_sent(sig, muted=True)
    assert len(rec) == 3


def test_assertion_messages_say_what_was_sent_instead() -> None:
    sig, other = AsyncSignal(name="order_placed"), AsyncSignal(name="other")
    rec = SignalRecorder(sig)
    with pytest.raises(AssertionError) as caught:
        rec.assert_sent(sig, order_id=1)
    assert "<AsyncSignal 'order_placed'> was never sent" in str(caught.value)
    with pytest.raises(AssertionError, match=r"'other'> is not watched: call \.watch"):
        rec.assert_sent(other)
    rec.close()


def test_two_recorders_on_one_signal_unwind_in_any_order() -> None:
    sig = AsyncSignal(name="s")
    first, second = SignalRecorder(sig), SignalRecorder(sig)
    first.close()
    second.close()
    assert "send" not in vars(sig)
    with pytest.raises(TypeError, match="takes AsyncSignals"):
        SignalRecorder("not a signal")  # type: ignore[arg-type]


PLUGIN_TESTS = """
import anyio
import pytest
import pytest_asyncio

from asignals import AsyncSignal
from asignals.background import dispatcher

order_placed = AsyncSignal(name="order_placed")


class Order:
    pass


def reserve(sender, **kwargs):
    return "reserved"


order_placed.connect(reserve)


@pytest.mark.asyncio
async def test_under_pytest_asyncio(signal_recorder):
    signal_recorder.watch(order_placed)
    await order_placed.send(Order, order_id=1)
    sent = signal_recorder.assert_sent(order_placed, sender=Order, order_id=1, times=1)
    assert sent.results == [(reserve, "reserved")]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.mark.anyio
async def test_under_anyio(signal_recorder):
    signal_recorder.watch(order_placed)
    async with dispatcher():
        order_placed.send_nowait(Order, order_id=2)
        await signal_recorder.wait_for(order_placed, order_id=2)


@pytest_asyncio.fixture
async def background():
    # pytest-asyncio runs this fixture's setup and teardown in different tasks.
    async with dispatcher() as d:
        yield d


@pytest.mark.asyncio
async def test_a_dispatcher_from_a_pytest_asyncio_fixture(background, signal_recorder):
    signal_recorder.watch(order_placed)
    order_placed.send_nowait(Order, order_id=3)
    await signal_recorder.wait_for(order_placed, order_id=3)


def test_the_signal_was_restored():
    assert "send" not in vars(order_placed)


@pytest.mark.asyncio
async def test_a_readable_failure(signal_recorder):
    signal_recorder.watch(order_placed)
    await order_placed.send(Order, order_id=1, total=10)
    await order_placed.send("api", order_id=2)
    signal_recorder.assert_sent(order_placed, sender=Order, order_id=2)
"""


def test_the_plugin_fixture_under_pytest_asyncio_and_anyio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_orders=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: expected <AsyncSignal 'order_placed'> sent with sender=<class "
            "'test_orders.Order'>, order_id=2 at least once; 0 matching send(s)",
            "*<AsyncSignal 'order_placed'> was sent 2 time(s):",
            "*#1 <AsyncSignal 'order_placed'> sender=<class 'test_orders.Order'>, order_id=1, "
            "total=10 -> 1 result(s)  <- order_id=1 != 2",
            "*#2 <AsyncSignal 'order_placed'> sender='api', order_id=2 -> 1 result(s)  <- "
            "sender 'api' != <class 'test_orders.Order'>",
        ]
    )
