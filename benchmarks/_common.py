"""Timing helpers shared by the benchmarks.

A *batch* is a coroutine function taking a count ``k``: it performs ``k`` operations inside the
running event loop and returns the elapsed time in nanoseconds, measured with
``time.perf_counter_ns`` (or the thread's CPU time, see :func:`use_cpu_clock`) around the loop
only (loop start-up and task creation are excluded).

:func:`measure_interleaved` calibrates ``k`` per contender so that one sample takes about
``target_ns``, then takes ``rounds`` samples of every contender round-robin (A, B, C, A, B, C...)
so that slow drifts of the machine (frequency scaling, other processes) hit all contenders alike,
and reports the median ns per operation of each. Ratios between two contenders are medians of the
per-round ratios (see :meth:`Measurement.__truediv__`).
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from time import perf_counter_ns, thread_time_ns
from typing import Any, Protocol, TypeVar

Batch = Callable[[int], Coroutine[Any, Any, int]]
"""``await batch(k)`` runs ``k`` operations and returns the elapsed nanoseconds."""

T = TypeVar("T")


class RunCoroutine(Protocol):
    """Runs one coroutine to completion in an event loop, e.g. ``asyncio.Runner().run``."""

    def __call__(self, coroutine: Coroutine[Any, Any, T], /) -> T: ...


_clock: Callable[[], int] = perf_counter_ns


def use_cpu_clock(enabled: bool) -> None:
    """Time samples with ``time.thread_time_ns`` instead of ``time.perf_counter_ns``.

    The thread's CPU time leaves out the time the OS gives the CPU to other processes: on a
    machine busier than its CPU count, wall-clock samples are full of such pauses. Everything
    measured here runs on the event loop's thread and never blocks, so both clocks agree on a
    quiet machine.
    """
    global _clock
    _clock = thread_time_ns if enabled else perf_counter_ns


def awaiting(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Batch:
    """A batch that does ``await fn(*args, **kwargs)`` ``k`` times."""

    async def batch(k: int) -> int:
        clock = _clock
        iterations = range(k)
        start = clock()
        for _ in iterations:
            await fn(*args, **kwargs)
        return clock() - start

    return batch


def calling(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Batch:
    """A batch that calls the synchronous ``fn(*args, **kwargs)`` ``k`` times (in the loop)."""

    async def batch(k: int) -> int:
        clock = _clock
        iterations = range(k)
        start = clock()
        for _ in iterations:
            fn(*args, **kwargs)
        return clock() - start

    return batch


@dataclass(frozen=True)
class Settings:
    rounds: int
    """Samples per contender; the median is reported."""
    target_ns: int
    """Wall time one sample should take."""
    gc_during_samples: bool
    """Leave the cyclic GC enabled while a sample runs (it is always collected between samples)."""


def _sample(run: RunCoroutine, batch: Batch, k: int, settings: Settings) -> int:
    gc.collect()
    if settings.gc_during_samples:
        return run(batch(k))
    gc.disable()
    try:
        return run(batch(k))
    finally:
        gc.enable()


def calibrate(run: RunCoroutine, batch: Batch, settings: Settings) -> int:
    """How many operations one sample needs to last about ``settings.target_ns``."""
    _sample(run, batch, 1, settings)  # the first call may pay for imports and set-up
    k = 1
    while True:
        elapsed = max(_sample(run, batch, k, settings), 1)
        if elapsed >= settings.target_ns // 4 or k >= 1 << 24:
            return max(1, round(k * settings.target_ns / elapsed))
        k *= 4


@dataclass(frozen=True)
class Measurement:
    ns: float
    """Median ns per operation."""
    spread: float
    """Interquartile range of the samples relative to the median (0.05: ±2.5 %)."""
    samples: tuple[float, ...]
    """ns per operation of each round, in round order."""

    def __truediv__(self, other: Measurement) -> float:
        """The median of the per-round ratios.

        The samples of one round are taken within milliseconds of each other, so a slow spell
        of the machine (another process, frequency scaling) hits both sides of each ratio: the
        median of paired ratios is steadier than the ratio of the two medians.
        """
        return statistics.median(a / b for a, b in zip(self.samples, other.samples, strict=True))


def measure_interleaved(
    run: RunCoroutine, contenders: dict[str, Batch], settings: Settings
) -> dict[str, Measurement]:
    """Median ns per operation of each contender, sampled round-robin."""
    counts = {name: calibrate(run, batch, settings) for name, batch in contenders.items()}
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(settings.rounds):
        for name, batch in contenders.items():
            k = counts[name]
            samples[name].append(_sample(run, batch, k, settings) / k)
    results = {}
    for name, values in samples.items():
        median = statistics.median(values)
        q1, _, q3 = statistics.quantiles(values, n=4)
        results[name] = Measurement(median, (q3 - q1) / median, tuple(values))
    return results


def format_ns(ns: float) -> str:
    """``1234.5`` -> ``"1,235"``; below 100 ns keep one decimal."""
    return f"{ns:,.1f}" if ns < 100 else f"{ns:,.0f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
