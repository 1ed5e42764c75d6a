"""User code against a typed signal: what must type-check, and what must not.

Checked by ``mypy --strict --warn-unused-ignores`` and by pyright (strict, with
``reportUnnecessaryTypeIgnoreComment``): each line that must be an error carries an ignore
comment for each checker, so the check fails if that line stops being an error, and
``assert_type`` pins every inferred type. Never run; only checked (scripts/check).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, assert_type

import asignals
from asignals import AsyncSignal, receiver


class Order:
    total = Decimal("9.99")


@asignals.signal
def order_placed(sender: type[Order], *, order: Order, total: Decimal) -> None:
    """Sent once an order is stored."""


def shipped_spec(sender: type[Order], *, order: Order, carrier: str = "post") -> bool:
    """The receivers say whether they handled it."""
    raise NotImplementedError


order_shipped = AsyncSignal(spec=shipped_spec, name="order_shipped")
audit = AsyncSignal(name="audit")

assert_type(audit, AsyncSignal[..., Any])
if order_shipped.spec is not None:
    assert_type(order_shipped.spec(Order, order=Order()), bool)


# -- receivers -------------------------------------------------------------------------------


def django_style(sender: Any, **kwargs: Any) -> None:
    return None


async def typed(sender: type[Order], *, order: Order, **kwargs: object) -> None:
    return None


def wrong_order_type(sender: type[Order], *, order: int, **kwargs: object) -> None:
    return None


def takes_nothing() -> None:
    return None


def returns_text(sender: Any, **kwargs: Any) -> str:
    return "text"


async def ships(sender: type[Order], *, order: Order, **kwargs: object) -> bool:
    return True


order_placed.connect(django_style)
order_placed.connect(typed)
order_shipped.connect(ships)
audit.connect(django_style)
audit.connect(returns_text)
order_placed.connect(lambda: None)  # type: ignore[misc,arg-type]  # pyright: ignore[reportCallIssue,reportArgumentType]
order_placed.connect(takes_nothing)  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue,reportArgumentType]
order_placed.connect(wrong_order_type)  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue,reportArgumentType]
order_placed.connect(returns_text)  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue,reportArgumentType]

connected = order_placed.connect(typed)
assert_type(connected(Order, order=Order(), total=Decimal(1)), Awaitable[None])


@receiver(order_placed, sender=Order)
async def on_placed(sender: type[Order], *, order: Order, **kwargs: object) -> None:
    return None


@order_shipped.connect
def on_shipped(sender: Any, **kwargs: Any) -> bool:
    return False


@receiver([order_placed])  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue,reportArgumentType,reportUntypedFunctionDecorator]
def on_nothing() -> None:
    return None


@receiver(audit)
def on_audit(sender: Any, **kwargs: Any) -> int:
    return 1


with order_placed.connected_to(typed):
    pass
with order_placed.connected_to(returns_text):  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pass


# -- senders ---------------------------------------------------------------------------------


async def sends(order: Order) -> None:
    results = await order_placed.send(Order, order=order, total=Decimal("9.99"))
    assert_type(results, list[tuple[Callable[..., Any], None]])
    robust = await order_shipped.send_robust(Order, order=order)
    assert_type(robust, list[tuple[Callable[..., Any], bool | Exception]])
    assert_type(await audit.send("anything", whatever=1), list[tuple[Callable[..., Any], Any]])
    await order_placed.send(sender=Order, order=order, total=Decimal(1))
    order_placed.send_nowait(Order, order=order, total=Decimal(1))
    await order_placed.send_later(Order, order=order, total=Decimal(1))
    kwargs = await order_placed.wait_for(Order, timeout=1)
    assert_type(kwargs, dict[str, Any])

    await order_placed.send(Order, ordr=order, total=Decimal(1))  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    await order_placed.send(Order, order=order)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    await order_placed.send(Order, order=order, total="9.99")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await order_placed.send("api", order=order, total=Decimal(1))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await order_shipped.send_robust(Order, order=order, carrier=1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    order_placed.send_nowait(Order, total=Decimal(1))  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    await order_placed.send_later(Order, order=1, total=Decimal(1))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
