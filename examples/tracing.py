"""The orders service of ``examples/fastapi_app.py``, traced with OpenTelemetry.

One call, ``asignals.contrib.opentelemetry.instrument()``, and every send becomes a span of the
request that made it: ``order_placed`` (awaited in the request, its receivers reserve stock),
``order_confirmed`` (the email, a background send that ends after the response), and the
``request_finished`` signal of ``SignalsMiddleware``. The request span comes from
``opentelemetry-instrumentation-asgi``; the slow email receiver gets a span of its own; an
order out of stock makes an error span with the exception.

``order_placed`` also goes over a bridge to a shipping service: here a second bridge in the
same process, on the in-memory transport; with ``RedisStreams`` or ``JetStream`` and a real
second process the trace is the same. Its delivery is a CONSUMER span, child of the send
that published the event, so the shipping work is part of the request's trace.

Spans go to the console exporter (one line each, as they end), then the script prints the
trace trees. Run it from the repository root::

    python examples/tracing.py
    python examples/tracing.py --waterfall docs/img/trace.png   # needs matplotlib

No server is needed: the app runs in-process, driven by httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asignals import AsyncSignal
from asignals.bridge import Bridge, InMemory, JsonCodec
from asignals.contrib import opentelemetry as otel

# The orders service, with a short email delay and an outbox of its own.
os.environ.setdefault("ORDERS_EMAIL_DELAY", "0.05")
os.environ.setdefault(
    "ORDERS_OUTBOX", str(Path(tempfile.gettempdir()) / "asignals-tracing-outbox.jsonl")
)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fastapi_app as orders


def one_line(span: ReadableSpan) -> str:
    """The console exporter's format: one line per span."""
    assert span.start_time is not None and span.end_time is not None
    ms = (span.end_time - span.start_time) / 1e6
    status = span.status.status_code.name
    return f"[span] {span.name:<40} {ms:7.2f} ms  {status}\n"


def trees(spans: Sequence[ReadableSpan]) -> list[list[tuple[int, ReadableSpan]]]:
    """Each trace as (depth, span) rows, parents first, siblings by start time."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        by_parent.setdefault(span.parent.span_id if span.parent else None, []).append(span)

    def walk(span: ReadableSpan, depth: int, rows: list[tuple[int, ReadableSpan]]) -> None:
        rows.append((depth, span))
        assert span.context is not None
        for child in sorted(by_parent.get(span.context.span_id, []), key=start):
            walk(child, depth + 1, rows)

    result = []
    for root in sorted(by_parent.get(None, []), key=start):
        rows: list[tuple[int, ReadableSpan]] = []
        walk(root, 0, rows)
        result.append(rows)
    return result


def start(span: ReadableSpan) -> int:
    return span.start_time or 0


def print_tree(rows: list[tuple[int, ReadableSpan]]) -> None:
    origin = start(rows[0][1])
    for depth, span in rows:
        assert span.start_time is not None and span.end_time is not None
        offset = (span.start_time - origin) / 1e6
        ms = (span.end_time - span.start_time) / 1e6
        error = "  ERROR" if span.status.status_code.name == "ERROR" else ""
        label = "  " * depth + span.name
        print(f"  {label:<50} +{offset:6.1f} ms {ms:7.2f} ms{error}")


def waterfall(traces: list[list[tuple[int, ReadableSpan]]], path: Path) -> None:
    """Draw the traces as waterfalls, one panel each, and save the picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [len(rows) for rows in traces]
    fig, axes = plt.subplots(
        len(traces),
        1,
        figsize=(10, 0.42 * sum(heights) + 1.4 * len(traces)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    colors = {
        "request (SERVER)": "#4c72b0",
        "send": "#55a868",
        "receiver": "#ccb974",
        "remote delivery (CONSUMER)": "#8172b2",
        "error": "#c44e52",
    }
    widest = max(
        3 * depth + len(span.name.split(".")[-1]) for rows in traces for depth, span in rows
    )
    for ax, rows in zip(axes[:, 0], traces, strict=True):
        origin = start(rows[0][1])
        total = max((span.end_time or 0) - origin for _, span in rows) / 1e6
        for y, (_depth, span) in enumerate(rows):
            assert span.start_time is not None and span.end_time is not None
            left = (span.start_time - origin) / 1e6
            width = max((span.end_time - span.start_time) / 1e6, total / 250)
            if span.status.status_code.name == "ERROR":
                color = colors["error"]
            elif span.kind.name == "SERVER":
                color = colors["request (SERVER)"]
            elif span.kind.name == "CONSUMER":
                color = colors["remote delivery (CONSUMER)"]
            else:
                color = colors["send"] if span.name.startswith("send ") else colors["receiver"]
            ax.barh(y, width, left=left, height=0.6, color=color)
            ax.text(
                left + width + total / 100,
                y,
                f"{(span.end_time - span.start_time) / 1e6:.2f} ms",
                va="center",
                fontsize=8,
                color="#444",
            )
        labels = [
            ("   " * (depth - 1) + "└─ " if depth else "") + span.name.split(".")[-1]
            for depth, span in rows
        ]
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(labels, fontsize=9, family="monospace", ha="left")
        # Left-aligned, so that the indentation shows the tree: pad by the longest label.
        ax.tick_params(axis="y", pad=6 + 5.5 * widest)
        ax.invert_yaxis()
        ax.set_xlabel("ms since the request started")
        root = rows[0][1]
        status = (root.attributes or {}).get("http.response.status_code") or (
            root.attributes or {}
        ).get("http.status_code")
        ax.set_title(f"{root.name} -> {status}", loc="left", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    fig.legend(
        handles, list(colors), loc="lower center", ncol=len(colors), fontsize=8, frameon=False
    )
    fig.suptitle("asignals + OpenTelemetry: one trace per request", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"waterfall written to {path}")


# -- the shipping service: another process in production, a second bridge here -----------

codec = JsonCodec()
codec.register(orders.Order, name="Order")
shipping_order_placed = AsyncSignal(name="order_placed")  # the same signal, seen from shipping
shipped = asyncio.Event()


async def ship(sender: type[orders.Order], order: orders.Order, **kwargs: object) -> None:
    await asyncio.sleep(0.02)  # book the courier
    shipped.set()


shipping_order_placed.connect(ship, sender=orders.Order)


def bridges() -> tuple[Bridge, Bridge]:
    senders = {"Order": orders.Order}
    publisher = Bridge(
        InMemory(), stream="orders", mode="publish", signals=[orders.order_placed],
        senders=senders, codec=codec,
    )  # fmt: skip
    shipping = Bridge(
        InMemory(), stream="orders", mode="shared", group="shipping",
        signals=[shipping_order_placed], senders=senders, codec=codec,
    )  # fmt: skip
    return publisher, shipping


async def place_orders(app: object) -> None:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    publisher, shipping = bridges()
    async with (
        orders.app.router.lifespan_context(orders.app),
        publisher,
        shipping,
        httpx.AsyncClient(transport=transport, base_url="http://orders") as client,
    ):
        for item, quantity in [("widget", 2), ("gadget", 5)]:
            email = f"{item}-buyer@example.com"
            r = await client.post(
                "/orders", json={"item": item, "quantity": quantity, "email": email}
            )
            print(f"POST /orders {item} x{quantity} -> {r.status_code}")
        await asyncio.wait_for(shipped.wait(), 10)
    # Leaving the lifespan drained the dispatcher: the background email has been sent.


def main() -> None:
    parser = argparse.ArgumentParser(description="The orders service, traced.")
    parser.add_argument("--waterfall", type=Path, help="draw the traces into this PNG file")
    args = parser.parse_args()

    provider = TracerProvider(resource=Resource.create({"service.name": "orders"}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=one_line)))
    collected = InMemorySpanExporter()  # to print the trees at the end
    provider.add_span_processor(SimpleSpanProcessor(collected))

    otel.instrument(tracer_provider=provider)  # the one call
    app = OpenTelemetryMiddleware(
        orders.app, tracer_provider=provider, exclude_spans=["receive", "send"]
    )
    try:
        asyncio.run(place_orders(app))
    finally:
        otel.uninstrument()
        provider.shutdown()

    traces = trees(collected.get_finished_spans())
    for rows in traces:
        print(f"\ntrace {rows[0][1].context.trace_id:032x}:")  # type: ignore[union-attr]
        print_tree(rows)
    if args.waterfall:
        waterfall(traces, args.waterfall)


if __name__ == "__main__":
    main()
