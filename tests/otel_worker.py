"""The second process of the OpenTelemetry tests: receives ``order_placed`` over the bridge.

Usage: ``python tests/otel_worker.py REDIS_URL STREAM GROUP``. Instrumented with its own SDK
tracer and meter (in-memory exporters). Prints ``ready`` once the bridge runs, then one JSON
line per delivery its receiver handled, ``{"order": n, "baggage": {...}}``; an order with
``fail=True`` makes the receiver raise (so it is retried, then dead-lettered). When stdin
closes it stops the bridge and prints ``{"spans": [...], "metrics": {...}}`` on one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from opentelemetry import baggage
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asignals import AsyncSignal
from asignals.bridge import Bridge, RedisStreams
from asignals.contrib import opentelemetry as otel

order_placed = AsyncSignal(name="order_placed")


def describe(span: ReadableSpan) -> dict[str, Any]:
    assert span.context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "remote_parent": bool(span.parent and span.parent.is_remote),
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [event.name for event in span.events],
    }


def metrics(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count  # a histogram
                    found.setdefault(metric.name, []).append([dict(point.attributes), value])
    return found


async def main(url: str, stream: str, group: str) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    otel.instrument(tracer_provider=tracer_provider, meter_provider=MeterProvider([reader]))

    async def ship(sender: Any, order: int, fail: bool = False, **kwargs: Any) -> None:
        await asyncio.sleep(0.005)  # slow enough for a receiver span of its own
        line = {"order": order, "baggage": dict(baggage.get_all()), "pid": os.getpid()}
        print(json.dumps(line), flush=True)
        if fail:
            raise RuntimeError("warehouse down")

    order_placed.connect(ship, weak=False)
    bridge = Bridge(
        RedisStreams(url, block=0.1),
        stream=stream,
        mode="shared",
        group=group,
        signals=[order_placed],
        max_attempts=2,
        claim_idle=0.5,
        reconnect_backoff=(0.02, 0.2),
        retry_backoff=(0.05, 0.1),
    )
    async with bridge:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    otel.uninstrument()
    spans = [describe(span) for span in exporter.get_finished_spans()]
    print(json.dumps({"spans": spans, "metrics": metrics(reader)}), flush=True)
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
