"""OpenTelemetry traces and metrics for asignals: one call, from the request to a remote receiver.

``instrument()`` gives every send a span (``send <signal name>``), child of whatever span is
current (the request span of an instrumented ASGI app, say), with the spans of its slow or
failed receivers under it; background sends are children of the span that scheduled them; the
bridge carries the trace context to other processes, whose deliveries are CONSUMER spans of the
same trace. Metrics count sends, receiver durations and failures, background and bridge events.

It costs nothing until it is called: ``instrument()`` replaces ``AsyncSignal.send``,
``send_robust`` and ``asignals.background.submit`` / ``submit_wait`` with traced versions, and
sets the core's row hook (which puts a timer in front of each receiver of a traced signal) and
the bridge's hooks; ``uninstrument()`` puts the originals back. A traced send is the core's own
send loop, run inside a span. The send path of a program that never calls it is the core's
own, with no check for tracing anywhere on it.

Only ``opentelemetry-api`` is required (extra ``otel``); configure the SDK (or any other
implementation of the API) and its exporters as usual.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import Any, Final, Literal

from opentelemetry import metrics, trace

import asignals
from asignals.bridge import _hooks as bridge_hooks

from . import _metrics
from ._bridge import Hooks
from ._core import AsyncSignal, background, core
from ._metrics import Metrics
from ._session import Session
from ._wrappers import wrap_send, wrap_submit, wrap_submit_wait

__all__ = ["instrument", "is_instrumented", "uninstrument"]

ReceiverSpans = Literal["all", "slow", "none"]
"""Which receivers get a span of their own, the ``receivers=`` of :func:`instrument`.

``"all"``; ``"slow"``, those that took at least ``min_receiver_ms`` or raised (the default);
``"none"``, only the send's span.
"""

SCOPE: Final = "asignals"
"""The instrumentation scope name of every span and metric asignals records.

Select or drop asignals' telemetry by it in a collector or SDK view (``InstrumentationScope``
name ``"asignals"``).
"""

# What instrument() replaced: (owner, attribute, original), restored in reverse order.
_patched: list[tuple[Any, str, Any]] = []
_session: Session | None = None
_lock = threading.Lock()


def instrument(
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    signals: Iterable[AsyncSignal[..., Any]] | None = None,
    receivers: ReceiverSpans = "slow",
    min_receiver_ms: float = 1.0,
) -> None:
    """Trace and measure sends from now on, until :func:`uninstrument`.

    ``tracer_provider`` / ``meter_provider``: where spans and metrics go (default: the global
    providers, as set by ``opentelemetry.trace.set_tracer_provider`` or the OpenTelemetry
    distro). ``signals``: trace only these signals (default: every signal); background and bridge
    metrics always cover every signal. ``receivers``: which receivers get a span of their own
    under the send's span: ``"all"``, ``"slow"`` (those that took at least ``min_receiver_ms``
    milliseconds or raised) or ``"none"``. Receiver spans are recorded when the send ends, with
    the receiver's real start and end times, so a sub-millisecond receiver costs no span.

    A send that reaches no receiver records nothing. Calling ``instrument()`` again before
    ``uninstrument()`` raises ``RuntimeError``.
    """
    with _lock:
        _instrument(tracer_provider, meter_provider, signals, receivers, min_receiver_ms)


def _instrument(
    tracer_provider: trace.TracerProvider | None,
    meter_provider: metrics.MeterProvider | None,
    signals: Iterable[AsyncSignal[..., Any]] | None,
    receivers: ReceiverSpans,
    min_receiver_ms: float,
) -> None:
    if _patched:
        raise RuntimeError(
            "asignals is already instrumented; call asignals.contrib.opentelemetry."
            "uninstrument() first to instrument it again with other options"
        )
    if tracer_provider is not None and not isinstance(tracer_provider, trace.TracerProvider):
        raise TypeError(
            f"tracer_provider must be an opentelemetry.trace.TracerProvider (for instance "
            f"opentelemetry.sdk.trace.TracerProvider()), got {type(tracer_provider).__name__} "
            f"{tracer_provider!r}"
        )
    if meter_provider is not None and not isinstance(meter_provider, metrics.MeterProvider):
        raise TypeError(
            f"meter_provider must be an opentelemetry.metrics.MeterProvider (for instance "
            f"opentelemetry.sdk.metrics.MeterProvider()), got {type(meter_provider).__name__} "
            f"{meter_provider!r}"
        )
    if receivers not in ("all", "slow", "none"):
        raise ValueError(f"receivers must be 'all', 'slow' or 'none', got {receivers!r}")
    if isinstance(min_receiver_ms, bool) or not isinstance(min_receiver_ms, int | float):
        raise TypeError(f"min_receiver_ms must be a number (milliseconds), got {min_receiver_ms!r}")
    if math.isnan(min_receiver_ms) or min_receiver_ms < 0:
        raise ValueError(f"min_receiver_ms must be 0 or more, got {min_receiver_ms!r}")
    selected = _selected(signals)

    tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(
        SCOPE, asignals.__version__
    )
    meter = (meter_provider or metrics.get_meter_provider()).get_meter(SCOPE, asignals.__version__)
    measures = Metrics(meter, meter_provider)
    session = Session(tracer, measures, selected, receivers, round(min_receiver_ms * 1_000_000))

    global _session
    _session = session
    # The hook first: every cache filled once a traced send can start has the timers.
    _patch(core, "_row_hook", session.rows)
    _patch(AsyncSignal, "send", wrap_send(session, AsyncSignal.send, robust=False))
    _patch(AsyncSignal, "send_robust", wrap_send(session, AsyncSignal.send_robust, robust=True))
    _patch(background, "submit", wrap_submit(session, background.submit))
    _patch(background, "submit_wait", wrap_submit_wait(session, background.submit_wait))
    _patch(bridge_hooks, "hooks", Hooks(session))
    _metrics.start(measures)


def uninstrument() -> None:
    """Stop tracing and measuring: put back every method :func:`instrument` replaced.

    Does nothing when asignals is not instrumented. Sends already running finish traced; the
    counters keep reporting their last totals until the next :func:`instrument`.
    """
    global _session
    with _lock:
        while _patched:
            owner, name, original = _patched.pop()
            setattr(owner, name, original)
        if _session is not None:
            _session.close()  # the hook is off: no cache may keep its timers
            _session = None


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return bool(_patched)


def _selected(
    signals: Iterable[AsyncSignal[..., Any]] | None,
) -> frozenset[AsyncSignal[..., Any]] | None:
    if signals is None:
        return None
    if isinstance(signals, AsyncSignal):
        return frozenset((signals,))
    if isinstance(signals, str | bytes) or not isinstance(signals, Iterable):
        raise TypeError(f"signals must be a list of AsyncSignal or None, got {signals!r}")
    chosen = frozenset(signals)
    for signal in chosen:
        if not isinstance(signal, AsyncSignal):
            raise TypeError(f"signals must contain AsyncSignal instances, got {signal!r}")
    return chosen


def _patch(owner: Any, name: str, replacement: Any) -> None:
    _patched.append((owner, name, getattr(owner, name)))
    setattr(owner, name, replacement)
