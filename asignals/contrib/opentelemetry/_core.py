"""The core internals the instrumentation is built on, imported here and nowhere else.

Receiver spans need each receiver's own start and end time, which only the core's private
dispatch entry can give without a cost on the uninstrumented send path: the instrumented send
resolves the signal's rows itself, wraps each receiver in a timer and hands the rows to
:func:`run`, exactly as ``AsyncSignal.send`` does once a receiver needs awaiting.
"""

from __future__ import annotations

from typing import Any, Final

from asignals import background
from asignals._receivers import ASYNC, THREAD, Row
from asignals._reserved import RESERVED
from asignals.dispatch import run
from asignals.signal import _MISSING, AsyncSignal, _parse_call

MISSING: Final[Any] = _MISSING


def parse_call(
    signal: AsyncSignal, method: str, sender: Any, named: dict[str, Any]
) -> tuple[Any, tuple[bool, float | None, int | None] | None]:
    """The sender and per-call dispatch options of a send, removed from ``named``."""
    return _parse_call(signal, method, sender, (), named)


def rows_for(signal: AsyncSignal, sender: Any) -> tuple[Row, ...]:
    """The signal's cached ``(getter, mode, entry)`` rows for ``sender``, as a send reads them."""
    cls = type(sender)
    if cls is str or cls is int or cls is bytes:
        rows = signal._value_cache.get(sender)
    else:
        rows = signal._id_cache.get(id(sender))
    return signal._lookup(sender) if rows is None else rows


def signal_options(signal: AsyncSignal) -> tuple[bool, float | None, int | None] | None:
    """The signal's own dispatch options, or None when it uses the defaults."""
    if not signal._options:
        return None
    return (signal.concurrent, signal.timeout, signal.max_concurrency)


def is_silent(signal: AsyncSignal) -> bool:
    """No receiver is connected, or the signal is muted: the send returns ``[]`` at once."""
    return signal._silent


__all__ = [
    "ASYNC",
    "MISSING",
    "RESERVED",
    "THREAD",
    "AsyncSignal",
    "Row",
    "background",
    "is_silent",
    "parse_call",
    "rows_for",
    "run",
    "signal_options",
]
