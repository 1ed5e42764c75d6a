"""Quickstart: a Django-style signal with sync and async receivers.

Run it with ``python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

from asignals import AsyncSignal, receiver

logging.basicConfig(
    stream=sys.stdout, level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s"
)

order_placed = AsyncSignal(name="order_placed")


@dataclass
class Order:
    id: int
    total: float


class Invoice:
    """Another sender: receivers can listen to one sender only."""


@receiver(order_placed)
def audit(sender: object, order: Order, **kwargs: object) -> str:
    # A plain function runs inline on the event loop, like a Django receiver.
    return f"audited order {order.id}"


@receiver(order_placed, sender=Order)
async def send_confirmation(sender: object, order: Order, **kwargs: object) -> str:
    await asyncio.sleep(0.01)  # an email API call, say: async receivers run concurrently
    return f"emailed confirmation for order {order.id}"


@receiver(order_placed, sender=Invoice)
async def file_invoice(sender: object, **kwargs: object) -> str:
    return "filed invoice"


@receiver(order_placed, sender=Order)
async def flaky_webhook(sender: object, order: Order, **kwargs: object) -> None:
    raise ConnectionError(f"webhook down while posting order {order.id}")


async def main() -> None:
    order = Order(id=42, total=99.5)

    # send_robust: every receiver runs; a failure is logged and returned in its slot.
    print("send_robust: flaky_webhook fails on purpose; the ERROR line below is expected")
    for fn, result in await order_placed.send_robust(Order, order=order):
        print(f"{fn.__name__:>18} -> {result!r}")

    # send: a failure cancels the rest and raises an ExceptionGroup.
    try:
        await order_placed.send(Order, order=order)
    except* ConnectionError as group:
        print("send raised:", [str(e) for e in group.exceptions])

    # Sender filtering: only receivers for Invoice (and for any sender) run.
    results = await order_placed.send(Invoice, order=order)
    print("for Invoice:", [result for _, result in results])


if __name__ == "__main__":
    asyncio.run(main())
