"""A small orders service on FastAPI, wired with asignals.

- ``POST /orders`` awaits the domain signal ``order_placed``: its receivers run inside the
  request (stock reservation may refuse the order with 409).
- The slow side effect, the confirmation email, goes through
  ``order_confirmed.send_after_response``: it is held for the request and goes to the background
  only once the order was placed (a 2xx response), so a refused order (409) sends no email, and
  the response does not wait for it. The "email" is a JSON line appended to an outbox file
  (``ORDERS_OUTBOX``, default ``$TMPDIR/asignals-orders-outbox.jsonl``) after a simulated SMTP
  delay (``ORDERS_EMAIL_DELAY`` seconds, default 0.2).
- ``SignalsMiddleware`` delivers those held sends, and sends ``request_started``/
  ``request_finished``/``got_request_exception``; receivers connected for this app count
  requests, served at ``GET /stats``.
- ``lifespan=make_lifespan(...)`` runs the background dispatcher for the app's lifetime: on
  shutdown (Ctrl-C, SIGTERM) every queued email is delivered before the process exits.

Run the server::

    uvicorn examples.fastapi_app:app --port 8000        # from the repository root
    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"item": "widget", "quantity": 2, "email": "ada@example.com"}'
    curl localhost:8000/stats

Or run ``python examples/fastapi_app.py``: a self-contained demo that drives the app in-process
(lifespan included) with httpx and prints what happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from itertools import count
from pathlib import Path
from typing import Any, TextIO

import anyio
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from asignals import AsyncSignal, receiver
from asignals.contrib.asgi import SignalsMiddleware, make_lifespan
from asignals.signals import got_request_exception, request_finished

OUTBOX = Path(
    os.environ.get("ORDERS_OUTBOX", Path(tempfile.gettempdir()) / "asignals-orders-outbox.jsonl")
)
EMAIL_DELAY = float(os.environ.get("ORDERS_EMAIL_DELAY", "0.2"))

# -- domain -------------------------------------------------------------------------------


@dataclass
class Order:
    id: int
    item: str
    quantity: int
    email: str


class OrderIn(BaseModel):
    item: str
    quantity: int = Field(gt=0)
    email: str


class OutOfStock(Exception):
    pass


order_placed = AsyncSignal(name="order_placed")  # awaited in the request
order_confirmed = AsyncSignal(name="order_confirmed")  # background, if the request succeeds

STOCK: dict[str, int] = {"widget": 100, "gadget": 3}
ORDERS: dict[int, Order] = {}
_ids = count(1)


@receiver(order_placed, sender=Order)
def reserve_stock(sender: type[Order], order: Order, **kwargs: Any) -> None:
    """Runs inline in the request; raising refuses the order."""
    left = STOCK.get(order.item, 0)
    if left < order.quantity:
        raise OutOfStock(f"only {left} {order.item}(s) left")
    STOCK[order.item] = left - order.quantity


@receiver(order_placed, sender=Order)
async def record_order(sender: type[Order], order: Order, **kwargs: Any) -> str:
    ORDERS[order.id] = order
    return f"order {order.id} recorded"


# -- the slow side effect, in the background ----------------------------------------------

_outbox: TextIO | None = None  # opened by the lifespan, which closes it after the drain


@receiver(order_confirmed, sender=Order)
async def send_confirmation_email(sender: type[Order], order: Order, **kwargs: Any) -> None:
    await anyio.sleep(EMAIL_DELAY)  # the SMTP round trip
    if _outbox is None:
        raise RuntimeError("the outbox is closed: email sent after shutdown")
    line = {"to": order.email, "subject": f"Order #{order.id} confirmed", "order": asdict(order)}
    _outbox.write(json.dumps(line) + "\n")
    _outbox.flush()


# -- the app ------------------------------------------------------------------------------


def _open_outbox() -> TextIO:
    return OUTBOX.open("a", encoding="utf-8")


def _emails() -> list[dict[str, Any]]:
    """The emails in the outbox (a blocking read: fine for a demo)."""
    if not OUTBOX.exists():
        return []
    return [json.loads(line) for line in OUTBOX.read_text().splitlines()]


@asynccontextmanager
async def resources(app: FastAPI) -> AsyncIterator[None]:
    """The app's own lifespan: the dispatcher runs inside it, so emails still in flight at
    shutdown are delivered before the outbox is closed."""
    global _outbox
    _outbox = _open_outbox()
    try:
        yield
    finally:
        _outbox.close()
        _outbox = None


app = FastAPI(title="orders", lifespan=make_lifespan(resources, drain_timeout=30))
app.add_middleware(SignalsMiddleware)


@app.post("/orders", status_code=201)
async def place_order(body: OrderIn) -> dict[str, Any]:
    order = Order(id=next(_ids), item=body.item, quantity=body.quantity, email=body.email)
    # Held, not sent: it goes to the background only if this request ends with a 2xx.
    order_confirmed.send_after_response(Order, order=order)
    try:
        results = await order_placed.send(Order, order=order)
    except* OutOfStock as group:  # the 409 drops the held email
        raise HTTPException(status_code=409, detail=str(group.exceptions[0])) from None
    return {"order": asdict(order), "receivers": [r for _, r in results if r is not None]}


@app.get("/orders/{order_id}")
async def get_order(order_id: int) -> dict[str, Any]:
    if order_id not in ORDERS:
        raise HTTPException(status_code=404, detail="no such order")
    return asdict(ORDERS[order_id])


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("boom")  # got_request_exception counts it; the client gets a 500


# -- request signals feed a counter --------------------------------------------------------

REQUESTS: Counter[str] = Counter()
ERRORS: Counter[str] = Counter()


@receiver(request_finished, sender=app)
def count_request(sender: FastAPI, scope: dict[str, Any], **kwargs: Any) -> None:
    REQUESTS[f"{scope.get('method', 'WS')} {scope['path']}"] += 1


@receiver(got_request_exception, sender=app)
def count_error(
    sender: FastAPI, scope: dict[str, Any], exception: Exception, **kwargs: Any
) -> None:
    ERRORS[type(exception).__name__] += 1


@app.get("/stats")
async def stats() -> dict[str, Any]:
    return {
        "requests": sum(REQUESTS.values()),
        "by_route": dict(REQUESTS),
        "errors": dict(ERRORS),
        "orders": len(ORDERS),
        "stock": STOCK,
    }


# -- python examples/fastapi_app.py: a demo in one process ---------------------------------


async def demo() -> None:
    import httpx

    OUTBOX.unlink(missing_ok=True)  # noqa: ASYNC240 - before the app runs
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),  # what uvicorn does at startup and shutdown
        httpx.AsyncClient(transport=transport, base_url="http://orders") as client,
    ):
        for item, quantity in [("widget", 2), ("gadget", 2), ("gadget", 2), ("widget", 1)]:
            email = f"{item}-buyer@example.com"
            r = await client.post(
                "/orders", json={"item": item, "quantity": quantity, "email": email}
            )
            print(f"POST /orders {item} x{quantity} -> {r.status_code} {r.json()}")
        print("GET /boom ->", (await client.get("/boom")).status_code)
        print(f"emails delivered when the last response came back: {len(_emails())}")
        print("GET /stats ->", (await client.get("/stats")).json())
    emails = _emails()
    print(f"emails delivered after shutdown drained the dispatcher: {len(emails)}")
    for email in emails:
        print("  ", email["subject"], "->", email["to"])
    emailed = sorted(email["order"]["id"] for email in emails)
    assert emailed == sorted(ORDERS), "one email per placed order, none for the refused one"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000)
    else:
        asyncio.run(demo())
