"""The instrumentation lets the core run a traced send: what that must not change, and the edges.

Tracing a signal puts a timer in front of each of its receivers in the core's receiver caches;
these tests check, with the real SDK, that receivers still run where and how they would
without tracing, that the timers keep nothing alive and outlive nothing, and that the trace
tree is right on every dispatch path (tests/test_opentelemetry.py covers the rest).
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import anyio
import pytest
from test_opentelemetry import (  # noqa: F401 - telemetry: the fixture
    Telemetry,
    broken,
    fast,
    parent_id,
    signal_with,
    span_id,
    telemetry,
)

from asignals import AsyncSignal
from asignals.contrib import opentelemetry as otel

pytestmark = pytest.mark.anyio


def _task() -> int:
    return anyio.get_current_task().id


@pytest.mark.parametrize("instrumented", [False, True])
async def test_receivers_run_in_the_tasks_they_would_run_in_untraced(
    telemetry: Telemetry,  # noqa: F811 - the fixture
    instrumented: bool,
) -> None:
    ran_in: dict[str, int] = {}

    def sync(**kwargs: Any) -> None:
        ran_in["sync"] = _task()

    async def last(**kwargs: Any) -> None:
        ran_in["last"] = _task()  # the last receiver, async: awaited in the sending task

    async def suspends(**kwargs: Any) -> None:
        ran_in["suspends"] = _task()
        await anyio.sleep(0)

    async def after(**kwargs: Any) -> None:
        ran_in["after"] = _task()  # started in a task of its own once the one before suspended

    if instrumented:
        telemetry.instrument(receivers="all")
    await signal_with("inline", [sync, last]).send(None)
    await signal_with("split", [suspends, after]).send(None)

    sender = _task()
    assert ran_in["sync"] == ran_in["last"] == ran_in["suspends"] == sender
    assert ran_in["after"] != sender
    assert len(telemetry.spans()) == (6 if instrumented else 0)  # 2 sends, 4 receivers


@pytest.mark.parametrize(
    "options",
    [{"timeout": 5}, {"max_concurrency": 2}, {"concurrent": False}],
    ids=["timeout", "max_concurrency", "sequential"],
)
async def test_sends_of_receivers_are_children_of_the_send_with_dispatch_options(
    telemetry: Telemetry,  # noqa: F811 - the fixture
    options: dict[str, Any],
) -> None:
    inner = signal_with("inner", [fast])

    async def relay(**kwargs: Any) -> None:
        await anyio.sleep(0)
        await inner.send(None)

    def sync_relay(**kwargs: Any) -> Any:
        return inner.send(None)  # a sync receiver returning the send to await

    outer = AsyncSignal(name="outer", **options)
    outer.connect(relay, weak=False)
    outer.connect(sync_relay, weak=False)
    telemetry.instrument()

    await outer.send(None)

    outer_span = telemetry.span("send outer")
    inner_spans = [s for s in telemetry.spans() if s.name == "send inner"]
    assert [parent_id(s) for s in inner_spans] == [span_id(outer_span)] * 2
    assert (outer_span.attributes or {})["asignals.receivers"] == 2


async def test_sends_that_reach_no_receiver_or_raise_record_nothing(
    telemetry: Telemetry,  # noqa: F811 - the fixture
) -> None:
    sig = AsyncSignal(name="for_a")
    sig.connect(fast, sender="a", weak=False)

    def gone(**kwargs: Any) -> None: ...

    collected = AsyncSignal(name="collected")
    collected.connect(gone)
    await collected.send(None)  # reached it: its collection is no mistake
    sig_with_options = AsyncSignal(name="options", timeout=1)
    sig_with_options.connect(fast, sender="a", weak=False)
    # Only the send spans: a receiver stalled 1 ms on a loaded machine would get one too.
    telemetry.instrument(receivers="none")
    del gone
    gc.collect()

    assert await sig.send("b") == []  # a sender nobody listens to
    assert await collected.send(None) == []  # its one receiver was garbage collected
    assert await sig_with_options.send("b") == []
    with pytest.raises(TypeError, match="positional"):
        await sig.send("a", 1)  # type: ignore[call-arg]
    assert telemetry.spans() == ()
    assert telemetry.points("asignals.sends") == []
    assert await sig.send("a") == [(fast, "fast")]
    assert telemetry.names() == ["send for_a"]


async def test_a_send_that_stops_at_a_failure_counts_the_receivers_it_ran(
    telemetry: Telemetry,  # noqa: F811 - the fixture
) -> None:
    sig = signal_with("stops", [broken, fast])
    telemetry.instrument()
    with pytest.raises(ExceptionGroup):
        await sig.send(None)
    attributes = telemetry.span("send stops").attributes or {}
    assert (attributes["asignals.receivers"], attributes["asignals.failures"]) == (1, 1)


async def test_the_timers_keep_no_weak_receiver_alive(
    telemetry: Telemetry,  # noqa: F811 - the fixture
) -> None:
    def make() -> Any:
        def receiver(**kwargs: Any) -> str:
            return "called"

        return receiver

    sig = AsyncSignal(name="weak")
    receiver = make()
    sig.connect(receiver)  # weakly, the default
    # Only the send spans: a receiver stalled 1 ms on a loaded machine would get one too.
    telemetry.instrument(receivers="none")
    results = await sig.send(None)
    assert results == [(receiver, "called")]
    watch = weakref.ref(receiver)
    del receiver, results
    gc.collect()

    assert watch() is None
    assert await sig.send(None) == []
    assert telemetry.names() == ["send weak"]


async def test_uninstrument_during_a_send_lets_it_finish_traced_and_the_next_run_untraced(
    telemetry: Telemetry,  # noqa: F811 - the fixture
) -> None:
    def stop(**kwargs: Any) -> str:
        otel.uninstrument()
        return "stopped"

    sig = signal_with("stopping", [stop, fast])
    other = signal_with("other", [fast])
    telemetry.instrument(receivers="all")
    await other.send(None)  # its cache now holds timers too

    assert await sig.send(None) == [(stop, "stopped"), (fast, "fast")]
    send = telemetry.span("send stopping")
    assert (send.attributes or {})["asignals.receivers"] == 2
    assert len(telemetry.children(send)) == 2

    telemetry.exporter.clear()
    assert await sig.send(None) == [(stop, "stopped"), (fast, "fast")]
    assert await other.send(None) == [(fast, "fast")]
    assert telemetry.spans() == ()
