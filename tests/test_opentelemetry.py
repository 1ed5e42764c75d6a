"""OpenTelemetry instrumentation: spans, links to background sends, metrics, with the real SDK.

Every test reads what the SDK exported (in-memory span exporter, in-memory metric reader): the
trace tree (parents, attributes, status, exception events) and the data points.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import NoneType
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import baggage as baggage_api
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from waiting import Child, run

import asignals
from asignals import AsyncSignal, background
from asignals.bridge import Bridge, RedisStreams
from asignals.bridge import _hooks as bridge_hooks
from asignals.contrib import opentelemetry as otel
from asignals.contrib import sqlalchemy as sqlalchemy_signals
from asignals.contrib.asgi import SignalsMiddleware
from asignals.contrib.asgi import lifespan as asgi_lifespan
from asignals.signals import post_save

pytestmark = pytest.mark.anyio


@dataclass
class Telemetry:
    """The SDK wired to in-memory exporters, and ways to read what it got."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def instrument(self, **options: Any) -> None:
        otel.instrument(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **options
        )

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def span(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, f"{len(found)} spans named {name!r} in {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return [s.name for s in self.spans()]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [
            s for s in self.spans() if s.parent is not None and s.parent.span_id == span_id(parent)
        ]

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for m in scope.metrics
            if m.name == metric
            for point in m.data.data_points
        ]

    def value(self, metric: str, **attributes: Any) -> Any:
        """The value (sum, or histogram count) of the one data point with these attributes."""
        wanted = {f"asignals.{k}": v for k, v in attributes.items()}
        found = [p for p in self.points(metric) if dict(p.attributes) == wanted]
        assert len(found) <= 1, found
        if not found:
            return 0
        point = found[0]
        return point.count if hasattr(point, "bucket_counts") else point.value


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(exporter, reader, tracer_provider, meter_provider)
    otel.uninstrument()
    tracer_provider.shutdown()
    meter_provider.shutdown()


def fast(**kwargs: Any) -> str:
    return "fast"


async def slow(**kwargs: Any) -> str:
    await anyio.sleep(0.03)
    return "slow"


def broken(**kwargs: Any) -> None:
    raise ValueError("card declined")


def signal_with(name: str, receivers: Sequence[Any]) -> AsyncSignal:
    sig = AsyncSignal(name=name)
    for fn in receivers:
        sig.connect(fn, weak=False)
    return sig


# -- send spans ---------------------------------------------------------------------------


async def test_send_span_with_slow_and_failed_receiver_spans(telemetry: Telemetry) -> None:
    sig = signal_with("order_placed", [fast, slow, broken])
    telemetry.instrument()

    results = await sig.send_robust("orders", order=1)

    assert [(fn, type(value)) for fn, value in results] == [
        (fast, str),
        (slow, str),
        (broken, ValueError),
    ]
    send = telemetry.span("send order_placed")
    assert send.kind is SpanKind.INTERNAL
    assert dict(send.attributes or {}) == {
        "asignals.signal": "order_placed",
        "asignals.sender": "orders",
        "asignals.receivers": 3,
        "asignals.failures": 1,
        "asignals.robust": True,
        "asignals.background": False,
    }
    assert send.status.status_code is StatusCode.ERROR
    [event] = send.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "card declined"
    # "slow": the fast receiver has no span; the slow one and the failed one do.
    children = {s.name: s for s in telemetry.children(send)}
    assert set(children) == {f"{__name__}.slow", f"{__name__}.broken"}
    slow_span = children[f"{__name__}.slow"]
    assert slow_span.status.status_code is StatusCode.UNSET
    assert slow_span.attributes is not None
    assert slow_span.attributes["asignals.receiver"] == f"{__name__}.slow"
    assert slow_span.start_time is not None and slow_span.end_time is not None
    assert send.start_time is not None and send.end_time is not None
    # Recorded after the fact, with the receiver's own times, inside the send's.
    assert send.start_time <= slow_span.start_time < slow_span.end_time <= send.end_time
    assert slow_span.end_time - slow_span.start_time >= 25_000_000
    assert children[f"{__name__}.broken"].status.status_code is StatusCode.ERROR
    assert [e.name for e in children[f"{__name__}.broken"].events] == ["exception"]


async def test_a_raising_send_has_an_error_span_and_raises_as_before(
    telemetry: Telemetry,
) -> None:
    sig = signal_with("charge", [broken])
    telemetry.instrument()

    with pytest.raises(ExceptionGroup) as caught:
        await sig.send(None)

    [error] = caught.value.exceptions
    assert isinstance(error, ValueError)
    send = telemetry.span("send charge")
    assert send.status.status_code is StatusCode.ERROR
    assert send.attributes is not None
    assert send.attributes["asignals.robust"] is False
    assert send.attributes["asignals.failures"] == 1
    assert send.attributes["asignals.sender"] == "None"
    assert [e.attributes["exception.type"] for e in send.events if e.attributes] == ["ValueError"]


async def test_receivers_all_and_none(telemetry: Telemetry) -> None:
    sig = signal_with("s", [fast, slow])
    telemetry.instrument(receivers="all")
    await sig.send(None)
    send = telemetry.span("send s")
    assert sorted(s.name for s in telemetry.children(send)) == [
        f"{__name__}.fast",
        f"{__name__}.slow",
    ]

    otel.uninstrument()
    telemetry.exporter.clear()
    telemetry.instrument(receivers="none")
    await sig.send(None)
    assert telemetry.names() == ["send s"]


async def test_thread_receivers_and_timeouts_have_their_spans(telemetry: Telemetry) -> None:
    def blocking(**kwargs: Any) -> str:
        time.sleep(0.01)  # in a worker thread
        return "done"

    async def stuck(**kwargs: Any) -> None:
        await anyio.sleep(10)

    sig = AsyncSignal(name="s")
    sig.connect(blocking, weak=False, sync_to_thread=True)
    sig.connect(stuck, weak=False)
    telemetry.instrument()
    results = await sig.send_robust(None, timeout=0.2)
    assert [fn for fn, _ in results] == [blocking, stuck]
    assert results[0][1] == "done" and isinstance(results[1][1], TimeoutError)
    send = telemetry.span("send s")
    assert (send.attributes or {})["asignals.failures"] == 1
    assert send.status.status_code is StatusCode.ERROR
    children = {c.name.rsplit(".", 1)[-1]: c for c in telemetry.children(send)}
    assert set(children) == {"blocking", "stuck"}
    assert children["blocking"].status.status_code is StatusCode.UNSET
    assert children["stuck"].status.status_code is StatusCode.ERROR
    assert (
        telemetry.value("asignals.receiver.failures", signal="s", receiver=children["stuck"].name)
        == 1
    )


@pytest.mark.parametrize("instrumented", [False, True])
async def test_sync_receivers_behave_as_without_instrumentation(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture, instrumented: bool
) -> None:
    ran: list[str] = []

    def first(**kwargs: Any) -> None:
        ran.append("first")
        raise KeyError("first")

    def second(**kwargs: Any) -> Any:
        ran.append("second")
        return anyio.sleep(0)  # an awaitable from a sync receiver is awaited

    sig = signal_with("s", [first, second])
    if instrumented:
        telemetry.instrument()
    with caplog.at_level(logging.ERROR, logger="asignals"):
        results = await sig.send_robust("x")
    assert [(fn, type(value)) for fn, value in results] == [(first, KeyError), (second, NoneType)]
    assert [r.getMessage().split(" in ")[0] for r in caplog.records if r.name == "asignals"] == [
        f"Error calling {__name__}.test_sync_receivers_behave_as_without_instrumentation"
        ".<locals>.first"
    ]
    with pytest.raises(ExceptionGroup, match=r"1 receiver\(s\) of <AsyncSignal 's'> raised"):
        await sig.send("x")
    assert ran == ["first", "second", "first"]  # send stopped at the first failure
    assert telemetry.names().count("send s") == (2 if instrumented else 0)


async def test_async_receivers_still_run_concurrently(telemetry: Telemetry) -> None:
    events: list[str] = []
    both_started = anyio.Event()

    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> str:
            events.append(f"{name} started")
            if len(events) == 2:
                both_started.set()
            # Each waits for the other to start: run one after the other, they never finish
            # (a sleep instead would race the other's start on a loaded machine).
            await both_started.wait()
            events.append(f"{name} done")
            return name

        return receiver

    first, second = make("first"), make("second")
    sig = signal_with("s", [first, second])
    telemetry.instrument(receivers="all")
    with anyio.fail_after(30):
        assert await sig.send(None) == [(first, "first"), (second, "second")]
    assert events[:2] == ["first started", "second started"]
    send = telemetry.span("send s")
    [a, b] = sorted(telemetry.children(send), key=lambda s: s.start_time or 0)
    assert a.end_time is not None and b.start_time is not None
    assert b.start_time < a.end_time  # they overlap


async def test_min_receiver_ms_is_the_slow_threshold(telemetry: Telemetry) -> None:
    sig = signal_with("s", [slow])
    telemetry.instrument(min_receiver_ms=10_000)
    await sig.send(None)
    assert telemetry.names() == ["send s"]


async def test_sender_attribute_names_classes_not_objects(telemetry: Telemetry) -> None:
    class Order:
        pass

    sig = signal_with("saved", [fast])
    telemetry.instrument()
    await sig.send(Order)
    await sig.send(Order())
    await sig.send(7)
    senders = [(s.attributes or {})["asignals.sender"] for s in telemetry.spans()]
    assert senders == ["Order", "Order", "7"]


async def test_nested_sends_are_children_of_the_outer_send(telemetry: Telemetry) -> None:
    inner = signal_with("inner", [fast])

    async def relay(**kwargs: Any) -> None:
        await inner.send(None)

    outer = signal_with("outer", [relay])
    telemetry.instrument()
    tracer = telemetry.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        await outer.send(None)

    outer_span = telemetry.span("send outer")
    assert parent_id(outer_span) == request.get_span_context().span_id
    assert parent_id(telemetry.span("send inner")) == span_id(outer_span)
    assert {s.context.trace_id for s in telemetry.spans() if s.context} == {
        request.get_span_context().trace_id
    }


async def test_dispatch_options_still_apply(telemetry: Telemetry) -> None:
    started: list[str] = []

    async def first(**kwargs: Any) -> None:
        started.append("first")
        await anyio.sleep(0.01)
        started.append("first done")

    async def second(**kwargs: Any) -> None:
        started.append("second")

    async def stuck(**kwargs: Any) -> None:
        await anyio.sleep(10)

    sig = signal_with("s", [first, second])
    telemetry.instrument()
    await sig.send(None, concurrent=False)
    assert started == ["first", "first done", "second"]
    with pytest.raises(BaseExceptionGroup):
        await signal_with("t", [stuck]).send(None, timeout=0.05)
    assert telemetry.span("send t").status.status_code is StatusCode.ERROR
    with pytest.raises(TypeError, match="positional"):
        await sig.send(None, 1)  # type: ignore[call-arg]
    assert await sig.send(sender=None) == [(first, None), (second, None)]


@asignals.signal
def order_paid(sender: str, *, amount: int) -> None:
    """A typed signal: its keyword names are checked on every send."""


async def test_typed_checks_and_wait_for_still_apply(telemetry: Telemetry) -> None:
    # Only the send spans: a receiver stalled 1 ms on a loaded machine would get one too.
    telemetry.instrument(receivers="none")
    with order_paid.connected_to(fast):
        with pytest.raises(TypeError, match="unexpected 'amout'"):
            await order_paid.send("shop", amout=3)  # type: ignore[call-arg]
        seen: list[dict[str, Any]] = []

        async def wait() -> None:
            seen.append(await order_paid.wait_for("shop", timeout=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            assert await order_paid.send_robust("shop", amount=3) == [(fast, "fast")]
    assert seen == [{"amount": 3}]
    assert telemetry.names() == ["send order_paid"]


async def test_sends_reaching_no_receiver_and_unselected_signals_record_nothing(
    telemetry: Telemetry,
) -> None:
    nobody = AsyncSignal(name="nobody")
    traced = signal_with("traced", [fast])
    untraced = signal_with("untraced", [fast])
    # Only the send spans: a receiver stalled 1 ms on a loaded machine would get one too.
    telemetry.instrument(signals=[traced], receivers="none")
    assert await nobody.send(None) == []
    assert await untraced.send(None) == [(fast, "fast")]
    assert await traced.send(None) == [(fast, "fast")]
    assert telemetry.names() == ["send traced"]


async def test_unsampled_sends_work_and_export_nothing(telemetry: Telemetry) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(tracer_provider=provider, meter_provider=telemetry.meter_provider)
    sig = signal_with("s", [fast, slow, broken])
    results = await sig.send_robust(None)
    assert [fn for fn, _ in results] == [fast, slow, broken]
    assert exporter.get_finished_spans() == ()
    assert telemetry.value("asignals.sends", signal="s", background=False) == 1


# -- off means off ------------------------------------------------------------------------


async def test_uninstrumented_sends_make_no_span_and_run_the_core_methods(
    telemetry: Telemetry,
) -> None:
    originals = (AsyncSignal.send, AsyncSignal.send_robust, background.submit)
    sig = signal_with("s", [fast])
    await sig.send(None)
    assert not otel.is_instrumented()

    # Only the send spans: a receiver stalled 1 ms on a loaded machine would get one too.
    telemetry.instrument(receivers="none")
    assert otel.is_instrumented()
    assert AsyncSignal.send is not originals[0]
    await sig.send(None)
    assert telemetry.names() == ["send s"]

    otel.uninstrument()
    assert (AsyncSignal.send, AsyncSignal.send_robust, background.submit) == originals
    await sig.send(None)
    await sig.send_robust(None)
    assert telemetry.names() == ["send s"]


# -- background sends ---------------------------------------------------------------------


async def test_background_send_is_a_child_of_the_scheduling_span_even_after_it_ended(
    telemetry: Telemetry,
) -> None:
    released = anyio.Event()

    async def email(**kwargs: Any) -> None:
        await released.wait()
        await anyio.sleep(0.02)  # the SMTP round trip

    sig = signal_with("order_confirmed", [email])
    telemetry.instrument()
    tracer = telemetry.tracer_provider.get_tracer("test")
    async with asignals.dispatcher():
        with tracer.start_as_current_span("POST /orders") as request:
            sig.send_nowait("orders", order=1)
        assert telemetry.value("asignals.background.pending") == 1
        released.set()  # only once the request span has ended

    request_span = telemetry.span("POST /orders")
    send = telemetry.span("send order_confirmed")
    assert parent_id(send) == request.get_span_context().span_id
    assert send.context is not None
    assert send.context.trace_id == request.get_span_context().trace_id
    assert send.attributes is not None
    assert send.attributes["asignals.background"] is True
    assert send.attributes["asignals.robust"] is True
    assert request_span.end_time is not None and send.end_time is not None
    assert send.end_time > request_span.end_time
    # The email receiver waited for the release: it is slow, so it has its span.
    [email_span] = telemetry.children(send)
    assert email_span.name.endswith("<locals>.email")
    assert telemetry.value("asignals.background.pending") == 0
    assert (
        telemetry.value(
            "asignals.background.finished", signal="order_confirmed", outcome="completed"
        )
        == 1
    )
    assert telemetry.value("asignals.sends", signal="order_confirmed", background=True) == 1


async def test_background_outcomes_and_chained_sends(telemetry: Telemetry) -> None:
    chained = signal_with("chained", [fast])

    def chain(**kwargs: Any) -> None:
        chained.send_nowait(None)

    failing = signal_with("failing", [broken])
    starting = signal_with("starting", [chain])
    telemetry.instrument()
    async with asignals.dispatcher():
        failing.send_nowait(None)
        starting.send_nowait(None)
        await failing.send_later(None)

    assert telemetry.value("asignals.background.finished", signal="failing", outcome="failed") == 2
    assert (
        telemetry.value("asignals.background.finished", signal="starting", outcome="completed") == 1
    )
    assert (
        telemetry.value("asignals.background.finished", signal="chained", outcome="completed") == 1
    )
    assert telemetry.value("asignals.background.pending") == 0
    # The chained send is a background send of its own, child of the send that scheduled it.
    chained_span = telemetry.span("send chained")
    assert chained_span.attributes is not None
    assert chained_span.attributes["asignals.background"] is True
    assert parent_id(chained_span) == span_id(telemetry.span("send starting"))
    assert [s.status.status_code for s in telemetry.spans() if s.name == "send failing"] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
    ]


async def test_background_send_cancelled_at_the_drain_deadline(telemetry: Telemetry) -> None:
    async def stuck(**kwargs: Any) -> None:
        await anyio.sleep(10)

    sig = signal_with("stuck", [stuck])
    telemetry.instrument()
    async with asignals.dispatcher(drain_timeout=0.05):
        sig.send_nowait(None)
    assert telemetry.value("asignals.background.finished", signal="stuck", outcome="cancelled") == 1
    assert telemetry.value("asignals.background.pending") == 0
    assert telemetry.span("send stuck").end_time is not None


async def test_send_nowait_from_a_worker_thread_is_one_background_send(
    telemetry: Telemetry,
) -> None:
    sig = signal_with("from_thread", [fast])
    telemetry.instrument()
    tracer = telemetry.tracer_provider.get_tracer("test")
    async with asignals.dispatcher():
        with tracer.start_as_current_span("handler") as handler:
            await anyio.to_thread.run_sync(sig.send_nowait, None)
    send = telemetry.span("send from_thread")
    assert parent_id(send) == handler.get_span_context().span_id
    assert telemetry.value("asignals.background.pending") == 0
    assert (
        telemetry.value("asignals.background.finished", signal="from_thread", outcome="completed")
        == 1
    )


async def test_a_refused_background_send_is_not_pending(telemetry: Telemetry) -> None:
    sig = signal_with("s", [fast])
    telemetry.instrument()
    with pytest.raises(RuntimeError, match="dispatcher"):
        sig.send_nowait(None)
    assert telemetry.value("asignals.background.pending") == 0


# -- metrics ------------------------------------------------------------------------------


async def test_metrics_per_signal_and_receiver(telemetry: Telemetry) -> None:
    sig = signal_with("paid", [fast, broken])
    telemetry.instrument()
    for _ in range(3):
        await sig.send_robust("shop")
    await signal_with("other", [fast]).send(None)

    assert telemetry.value("asignals.sends", signal="paid", background=False) == 3
    assert telemetry.value("asignals.sends", signal="other", background=False) == 1
    assert (
        telemetry.value("asignals.receiver.failures", signal="paid", receiver=f"{__name__}.broken")
        == 3
    )
    assert (
        telemetry.value("asignals.receiver.failures", signal="paid", receiver=f"{__name__}.fast")
        == 0
    )
    for receiver in ("fast", "broken"):
        assert (
            telemetry.value(
                "asignals.receiver.duration", signal="paid", receiver=f"{__name__}.{receiver}"
            )
            == 3
        )
    [point] = [
        p
        for p in telemetry.points("asignals.receiver.duration")
        if p.attributes["asignals.receiver"] == f"{__name__}.fast"
        and p.attributes["asignals.signal"] == "paid"
    ]
    assert 0 < point.sum < 1  # seconds


async def test_instrumenting_again_on_the_same_meter_reports_the_new_counts(
    telemetry: Telemetry,
) -> None:
    sig = signal_with("again", [fast])
    telemetry.instrument()
    await sig.send(None)
    assert telemetry.value("asignals.sends", signal="again", background=False) == 1
    otel.uninstrument()
    await sig.send(None)  # not counted
    assert telemetry.value("asignals.sends", signal="again", background=False) == 1
    telemetry.instrument()
    for _ in range(3):
        await sig.send(None)
    assert telemetry.value("asignals.sends", signal="again", background=False) == 3


# -- bad input and failing exporters --------------------------------------------------------


def test_bad_input_is_refused_with_a_reason(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("test")
    with pytest.raises(
        TypeError, match=r"tracer_provider must be an opentelemetry\.trace\.TracerProvider"
    ):
        otel.instrument(tracer_provider=tracer)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="meter_provider must be"):
        otel.instrument(meter_provider=telemetry.tracer_provider)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_receiver_ms must be 0 or more, got -1"):
        telemetry.instrument(min_receiver_ms=-1)
    with pytest.raises(ValueError, match="min_receiver_ms"):
        telemetry.instrument(min_receiver_ms=float("nan"))
    with pytest.raises(TypeError, match="min_receiver_ms must be a number"):
        telemetry.instrument(min_receiver_ms="1")
    with pytest.raises(ValueError, match="receivers must be 'all', 'slow' or 'none', got 'some'"):
        telemetry.instrument(receivers="some")
    with pytest.raises(TypeError, match="signals must be a list of AsyncSignal"):
        telemetry.instrument(signals="order_placed")
    with pytest.raises(TypeError, match="signals must contain AsyncSignal instances"):
        telemetry.instrument(signals=[object()])
    # None of the refused calls instrumented anything.
    assert not otel.is_instrumented()
    otel.uninstrument()  # not instrumented: a no-op
    telemetry.instrument()
    with pytest.raises(RuntimeError, match=r"already instrumented; call .*uninstrument\(\) first"):
        telemetry.instrument()
    otel.uninstrument()
    otel.uninstrument()
    assert not otel.is_instrumented()


class _BrokenExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise ConnectionError("collector down")


class _BrokenProcessor(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("processor broken on start")

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("processor broken on end")


async def test_a_failing_exporter_or_processor_never_fails_a_send(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_BrokenExporter()))
    provider.add_span_processor(_BrokenProcessor())
    otel.instrument(tracer_provider=provider, meter_provider=telemetry.meter_provider)
    sig = signal_with("s", [fast, slow, broken])
    with caplog.at_level(logging.WARNING, logger="asignals.opentelemetry"):
        for _ in range(2):
            results = await sig.send_robust(None)
            assert [fn for fn, _ in results] == [fast, slow, broken]
        assert await signal_with("t", [fast]).send(None) == [(fast, "fast")]
    warnings = [r for r in caplog.records if r.name == "asignals.opentelemetry"]
    assert len(warnings) == 1  # once, then at DEBUG
    assert "the send went on without it" in warnings[0].getMessage()


def test_instrument_and_uninstrument_from_threads_see_one_state(telemetry: Telemetry) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            telemetry.instrument()
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert otel.is_instrumented()
    assert len(errors) == 1  # one instrumented, the other was told it already was
    otel.uninstrument()
    assert not hasattr(AsyncSignal.send, "__wrapped__")
    assert not hasattr(AsyncSignal.send_robust, "__wrapped__")


# -- a FastAPI app instrumented with opentelemetry-instrumentation-asgi --------------------


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "otel_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_request_span_is_the_parent_of_its_sends_flush_signals_and_background_sends(
    telemetry: Telemetry, tmp_path: Path
) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    order_placed = signal_with("order_placed", [fast])
    order_confirmed = AsyncSignal(name="order_confirmed")
    saved: list[int] = []
    response_seen = anyio.Event()

    def audit(sender: type[Order], instance: Order, **kwargs: Any) -> None:
        saved.append(instance.id)

    async def email(sender: Any, order_id: int, **kwargs: Any) -> None:
        await response_seen.wait()  # so this runs after the response, for sure
        await anyio.sleep(0.01)

    post_save.connect(audit, sender=Order, weak=False)
    order_confirmed.connect(email, weak=False)
    order_audited = signal_with("order_audited", [fast])
    app = FastAPI(lifespan=asgi_lifespan)
    app.add_middleware(SignalsMiddleware)

    @app.post("/orders")
    async def place_order(item: str) -> dict[str, int]:
        async with maker() as session:
            order = Order(item=item)
            session.add(order)
            await session.flush()  # post_save, from inside the flush
            await order_placed.send(Order, order_id=order.id)
            order_confirmed.send_nowait(Order, order_id=order.id)
            order_audited.send_after_response(Order, order_id=order.id)
            await session.commit()
        return {"id": order.id}

    sqlalchemy_signals.install(maker)
    telemetry.instrument()
    traced = OpenTelemetryMiddleware(
        app, tracer_provider=telemetry.tracer_provider, exclude_spans=["receive", "send"]
    )
    try:
        transport = httpx.ASGITransport(app=traced)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            response = await client.post("/orders", params={"item": "widget"})
            assert response.status_code == 200
            response_seen.set()
    finally:
        sqlalchemy_signals.uninstall(maker)
        post_save.disconnect(audit, sender=Order)
        await engine.dispose()

    assert saved == [response.json()["id"]]
    [request] = [s for s in telemetry.spans() if s.kind is SpanKind.SERVER]
    assert request.name == "POST /orders"
    for name in (
        "send post_save",
        "send order_placed",
        "send order_confirmed",
        "send order_audited",  # held until the response, then a background send
    ):
        span = telemetry.span(name)
        assert parent_id(span) == span_id(request), name
        assert span.context is not None and request.context is not None
        assert span.context.trace_id == request.context.trace_id
    assert (telemetry.span("send post_save").attributes or {})["asignals.sender"] == "Order"
    assert (telemetry.span("send order_audited").attributes or {})["asignals.background"] is True
    background_send = telemetry.span("send order_confirmed")
    assert (background_send.attributes or {})["asignals.background"] is True
    assert background_send.end_time is not None and request.end_time is not None
    assert background_send.end_time > request.end_time


def test_the_tracing_example_prints_one_trace_per_request() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "tracing.py"
    done = run(sys.executable, str(example), step="examples/tracing.py")
    out = done.stdout
    assert "POST /orders widget x2 -> 201" in out
    assert "POST /orders gadget x5 -> 409" in out
    [ok, refused] = out.split("\ntrace ")[1:]
    assert "send order_placed" in ok and "send order_confirmed" in ok
    assert "fastapi_app.send_confirmation_email" in ok  # slow: it has its own span
    assert "deliver order_placed" in ok  # the shipping side of the bridge, in the same trace
    assert "send order_placed" in refused and "ERROR" in refused
    assert "send order_confirmed" not in refused  # no email for a refused order
    assert "deliver order_placed" not in refused  # nor shipping


# -- across processes: the bridge carries the trace ---------------------------------------

WORKER = Path(__file__).with_name("otel_worker.py")


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


@pytest.mark.redis
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_one_trace_from_the_request_to_the_receiver_in_another_process(
    telemetry: Telemetry, redis_url: str
) -> None:
    stream = f"asignals-otel-test:{uuid.uuid4().hex}"
    order_placed = AsyncSignal(name="order_placed")
    worker = Child(sys.executable, str(WORKER), redis_url, stream, "shipping")
    try:
        await worker.expect("the worker starting its bridge", "ready")
        telemetry.instrument()
        bridge = Bridge(
            RedisStreams(redis_url), stream=stream, mode="publish", signals=[order_placed]
        )
        app = FastAPI()

        @app.post("/orders/{order}")
        async def place_order(order: int, fail: bool = False) -> dict[str, int]:
            await order_placed.send("shop", order=order, fail=fail)
            return {"order": order}

        traced = OpenTelemetryMiddleware(
            app, tracer_provider=telemetry.tracer_provider, exclude_spans=["receive", "send"]
        )
        async with (
            bridge,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=traced), base_url="http://t"
            ) as client,
        ):
            # The caller's baggage comes in with the request and travels on.
            ok = await client.post("/orders/1", headers={"baggage": "tenant=acme"})
            failing = await client.post("/orders/2", params={"fail": "true"})
            assert (ok.status_code, failing.status_code) == (200, 200)
            # A hostile envelope: its trace headers are garbage, the event must still arrive.
            encoded = bridge.encode(order_placed, "shop", {"order": 3})
            body = json.loads(encoded.data)
            body["headers"] = {
                "traceparent": "00-" + "f" * 32 + "-zzzz-01",
                "tracestate": "x" * 100_000,
                "baggage": "=;=;" * 1000,
            }
            await bridge.publish_encoded(json.dumps(body).encode())
            # Order 2 twice: it fails, and is retried once.
            handled = [
                json.loads(await worker.expect(f"delivery {i} of orders 1, 2, 2, 3", '{"order"'))
                for i in range(1, 5)
            ]
        await worker.stop("the worker stopping its bridge once its stdin closed")
        report = json.loads(await worker.expect("the worker's report of its spans", '{"spans"'))
    finally:
        worker.kill()
        async with Redis.from_url(redis_url) as redis:
            await redis.delete(stream, f"{stream}:dead")

    assert sorted(h["order"] for h in handled) == [1, 2, 2, 3]
    assert [h["baggage"] for h in handled if h["order"] == 1] == [{"tenant": "acme"}]
    remote = report["spans"]
    by_id = {s["span_id"]: s for s in remote}

    # Process A: the request span is the parent of the send, which carried its context.
    requests = [s for s in telemetry.spans() if s.kind is SpanKind.SERVER]
    sent = [s for s in telemetry.spans() if s.name == "send order_placed"]
    assert len(requests) == len(sent) == 2
    assert [parent_id(s) for s in sent] == [span_id(r) for r in requests]
    trace_1, send_1 = hex_ids(sent[0])

    # Process B: a CONSUMER span per delivery, child of the sending span, around the local send.
    deliveries = [s for s in remote if s["name"] == "deliver order_placed"]
    assert all(s["kind"] == "CONSUMER" for s in deliveries)
    [first] = [s for s in deliveries if s["trace_id"] == trace_1]
    assert first["parent_id"] == send_1 and first["remote_parent"]
    assert first["attributes"] == {"asignals.signal": "order_placed", "asignals.attempt": 1}
    [local] = [s for s in remote if s["parent_id"] == first["span_id"]]
    assert local["name"] == "send order_placed" and local["trace_id"] == trace_1
    assert local["attributes"]["asignals.sender"] == "shop"
    # Receivers get spans when slow (min_receiver_ms): ship always is; on a loaded machine the
    # bridge's own hook on the signal (a no-op for a delivered event) can take 1 ms and have one.
    [receiver] = [
        s for s in remote if s["parent_id"] == local["span_id"] and s["name"].endswith(".ship")
    ]
    assert receiver["name"].endswith(".ship") and receiver["status"] == "UNSET"

    # The failing order: two attempts in the trace of the second request, both in error.
    trace_2, send_2 = hex_ids(sent[1])
    retried = [s for s in deliveries if s["trace_id"] == trace_2]
    assert sorted(s["attributes"]["asignals.attempt"] for s in retried) == [1, 2]
    assert all(s["parent_id"] == send_2 for s in retried)
    assert [s["status"] for s in retried] == ["ERROR", "ERROR"]
    assert first["status"] == "UNSET"
    failed_sends = [
        s for s in remote if s["name"] == "send order_placed" and s["trace_id"] == trace_2
    ]
    assert [s["status"] for s in failed_sends] == ["ERROR", "ERROR"]
    assert all("exception" in s["events"] for s in failed_sends)

    # The hostile headers were ignored: a delivery of its own trace, without a parent.
    [hostile] = [s for s in deliveries if s["trace_id"] not in (trace_1, trace_2)]
    assert hostile["parent_id"] is None
    assert by_id[hostile["span_id"]]["status"] == "UNSET"

    # Metrics on both sides.
    assert telemetry.value("asignals.bridge.published", signal="order_placed") == 3
    points = {
        (m, tuple(sorted(a.items()))): v for m, ps in report["metrics"].items() for a, v in ps
    }
    signal = (("asignals.signal", "order_placed"),)
    assert points[("asignals.bridge.delivered", signal)] == 4
    assert points[("asignals.bridge.redelivered", signal)] == 1
    dead = (("asignals.reason", "max_attempts"), ("asignals.signal", "order_placed"))
    assert points[("asignals.bridge.dead_lettered", dead)] == 1
    failures = [v for (m, _), v in points.items() if m == "asignals.receiver.failures"]
    assert failures == [2]


async def test_dead_letter_reasons_are_keywords_or_other(telemetry: Telemetry) -> None:
    telemetry.instrument()
    assert bridge_hooks.hooks is not None
    bridge_hooks.hooks.on_dead_letter("order_placed", "max_attempts")
    bridge_hooks.hooks.on_dead_letter("order_placed", "outbox row 7 cannot be published: ...")
    bridge_hooks.hooks.on_dead_letter("order_placed", "outbox row 8 cannot be published: ...")
    assert (
        telemetry.value(
            "asignals.bridge.dead_lettered", signal="order_placed", reason="max_attempts"
        )
        == 1
    )
    assert (
        telemetry.value("asignals.bridge.dead_lettered", signal="order_placed", reason="other") == 2
    )
    otel.uninstrument()
    assert bridge_hooks.hooks is None


def test_trace_headers_that_cannot_be_trusted_are_ignored() -> None:
    from asignals.contrib.opentelemetry._bridge import remote_context

    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    valid = trace.get_current_span(remote_context({"traceparent": good})).get_span_context()
    assert valid.is_valid and valid.is_remote
    for headers in [
        None,
        "traceparent",
        {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},  # all-zero ids
        {"traceparent": good[:-3]},
        {"traceparent": 55},
        {1: good},
        {"traceparent": good + "x" * 10_000},
        {"traceparent": good, "baggage": "a=" + "b" * 10_000},
        {"x-other": good},
    ]:
        context = remote_context(headers)
        span_context = trace.get_current_span(context).get_span_context()
        if isinstance(headers, dict) and headers.get("baggage"):
            assert span_context.is_valid  # the trace header is fine, the baggage is dropped
            assert dict(baggage_api.get_all(context)) == {}
        else:
            assert not span_context.is_valid, headers


GLOBAL_PROVIDERS = """
import asyncio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from asignals import AsyncSignal
from asignals.contrib import opentelemetry as otel

otel.instrument()  # before the application configures OpenTelemetry, as a library would
exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
metrics.set_meter_provider(MeterProvider([reader]))
sig = AsyncSignal(name="paid")
sig.connect(lambda **kwargs: None, weak=False)
asyncio.run(sig.send(None))
sends = [p.value for m in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
         if m.name == "asignals.sends" for p in m.data.data_points]
print([s.name for s in exporter.get_finished_spans()], sends)
"""


def test_the_global_providers_set_after_instrument_are_used() -> None:
    done = run(sys.executable, "-c", GLOBAL_PROVIDERS, step="a script setting the providers late")
    assert done.stdout.strip() == "['send paid'] [1]"
