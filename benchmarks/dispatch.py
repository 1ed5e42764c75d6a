"""How fast is ``await signal.send(...)``? asignals beside its peers and the plain-Python limits.

Run ``python benchmarks/dispatch.py`` (about 4 minutes) or ``--quick`` (under a minute);
``--rows suspending:10,100 --no-growth`` measures only those cells and the peak memory per send.
Needs the ``benchmark`` extra: ``pip install -e '.[benchmark]'``.

For 0, 1, 10 and 100 receivers it reports the median time of one send, in nanoseconds, for

- **sync**: ``def receiver(sender, **kwargs): return i`` (each receiver returns a value, so a
  path that is fast only for receivers returning None does not count);
- **sender-filtered**: N sync receivers, each connected with its own sender, sending to one of them
  (one receiver runs);
- **async**: ``async def receiver(sender, **kwargs): return i`` (returns without suspending);
- **suspending**: ``async def receiver(sender, **kwargs): await anyio.sleep(0); return i``
  (suspends once).

``asignals (typed)`` is the same send on a typed signal (``AsyncSignal(spec=...)``), whose
keyword names are checked on every send: its ratio to ``asignals`` is that check's cost.

Every figure is followed by its ratio to the row's *limit*: what plain Python does with no library
at all (for N = 0 the limit is awaiting an empty ``async def noop(sender, **kwargs)`` with the
same arguments as the sends). A ratio is the median of the
per-round ratios, which a noisy machine disturbs less than the medians themselves. The peers do
not all promise the same thing; :data:`CONTRACTS` says how each one differs from asignals.

Method: for each row and N, every contender runs in the same process and the same event loop;
one sample is a batch of K sends timed inside one running coroutine (loop start-up excluded), K
chosen so that a sample lasts about 5 ms (2 ms with ``--quick``); samples are taken round-robin
over the contenders and the median of R of them is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
import tracemalloc
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import aiosignal
import anyio
import blinker
import django.dispatch  # type: ignore[import-untyped]
import psygnal
from django.conf import settings as django_settings  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Batch,
    Measurement,
    RunCoroutine,
    Settings,
    awaiting,
    calling,
    format_ns,
    markdown_table,
    measure_interleaved,
    use_cpu_clock,
)

try:
    import asignals
except ImportError:  # the core is not written yet: measure the others
    asignals = None  # type: ignore[assignment]

if not django_settings.configured:
    django_settings.configure()

Receiver = Callable[..., Any]
T = TypeVar("T")
SendFactory = Callable[["Case"], Batch]
Sleep = Callable[[float], Awaitable[None]]

SIGNAL = object()
"""What the plain-Python limits pass as ``signal=`` (a real signal passes itself)."""

HAS_EAGER_TASKS = sys.version_info >= (3, 12)


class Sender:
    """The sender of every unfiltered send (a class, as Django's model signals use)."""


# --------------------------------------------------------------------------------------------
# Rows: what the receivers do and how they are connected


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    sizes: tuple[int, ...]
    limit: str
    """The contender every figure of the row is divided by (N > 0)."""
    asynchronous: bool
    filtered: bool = False


ROWS = (
    Row("sync", "sync", (0, 1, 10, 100), "awaited for-loop", asynchronous=False),
    Row(
        "filtered",
        "sender-filtered",
        (1, 10, 100),
        "dict lookup",
        asynchronous=False,
        filtered=True,
    ),
    Row("async", "async", (0, 1, 10, 100), "sequential await", asynchronous=True),
    Row("suspending", "suspending", (0, 1, 10, 100), "gather", asynchronous=True),
)
EMPTY = "empty coroutine"
TYPED = "asignals (typed)"


def target_of(row: Row, n: int) -> float | None:
    """asignals' ratio to the cell's limit must not exceed this (issue 9's targets), if any."""
    if n == 0:
        return 1.5  # a send with no receivers: at most 1.5 empty-coroutine awaits
    if row.key == "sync":
        return 1.3 if n >= 10 else None
    if row.key == "filtered":
        return 2.0
    if row.key == "async":
        return 1.5
    if n >= 10:  # suspending: eager tasks on 3.12+ start receivers without a loop iteration
        return 0.85 if HAS_EAGER_TASKS else 0.95
    return None


@dataclass
class Case:
    """One (row, N) cell: the receivers, the senders they are connected to, the send's sender."""

    row: Row
    receivers: list[Receiver]
    senders: list[Any]
    """``senders[i]`` is what ``receivers[i]`` is connected to (``None``: any sender)."""
    sender: Any


def make_case(row: Row, n: int, sleep: Sleep) -> Case:
    def sync_receiver(i: int) -> Receiver:
        def receiver(sender: Any, **kwargs: Any) -> int:
            return i

        return receiver

    def async_receiver(i: int) -> Receiver:
        async def receiver(sender: Any, **kwargs: Any) -> int:
            return i

        return receiver

    def suspending_receiver(i: int) -> Receiver:
        async def receiver(sender: Any, **kwargs: Any) -> int:
            await sleep(0)
            return i

        return receiver

    factory = {
        "sync": sync_receiver,
        "filtered": sync_receiver,
        "async": async_receiver,
        "suspending": suspending_receiver,
    }[row.key]
    receivers = [factory(i) for i in range(n)]
    if row.filtered:
        senders: list[Any] = [type(f"Model{i}", (), {}) for i in range(n)]
        return Case(row, receivers, senders, senders[n // 2])
    return Case(row, receivers, [None] * n, Sender)


# --------------------------------------------------------------------------------------------
# Contenders. Each factory connects the case's receivers to a fresh signal and returns a batch
# that sends ``(case.sender, value=1)`` K times.


def asignals_send(case: Case) -> Batch:
    assert asignals is not None
    signal = asignals.AsyncSignal(name="bench")
    for receiver, sender in zip(case.receivers, case.senders, strict=True):
        signal.connect(receiver, sender=sender)
    return awaiting(signal.send, case.sender, value=1)


def bench_spec(sender: Any, *, value: int) -> Any:
    """The typed signal's spec: every send passes ``value=1``."""


def asignals_typed_send(case: Case) -> Batch:
    assert asignals is not None
    signal = asignals.AsyncSignal(name="bench", spec=bench_spec)
    for receiver, sender in zip(case.receivers, case.senders, strict=True):
        signal.connect(receiver, sender=sender)
    return awaiting(signal.send, case.sender, value=1)


def django_send(case: Case) -> Batch:
    signal = django.dispatch.Signal()
    for receiver, sender in zip(case.receivers, case.senders, strict=True):
        signal.connect(receiver, sender=sender)
    if case.row.asynchronous:
        return awaiting(signal.asend, case.sender, value=1)
    return calling(signal.send, case.sender, value=1)


def blinker_send(case: Case) -> Batch:
    signal = blinker.Signal()
    for receiver, sender in zip(case.receivers, case.senders, strict=True):
        signal.connect(receiver, sender=blinker.ANY if sender is None else sender)
    if case.row.asynchronous:
        # All receivers are async, so send_async needs no _sync_wrapper.
        return awaiting(signal.send_async, case.sender, value=1)
    return calling(signal.send, case.sender, value=1)


def psygnal_emit(case: Case) -> Batch:
    signal = psygnal.SignalInstance((object,))
    for receiver in case.receivers:
        signal.connect(receiver)
    return calling(signal.emit, case.sender)


def aiosignal_send(case: Case) -> Batch:
    signal: aiosignal.Signal[Any] = aiosignal.Signal(owner=None)
    signal.extend(case.receivers)
    signal.freeze()
    return awaiting(signal.send, case.sender, value=1)


# The plain-Python limits: no library, just the loop a signal has to run.


def for_loop(case: Case) -> Batch:
    receivers = case.receivers

    def send(sender: Any, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        results = []
        for receiver in receivers:
            results.append((receiver, receiver(signal=SIGNAL, sender=sender, **kwargs)))
        return results

    return calling(send, case.sender, value=1)


def async_for_loop(case: Case) -> Batch:
    receivers = case.receivers

    async def send(sender: Any, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        results = []
        for receiver in receivers:
            results.append((receiver, receiver(signal=SIGNAL, sender=sender, **kwargs)))
        return results

    return awaiting(send, case.sender, value=1)


def dict_lookup(case: Case) -> Batch:
    by_sender: dict[Any, list[Receiver]] = {}
    for receiver, sender in zip(case.receivers, case.senders, strict=True):
        by_sender.setdefault(sender, []).append(receiver)

    def send(sender: Any, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        results = []
        for receiver in by_sender.get(sender, ()):
            results.append((receiver, receiver(signal=SIGNAL, sender=sender, **kwargs)))
        return results

    return calling(send, case.sender, value=1)


def sequential_await(case: Case) -> Batch:
    receivers = case.receivers

    async def send(sender: Any, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        results = []
        for receiver in receivers:
            results.append((receiver, await receiver(signal=SIGNAL, sender=sender, **kwargs)))
        return results

    return awaiting(send, case.sender, value=1)


def gather(case: Case) -> Batch:
    receivers = case.receivers

    async def send(sender: Any, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        results = await asyncio.gather(
            *[receiver(signal=SIGNAL, sender=sender, **kwargs) for receiver in receivers]
        )
        return list(zip(receivers, results, strict=True))

    return awaiting(send, case.sender, value=1)


def task_group(case: Case) -> Batch:
    receivers = case.receivers

    async def send(sender: Any, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(receiver(signal=SIGNAL, sender=sender, **kwargs))
                for receiver in receivers
            ]
        return [(receiver, task.result()) for receiver, task in zip(receivers, tasks, strict=True)]

    return awaiting(send, case.sender, value=1)


def eager_task_group(case: Case) -> Batch:
    """``asyncio.TaskGroup`` with the loop's task factory set to ``asyncio.eager_task_factory``."""
    batch = task_group(case)

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> Any:
        # uvloop passes eager_start=None on 3.13, which asyncio's factory refuses there.
        options.pop("eager_start", None)
        return asyncio.eager_task_factory(loop, coro, **options)  # type: ignore[attr-defined]

    async def eager_batch(k: int) -> int:
        loop = asyncio.get_running_loop()
        previous = loop.get_task_factory()
        loop.set_task_factory(factory)
        try:
            return await batch(k)
        finally:
            loop.set_task_factory(previous)

    return eager_batch


def anyio_task_group(case: Case) -> Batch:
    receivers = case.receivers

    async def send(sender: Any, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        results: list[Any] = [None] * len(receivers)

        async def run(index: int, receiver: Receiver) -> None:
            results[index] = await receiver(signal=SIGNAL, sender=sender, **kwargs)

        async with anyio.create_task_group() as group:
            for index, receiver in enumerate(receivers):
                group.start_soon(run, index, receiver)
        return list(zip(receivers, results, strict=True))

    return awaiting(send, case.sender, value=1)


def empty_coroutine(case: Case) -> Batch:
    # It takes the same arguments as the sends: passing them is not the library's cost.
    async def noop(sender: Any, **kwargs: Any) -> None:
        pass

    return awaiting(noop, case.sender, value=1)


CONTRACTS = {
    "asignals": "concurrent (task group), results in connection order, sender filtering",
    "Django send": "same contract for sync receivers",
    "Django asend": "concurrent (gather on 5.x, TaskGroup on 6.x), same contract",
    "blinker send": "same contract for sync receivers (receiver(sender, **kw), no signal=)",
    "blinker send_async": "sequential: awaits one receiver after the other",
    "psygnal emit": "sync only, no return values, no sender filtering, positional args only",
    "aiosignal": "sequential, no return values, no sender filtering, async receivers only",
}

SYNC_COLUMNS: dict[str, SendFactory] = {
    "asignals": asignals_send,
    TYPED: asignals_typed_send,
    "Django send": django_send,
    "blinker send": blinker_send,
    "psygnal emit": psygnal_emit,
    "for-loop": for_loop,
    "awaited for-loop": async_for_loop,
    "dict lookup": dict_lookup,
    EMPTY: empty_coroutine,
}
ASYNC_COLUMNS: dict[str, SendFactory] = {
    "asignals": asignals_send,
    TYPED: asignals_typed_send,
    "Django asend": django_send,
    "blinker send_async": blinker_send,
    "aiosignal": aiosignal_send,
    "sequential await": sequential_await,
    "gather": gather,
    "TaskGroup": task_group,
    "TaskGroup (eager)": eager_task_group,
    "AnyIO TG": anyio_task_group,
    EMPTY: empty_coroutine,
}
PEERS = {"Django send", "blinker send", "psygnal emit", "Django asend", "blinker send_async"}
PEERS |= {"aiosignal"}


def contenders_for(row: Row, n: int) -> list[str]:
    """The columns measured for this cell."""
    names = list(ASYNC_COLUMNS if row.asynchronous else SYNC_COLUMNS)
    if row.filtered:
        names = ["asignals", "Django send", "blinker send", row.limit]
    skip = {"dict lookup"} if not row.filtered else set()
    if asignals is None:
        skip |= {"asignals", TYPED}
    if row.key == "suspending":
        skip.add(TYPED)
    if not HAS_EAGER_TASKS:
        skip.add("TaskGroup (eager)")
    if n > 0:
        skip.add(EMPTY)
    return [name for name in names if name not in skip]


# --------------------------------------------------------------------------------------------
# Event loops


@dataclass(frozen=True)
class Loop:
    name: str
    factory: Callable[[], asyncio.AbstractEventLoop] | None


def loops_available(wanted: list[str]) -> list[Loop]:
    loops = []
    for name in wanted:
        if name == "asyncio":
            loops.append(Loop("asyncio", None))
        if name == "uvloop":
            import uvloop

            loops.append(Loop(f"uvloop {metadata.version('uvloop')}", uvloop.new_event_loop))
    return loops


@contextmanager
def running(loop: Loop) -> Iterator[RunCoroutine]:
    with asyncio.Runner(loop_factory=loop.factory) as runner:
        yield runner.run


# --------------------------------------------------------------------------------------------
# Speed


Results = dict[tuple[str, int], dict[str, Measurement]]
"""(row key, N) -> contender -> median ns per send."""


Selection = dict[str, tuple[int, ...]]
"""Row key -> the Ns to measure (``--rows``); every row and N when empty."""


def selected(selection: Selection) -> list[tuple[Row, int]]:
    return [
        (row, n)
        for row in ROWS
        for n in row.sizes
        if not selection or n in selection.get(row.key, ())
    ]


def parse_rows(value: str) -> tuple[str, tuple[int, ...]]:
    """``suspending:10,100`` -> ("suspending", (10, 100)); a bare key means all its Ns."""
    key, _, sizes = value.partition(":")
    row = next((row for row in ROWS if row.key == key), None)
    if row is None:
        raise argparse.ArgumentTypeError(f"no row {key!r}; rows: {[r.key for r in ROWS]}")
    ns = tuple(int(n) for n in sizes.split(",")) if sizes else row.sizes
    if not set(ns) <= set(row.sizes):
        raise argparse.ArgumentTypeError(f"row {key!r} has N in {row.sizes}, not {ns}")
    return key, ns


def measure_grid(
    run: RunCoroutine, settings: Settings, sleep: Sleep, selection: Selection
) -> Results:
    results: Results = {}
    for row, n in selected(selection):
        case = make_case(row, n, sleep)
        columns = ASYNC_COLUMNS if row.asynchronous else SYNC_COLUMNS
        contenders = {name: columns[name](case) for name in contenders_for(row, n)}
        results[row.key, n] = measure_interleaved(run, contenders, settings)
    return results


def limit_of(row: Row, n: int) -> str:
    return row.limit if n > 0 else EMPTY


def grid_tables(results: Results) -> str:
    out = []
    for asynchronous, columns in ((False, SYNC_COLUMNS), (True, ASYNC_COLUMNS)):
        rows = [row for row in ROWS if row.asynchronous is asynchronous]
        cells = [
            (row, n, results[row.key, n])
            for row in rows
            for n in row.sizes
            if (row.key, n) in results
        ]
        if not cells:
            continue
        shown = [name for name in columns if any(name in cell for _, _, cell in cells)]
        table = []
        for row, n, cell in cells:
            limit = cell[limit_of(row, n)]
            line = [row.title, str(n)]
            for name in shown:
                if name not in cell:
                    line.append("")
                elif name == limit_of(row, n):
                    line.append(f"**{format_ns(limit.ns)}**")
                else:
                    line.append(f"{format_ns(cell[name].ns)} ({cell[name] / limit:.2f}x)")
            table.append(line)
        spreads = sorted(m.spread for _, _, cell in cells for m in cell.values())
        kind = "async" if asynchronous else "sync"
        out.append(f"{kind} receivers — ns per send (ratio to the row's **limit**):\n")
        out.append(markdown_table(["row", "N", *shown], table))
        out.append(
            f"\nsample spread (interquartile range / median): typically "
            f"{statistics.median(spreads):.0%}, at worst {spreads[-1]:.0%}\n"
        )
    return "\n".join(out)


def target_checks(results: Results) -> list[str]:
    if asignals is None:
        return ["asignals is not importable: no targets checked."]
    lines = []
    for row in ROWS:
        for n in row.sizes:
            if (row.key, n) not in results:
                continue
            cell = results[row.key, n]
            limit = limit_of(row, n)
            target = target_of(row, n)
            ratio = cell["asignals"] / cell[limit]
            verdict = "info" if target is None else "PASS" if ratio <= target else "FAIL"
            wanted = "" if target is None else f" (target ≤ {target}x)"
            lines.append(f"- {verdict} {row.title} N={n}: {ratio:.2f}x {limit}{wanted}")
            if row.key == "sync" and n >= 10:
                django = cell["asignals"] / cell["Django send"]
                verdict = "PASS" if django < 1 else "FAIL"
                lines.append(
                    f"- {verdict} sync N={n}: {django:.2f}x Django's inline send (target < 1x)"
                )
            if TYPED in cell:
                cost = cell[TYPED] / cell["asignals"] - 1
                lines.append(
                    f"- {'PASS' if cost <= 0.03 or n != 10 else 'FAIL'} {row.title} N={n}: "
                    f"typed signal's keyword check costs {cost:+.1%}"
                    + (" (target ≤ +3.0% at N=10)" if n == 10 else "")
                )
    beaten = []
    for (key, n), cell in results.items():
        ours = cell["asignals"].ns
        for peer in sorted(PEERS & cell.keys()):
            if cell[peer].ns <= ours:
                beaten.append(
                    f"  - {key} N={n}: {peer} {format_ns(cell[peer].ns)} vs asignals "
                    f"{format_ns(ours)} ({CONTRACTS[peer]})"
                )
    if beaten:
        lines.append("- peers as fast as asignals or faster (ns per send):")
        lines.extend(beaten)
    else:
        lines.append("- PASS faster than every peer in every cell")
    return lines


# --------------------------------------------------------------------------------------------
# Memory


async def _peak_per_send(batch: Batch, sends: int) -> int:
    await batch(100)  # warm caches and free lists
    peaks = []
    for _ in range(sends):
        # Let the previous send's leftovers go first (done callbacks the loop has yet to run):
        # counted in ``before``, their release during this send would hide part of its peak.
        for _ in range(3):
            await asyncio.sleep(0)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        await batch(1)
        peaks.append(tracemalloc.get_traced_memory()[1] - before)
    return round(statistics.median(peaks))


@dataclass(frozen=True)
class Growth:
    blocks: int
    """Memory blocks still allocated after the sends (GC disabled), compared with before."""
    collected: int
    """What ``gc.collect()`` found afterwards: objects kept alive only by reference cycles."""
    blocks_after_collect: int


async def _growth(batch: Batch, sends: int) -> Growth:
    await batch(1000)
    gc.collect()
    before = sys.getallocatedblocks()
    await batch(sends)
    after = sys.getallocatedblocks()
    collected = gc.collect()
    return Growth(after - before, collected, sys.getallocatedblocks() - before)


def measure_peaks(run: RunCoroutine, sleep: Sleep) -> list[str]:
    suspending = next(row for row in ROWS if row.key == "suspending")
    names = [name for name in contenders_for(suspending, 10) if name != "TaskGroup (eager)"]
    peaks = {}
    gc.disable()
    tracemalloc.start()
    try:
        for name in [*names, EMPTY]:
            case = make_case(suspending, 10, sleep)
            peaks[name] = run(_peak_per_send(ASYNC_COLUMNS[name](case), 51))
    finally:
        tracemalloc.stop()
        gc.enable()
    out = [
        "Peak memory during one send to 10 suspending receivers (tracemalloc, median of 51 "
        "sends; the empty coroutine is the harness's own floor):\n",
        markdown_table(["contender", "peak bytes"], [[k, f"{v:,}"] for k, v in peaks.items()]),
    ]
    if "asignals" in peaks:
        ours, theirs = peaks["asignals"], peaks["gather"]
        verdict = "PASS" if ours <= theirs else "FAIL"
        out.append(f"\n- {verdict} peak per send ≤ asyncio.gather's: {ours:,} B vs {theirs:,} B")
    return out


def measure_growth(run: RunCoroutine, sends: dict[bool, int], sleep: Sleep) -> list[str]:
    suspending = next(row for row in ROWS if row.key == "suspending")
    probes = [("asignals", row, 100 if row.filtered else 10) for row in ROWS]
    probes.append(("TaskGroup", suspending, 10))
    table = []
    verdicts = []
    for name, row, n in probes:
        if name == "asignals" and asignals is None:
            continue
        columns = ASYNC_COLUMNS if row.asynchronous else SYNC_COLUMNS
        count = sends[row.asynchronous]
        case = make_case(row, n, sleep)  # holds the (weakly connected) receivers
        batch = columns[name](case)
        gc.collect()
        gc.disable()
        started = time.perf_counter()
        try:
            growth = run(_growth(batch, count))
        finally:
            gc.enable()
        table.append(
            [
                f"{name} {row.title} N={n}",
                f"{count:,}",
                f"{growth.blocks:,}",
                f"{growth.collected:,}",
                f"{growth.blocks_after_collect:,}",
                f"{time.perf_counter() - started:.1f} s",
            ]
        )
        if name == "asignals":
            ok = growth.blocks_after_collect < 100 and growth.collected < 10
            verdicts.append(
                f"- {'PASS' if ok else 'FAIL'} no growth, no cycles ({row.title} N={n}): "
                f"{growth.blocks_after_collect:+,} blocks, {growth.collected} objects in cycles "
                "(pass: < 100 blocks and < 10 objects)"
            )
    header = ["sends of", "sends", "blocks grown", "gc.collect() found", "after collect", "took"]
    return [
        "Growth with the GC disabled: Python memory blocks allocated after the sends minus "
        "before (sys.getallocatedblocks; includes the interpreter's free lists), the objects "
        "gc.collect() then finds in reference cycles, and the blocks still grown after that "
        "collection (which also empties the free lists):\n",
        markdown_table(header, table),
        "",
        *verdicts,
    ]


# --------------------------------------------------------------------------------------------
# trio (asignals only)


def measure_trio(settings: Settings, sizes: tuple[int, ...], selection: Selection) -> str:
    import trio

    def run(coroutine: Coroutine[Any, Any, T], /) -> T:
        async def body() -> T:
            return await coroutine

        return trio.run(body)

    columns: dict[str, SendFactory] = {
        "asignals": asignals_send,
        "for-loop": for_loop,
        "sequential await": sequential_await,
        "AnyIO TG": anyio_task_group,
        EMPTY: empty_coroutine,
    }
    limits = {"sync": "for-loop", "async": "sequential await", "suspending": "AnyIO TG"}
    table = []
    for row in ROWS:
        if row.filtered:
            continue
        for n in sizes:
            if selection and n not in selection.get(row.key, ()):
                continue
            case = make_case(row, n, anyio.sleep)
            limit = limits[row.key] if n else EMPTY
            cell = measure_interleaved(
                run, {name: columns[name](case) for name in ("asignals", limit)}, settings
            )
            ours, theirs = cell["asignals"], cell[limit]
            ratio = ours / theirs
            target = 2.0 if row.key == "async" and n else None
            verdict = "" if target is None else " PASS" if ratio <= target else " FAIL"
            table.append(
                [
                    row.title,
                    str(n),
                    format_ns(ours.ns),
                    f"{limit} {format_ns(theirs.ns)}",
                    f"{ratio:.2f}x{verdict}",
                ]
            )
    header = ["row", "N", "asignals", "limit", "ratio (async target ≤ 2x)"]
    return (
        "asignals only; the limit for suspending receivers is an AnyIO task group (a trio "
        "nursery). ns per send:\n\n" + markdown_table(header, table)
    )


def versions() -> str:
    names = ["asyncsignals", "anyio", "django", "blinker", "psygnal", "aiosignal", "uvloop", "trio"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples (< 1 min)")
    parser.add_argument(
        "--loop",
        action="append",
        choices=["asyncio", "uvloop", "trio"],
        help="event loops to run (default: asyncio, uvloop and, for asignals only, trio)",
    )
    parser.add_argument(
        "--sleep",
        choices=["anyio", "asyncio"],
        default="anyio",
        help="what suspending receivers await: anyio.sleep(0) (default) or asyncio.sleep(0)",
    )
    parser.add_argument(
        "--no-gc",
        action="store_true",
        help="disable the cyclic GC while a sample runs (default: enabled, collected between)",
    )
    parser.add_argument(
        "--cpu-clock",
        action="store_true",
        help="time samples with the thread's CPU time (thread_time_ns), not perf_counter_ns: "
        "steadier on a machine where other processes compete for the CPUs",
    )
    parser.add_argument(
        "--rows",
        action="append",
        type=parse_rows,
        metavar="ROW[:N,...]",
        help="measure only this row (sync, filtered, async, suspending), at these N "
        "(default: all of them); repeat for several rows, e.g. --rows async:0 "
        "--rows suspending:10,100",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory section")
    parser.add_argument(
        "--no-growth",
        action="store_true",
        help="in the memory section, measure the peak per send only, not the growth over "
        "many sends (which takes minutes)",
    )
    parser.add_argument(
        "--chart",
        metavar="PATH",
        help="also draw each loop's grid (PNG or SVG by suffix; the loop's name is added "
        "before the suffix when several loops run); needs matplotlib",
    )
    args = parser.parse_args()
    selection: Selection = dict(args.rows or ())
    use_cpu_clock(args.cpu_clock)
    if asignals is not None:
        # In the sender-filtered rows most receivers are, by design, never reached by a send;
        # asignals rightly warns when such a weak receiver is collected. Not news here.
        warnings.simplefilter("ignore", asignals.WeakReceiverWarning)

    wanted = args.loop or ["asyncio", "uvloop", "trio"]
    settings = Settings(
        rounds=7 if args.quick else 15,
        target_ns=2_000_000 if args.quick else 5_000_000,
        gc_during_samples=not args.no_gc,
    )
    sleep: Sleep = anyio.sleep if args.sleep == "anyio" else asyncio.sleep
    # sends for the growth check, sync and async receivers
    growth_sends = {False: 100_000, True: 10_000} if args.quick else {False: 10**6, True: 10**5}
    started = time.perf_counter()
    # Everything imported so far lives until exit: keep it out of the collector's way, so the
    # gc.collect() between samples takes microseconds, not tens of milliseconds.
    gc.collect()
    gc.freeze()

    print("# asignals dispatch benchmark\n")
    print(f"- Python {platform.python_version()} ({platform.python_implementation()}), ", end="")
    print(f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"- {versions()}")
    load = os.getloadavg()[0]
    print(f"- load average at start: {load:.2f}", end="")
    busy = load > 0.5 * (os.cpu_count() or 1)
    print(" (other processes are busy: expect noisier figures)" if busy else "")
    clock = "thread_time_ns (CPU time)" if args.cpu_clock else "perf_counter_ns"
    print(
        f"- clock: {clock}; each figure: median of {settings.rounds} interleaved samples of "
        f"~{settings.target_ns / 1e6:g} ms; cyclic GC "
        f"{'enabled' if settings.gc_during_samples else 'disabled'} during samples, "
        "gc.collect() between them (start-up objects frozen with gc.freeze()); ratios are "
        "medians of per-round ratios"
    )
    print(
        f"- suspending receivers await {args.sleep}.sleep(0) for every contender; "
        "each send passes a sender and value=1"
    )
    if asignals is None:
        print("- asignals is not importable yet: its column is missing")
    if not HAS_EAGER_TASKS:
        print("- Python < 3.12: no asyncio eager tasks, so no 'TaskGroup (eager)' column")
    print("- how the peers' contracts differ:")
    for name, contract in CONTRACTS.items():
        print(f"  - {name}: {contract}")

    for loop in loops_available(wanted):
        with running(loop) as run:
            print(f"\n## {loop.name}\n")
            results = measure_grid(run, settings, sleep, selection)
            print(grid_tables(results))
            print(f"Targets ({loop.name}):\n")
            print("\n".join(target_checks(results)))
            if args.chart and not selection:
                from _charts import chart_path, grid_chart

                path = chart_path(args.chart, loop.name, len(set(wanted) - {"trio"}) > 1)
                command = f"python benchmarks/dispatch.py {' '.join(sys.argv[1:])}"
                title = f"ns per send, {loop.name}"
                grid_chart(
                    path,
                    results,
                    ROWS,
                    peers=PEERS,
                    limit_of=limit_of,
                    title=title,
                    caption=f"{command} · Python {platform.python_version()}, "
                    f"{os.cpu_count()} CPUs · {time.strftime('%Y-%m-%d')}",
                )
                print(f"\nchart: {path}")
            if not args.no_memory:
                print(f"\n### Memory ({loop.name})\n")
                print("\n".join(measure_peaks(run, sleep)))
                if not args.no_growth:
                    print()
                    print("\n".join(measure_growth(run, growth_sends, sleep)))
        sys.stdout.flush()

    if "trio" in wanted and asignals is not None:
        print("\n## trio\n")
        print(measure_trio(settings, (0, 1, 10), selection))

    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
