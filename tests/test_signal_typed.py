"""Typed signals at run time: the spec, the keyword-name check, receivers held to the spec."""

from __future__ import annotations

import typing
from decimal import Decimal
from typing import Any

import anyio
import pytest

import asignals
from asignals import AsyncSignal

pytestmark = pytest.mark.anyio


class Order:
    pass


@asignals.signal
def order_placed(sender: type[Order], *, order: Order, total: Decimal) -> None:
    """Sent once an order is stored."""


def shipped_spec(sender: type[Order], *, order: Order, carrier: str = "post") -> bool:
    raise NotImplementedError


def test_the_decorator_names_the_signal_and_keeps_its_spec_and_doc() -> None:
    assert isinstance(order_placed, AsyncSignal)
    assert order_placed.name == "order_placed"
    assert repr(order_placed) == "<AsyncSignal 'order_placed'>"
    assert order_placed.__doc__ == "Sent once an order is stored."
    assert order_placed.spec is not None and order_placed.spec.__name__ == "order_placed"
    hints = typing.get_type_hints(order_placed.spec)
    assert hints["order"] is Order and hints["total"] is Decimal
    assert AsyncSignal(name="audit").spec is None


def test_spelled_out_and_with_options() -> None:
    shipped = AsyncSignal(spec=shipped_spec, name="shipped")
    assert shipped.name == "shipped" and shipped.spec is shipped_spec
    timed = asignals.signal(timeout=2.5)(shipped_spec)
    assert timed.name == "shipped_spec" and timed.timeout == 2.5


async def test_sends_with_the_spec_arguments_reach_receivers() -> None:
    seen: list[dict[str, Any]] = []

    async def on_placed(sender: type[Order], *, order: Order, **kwargs: object) -> None:
        seen.append({"sender": sender, "order": order, **kwargs})

    order = Order()
    with order_placed.connected_to(on_placed):
        results = await order_placed.send(Order, order=order, total=Decimal(1))
        await order_placed.send(sender=Order, order=order, total=Decimal(2))
    assert results == [(on_placed, None)]
    assert [s["total"] for s in seen] == [Decimal(1), Decimal(2)]
    assert seen[0]["signal"] is order_placed and seen[0]["order"] is order


@pytest.mark.parametrize("method", ["send", "send_robust"])
@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"ordr": 1, "total": 1}, ["missing 'order'", "unexpected 'ordr'"]),
        ({"order": 1}, ["missing 'total'"]),
        ({"order": 1, "total": 1, "extra": 1}, ["unexpected 'extra'"]),
        ({}, ["missing 'order', 'total'"]),
    ],
)
async def test_wrong_keyword_names_are_a_type_error_naming_them(
    method: str, kwargs: dict[str, Any], named: list[str]
) -> None:
    calls: list[object] = []
    with (
        order_placed.connected_to(lambda sender, **kw: calls.append(kw)),
        pytest.raises(TypeError) as info,
    ):
        await getattr(order_placed, method)(Order, **kwargs)
    for part in named:
        assert part in str(info.value)
    assert "order_placed" in str(info.value)
    assert calls == []  # refused before any receiver ran


async def test_optional_spec_arguments_may_be_left_out_and_values_are_not_checked() -> None:
    shipped = AsyncSignal(spec=shipped_spec)
    assert await shipped.send(Order, order=Order()) == []
    assert await shipped.send(Order, order="not an order", carrier=3) == []  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected 'carier'"):
        await shipped.send(Order, order=Order(), carier="ups")  # type: ignore[call-arg]


async def test_background_sends_are_checked_when_called() -> None:
    async with asignals.dispatcher():
        with pytest.raises(TypeError, match="missing 'total'"):
            order_placed.send_nowait(Order, order=Order())  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="unexpected 'x'"):
            await order_placed.send_later(Order, order=Order(), total=1, x=1)  # type: ignore[call-arg]


async def test_dispatch_options_still_pass_on_a_typed_signal() -> None:
    async def slow(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(5)

    with order_placed.connected_to(slow):
        with anyio.fail_after(5):
            ((_, result),) = await order_placed.send_robust(
                Order,
                order=Order(),
                total=Decimal(1),
                timeout=0.01,  # type: ignore[call-arg]
            )
    assert isinstance(result, TimeoutError)


def test_a_receiver_requiring_an_argument_the_spec_lacks_is_refused() -> None:
    def needs_user(sender: Any, *, user: str, **kwargs: Any) -> None:
        return None

    def uses_spec_names(sender: Any, order: Order, total: Decimal, **kwargs: Any) -> None:
        return None

    with pytest.raises(TypeError, match=r"needs_user.*'user' is not one the signal sends"):
        order_placed.connect(needs_user)  # type: ignore[arg-type]
    order_placed.connect(uses_spec_names)
    assert order_placed.disconnect(uses_spec_names)


def spec_without_sender(*, order: Order) -> None: ...


def spec_with_positional(sender: Any, order: Order) -> None: ...


def spec_with_reserved(sender: Any, *, timeout: float) -> None: ...


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (spec_without_sender, "sender first"),
        (spec_with_positional, "keyword-only"),
        (spec_with_reserved, "keyword-only"),
        (42, "must be a function"),
    ],
)
def test_a_bad_spec_is_refused(spec: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        AsyncSignal(spec=spec)
