"""What does ``asignals.contrib.opentelemetry`` cost? Off, on, per send span, per receiver span.

Run ``python benchmarks/otel.py`` (about a minute) or ``--quick``. Needs the ``test`` extra
(``opentelemetry-sdk``).

Every contender is ``await sig.send(None)`` on a signal with N sync receivers returning at once
(or, where the name says *async*, one ``async def`` receiver returning at once),
in one process and one asyncio loop, sampled round-robin (see ``_common.py``):

- **off**: never instrumented, and **off again**: after ``instrument()`` then ``uninstrument()``
  (the core's own methods are back: the two must agree);
- **on, receivers="none"**, metrics to a no-op meter: the send span (SDK tracer, a
  ``SimpleSpanProcessor`` with an exporter that drops everything) and the receiver timers;
- **on, receivers="all"**, no-op meter: the same plus one span per receiver;
- **on, default options** (``receivers="slow"``, SDK meter with an in-memory reader): what a
  user gets out of the box (no receiver here is slow, so no receiver span);
- **bare SDK span**: ``tracer.start_span(name, attributes=...)``, made current, ended: what the
  SDK itself charges for the one span a send makes, whoever makes it;
- **on, API only** and **bare API span**: the same two with the API's no-op tracer, which
  leaves out the SDK (and the memory it touches): what is left is our own code.

Derived figures: cost per send span = on(none) - off, at N = 1; our own part of it = on(API
only) - off - bare API span; cost per receiver span = (on(all) - on(none)) / N at N = 10; cost of
the metrics per receiver = (default - on(none)) / N. Differences are medians of the per-round
differences.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from _common import (
    Batch,
    Measurement,
    Settings,
    format_ns,
    markdown_table,
    measure_interleaved,
    use_cpu_clock,
)

from asignals import AsyncSignal
from asignals.contrib import opentelemetry as otel


class DropExporter(SpanExporter):
    """An exporter that drops every span: the cost measured is the SDK's and ours."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def make_signal(n: int, asynchronous: bool = False) -> AsyncSignal:
    sig = AsyncSignal(name=f"bench{n}")
    for _ in range(n):
        # Distinct functions: one receiver may be connected only once.
        sig.connect(_async_receiver() if asynchronous else (lambda **kwargs: None), weak=False)
    return sig


def _async_receiver() -> Any:
    async def receiver(**kwargs: Any) -> None:
        return None

    return receiver


def sending(sig: AsyncSignal, options: dict[str, Any] | None, off_again: bool = False) -> Batch:
    """A batch of ``k`` sends, instrumented with ``options`` (None: not instrumented).

    With ``off_again``, instrumented and uninstrumented again before the sends.
    """

    async def batch(k: int) -> int:
        otel.uninstrument()
        if options is not None:
            otel.instrument(**options)
            if off_again:
                otel.uninstrument()
        clock = _common._clock
        send = sig.send
        start = clock()
        for _ in range(k):
            await send(None)
        elapsed = clock() - start
        otel.uninstrument()
        return elapsed

    return batch


def bare_span(tracer: trace.Tracer) -> Batch:
    async def batch(k: int) -> int:
        otel.uninstrument()
        clock = _common._clock
        start = clock()
        for _ in range(k):
            span = tracer.start_span(
                "send bench1",
                attributes={
                    "asignals.signal": "bench1",
                    "asignals.sender": "None",
                    "asignals.receivers": 1,
                    "asignals.robust": False,
                    "asignals.background": False,
                },
            )
            token = otel_context.attach(trace.set_span_in_context(span))
            otel_context.detach(token)
            span.set_attribute("asignals.failures", 0)
            span.end()
        return clock() - start

    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    parser.add_argument(
        "--cpu-clock",
        action="store_true",
        help="time samples with the thread's CPU time: steadier on a busy machine",
    )
    args = parser.parse_args()
    use_cpu_clock(args.cpu_clock)
    settings = Settings(
        rounds=7 if args.quick else 21,
        target_ns=2_000_000 if args.quick else 5_000_000,
        gc_during_samples=True,
    )
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(DropExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    noop_meter = NoOpMeterProvider()
    tracer = tracer_provider.get_tracer("bench")
    noop_tracer_provider = NoOpTracerProvider()
    base = {"tracer_provider": tracer_provider}
    one, ten = make_signal(1), make_signal(10)
    one_async = make_signal(1, asynchronous=True)
    api_only = {
        "tracer_provider": noop_tracer_provider,
        "receivers": "none",
        "meter_provider": noop_meter,
    }

    contenders: dict[str, Batch] = {
        "bare SDK span": bare_span(tracer),
        "bare API span": bare_span(noop_tracer_provider.get_tracer("bench")),
        "off, N=1": sending(one, None),
        'on, API only, receivers="none", N=1': sending(one, api_only),
        "off, N=1 async": sending(one_async, None),
        'on, API only, receivers="none", N=1 async': sending(one_async, api_only),
        "off again, N=1": sending(one, base, off_again=True),
        'on, receivers="none", N=1': sending(
            one, {**base, "receivers": "none", "meter_provider": noop_meter}
        ),
        "on, default options, N=1": sending(one, {**base, "meter_provider": meter_provider}),
        "off, N=10": sending(ten, None),
        'on, receivers="none", N=10': sending(
            ten, {**base, "receivers": "none", "meter_provider": noop_meter}
        ),
        'on, receivers="all", N=10': sending(
            ten, {**base, "receivers": "all", "meter_provider": noop_meter}
        ),
        "on, default options, N=10": sending(ten, {**base, "meter_provider": meter_provider}),
    }
    print("# asignals OpenTelemetry benchmark\n")
    print(
        f"- Python {platform.python_version()}, {platform.system()} {platform.machine()}, ", end=""
    )
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(
        f"- opentelemetry-sdk {metadata.version('opentelemetry-sdk')}, clock: "
        f"{'thread_time_ns' if args.cpu_clock else 'perf_counter_ns'}, "
        f"{settings.rounds} rounds of ~{settings.target_ns // 1_000_000} ms per contender\n"
    )
    with asyncio.Runner() as runner:
        results = measure_interleaved(runner.run, contenders, settings)
    rows = [[name, format_ns(m.ns), f"±{m.spread * 50:.0f} %"] for name, m in results.items()]
    print(markdown_table(["contender", "ns per send", "IQR"], rows))

    def diff(a: str, b: str) -> float:
        return _paired_diff(results[a], results[b])

    send_span = diff('on, receivers="none", N=1', "off, N=1")
    ours = diff('on, API only, receivers="none", N=1', "off, N=1") - results["bare API span"].ns
    receiver_span = diff('on, receivers="all", N=10', 'on, receivers="none", N=10') / 10
    metrics = diff("on, default options, N=10", 'on, receivers="none", N=10') / 10
    ours_async = (
        diff('on, API only, receivers="none", N=1 async', "off, N=1 async")
        - results["bare API span"].ns
    )
    off = diff("off again, N=1", "off, N=1")
    print()
    print(f"- off after uninstrument() vs never instrumented: {off:+,.0f} ns per send")
    print(f"- cost per send span (on, receivers='none', N=1, minus off): {send_span:,.0f} ns")
    print(f"  - of which the SDK's own span: {results['bare SDK span'].ns:,.0f} ns")
    print(
        f"  - our own code (API-only tracer: on - off - bare API span): {ours:,.0f} ns "
        f"(target: 3,000 ns); with one async receiver instead: {ours_async:,.0f} ns"
    )
    print(
        f"- cost per receiver span (receivers='all' minus 'none', N=10, per receiver): "
        f"{receiver_span:,.0f} ns"
    )
    print(
        f"- cost of the metrics per receiver (default options minus 'none' on a no-op "
        f"meter, N=10, per receiver): {metrics:,.0f} ns"
    )


def _paired_diff(a: Measurement, b: Measurement) -> float:
    """The median of the per-round differences, as :meth:`Measurement.__truediv__` does."""
    return statistics.median(x - y for x, y in zip(a.samples, b.samples, strict=True))


if __name__ == "__main__":
    main()
