"""The metric instruments, and the tallies behind the counters.

A synchronous ``Counter.add`` costs the OpenTelemetry SDK several microseconds (it hashes the
attributes and takes a lock on every call), more than the send it would count. So what happens
on every send is tallied in plain dicts owned by the running instrumentation, and reported
through observable instruments, which the SDK reads only when it collects. Only the receiver
duration histogram and the (rare) receiver failures are recorded as they happen.

The SDK returns the existing instrument, with its first callbacks, when an instrument is created
again on the same meter; so the callbacks read the :class:`Metrics` of the latest
``instrument()`` call, and report nothing when that call used another meter provider.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

#: Tallies keyed by the tuple of their attribute values, in this order.
_KEYS: Final = {
    "sends": ("asignals.signal", "asignals.background"),
    "background.finished": ("asignals.signal", "asignals.outcome"),
    "bridge.published": ("asignals.signal",),
    "bridge.delivered": ("asignals.signal",),
    "bridge.redelivered": ("asignals.signal",),
    "bridge.dead_lettered": ("asignals.signal", "asignals.reason"),
}

_DESCRIPTIONS: Final = {
    "sends": "Sends that reached at least one receiver",
    "background.finished": "Background sends finished: completed, failed (a receiver raised) "
    "or cancelled (at the dispatcher's drain deadline)",
    "bridge.published": "Events handed to the bridge for other processes",
    "bridge.delivered": "Events received from the bridge and sent to local receivers",
    "bridge.redelivered": "Deliveries of an event that was delivered before (attempt > 1)",
    "bridge.dead_lettered": "Events the bridge moved to its dead-letter stream",
}

Tally = dict[tuple[Any, ...], int]

_running: Metrics | None = None


class Metrics:
    """The instruments and tallies of one ``instrument()`` call."""

    def __init__(self, meter: Meter, provider: MeterProvider | None) -> None:
        self.provider = provider
        self.tallies: dict[str, Tally] = {name: {} for name in _KEYS}
        self.sends = self.tallies["sends"]
        self.finished = self.tallies["background.finished"]
        self.published = self.tallies["bridge.published"]
        self.delivered = self.tallies["bridge.delivered"]
        self.redelivered = self.tallies["bridge.redelivered"]
        self.dead_lettered = self.tallies["bridge.dead_lettered"]
        self.pending = 0
        self.duration = meter.create_histogram(
            "asignals.receiver.duration",
            unit="s",
            description="How long each receiver took, per signal and receiver",
        )
        self.failures = meter.create_counter(
            "asignals.receiver.failures",
            unit="{failure}",
            description="Receivers that raised, per signal and receiver",
        )
        for name in _KEYS:
            meter.create_observable_counter(
                f"asignals.{name}",
                callbacks=[_observe_tally(name, provider)],
                unit="{event}" if name.startswith("bridge") else "{send}",
                description=_DESCRIPTIONS[name],
            )
        meter.create_observable_up_down_counter(
            "asignals.background.pending",
            callbacks=[_observe_pending(provider)],
            unit="{send}",
            description="Background sends scheduled (send_nowait, send_later) and not finished",
        )

    @staticmethod
    def count(tally: Tally, key: tuple[Any, ...]) -> None:
        tally[key] = tally.get(key, 0) + 1


def start(metrics: Metrics) -> None:
    """Make ``metrics`` the one the observable instruments report."""
    global _running
    _running = metrics


def _current(provider: MeterProvider | None) -> Metrics | None:
    metrics = _running
    return metrics if metrics is not None and metrics.provider is provider else None


def _observe_tally(
    name: str, provider: MeterProvider | None
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    keys = _KEYS[name]

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        metrics = _current(provider)
        if metrics is None:
            return []
        tally = metrics.tallies[name]
        return [
            Observation(value, dict(zip(keys, key, strict=True)))
            for key, value in list(tally.items())
        ]

    return observe


def _observe_pending(
    provider: MeterProvider | None,
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        metrics = _current(provider)
        return [] if metrics is None else [Observation(metrics.pending)]

    return observe
