"""The core internals the instrumentation is built on, imported here and nowhere else.

Receiver spans need each receiver's own start and end time. The core's send loop runs the
receivers, instrumented or not: what the instrumentation changes is the rows the receiver
caches are filled with. It sets the core's one hook for that, ``asignals._signal._row_hook``
(None when off, so the uninstrumented send path does not change), which puts a timer in front
of each receiver with the receiver's own mode (sync, async, thread): the core then decides how
each one runs as it would for the receiver itself. A signal's caches are dropped whenever they
may hold rows filled under the other setting (:func:`drop_caches`).
"""

from __future__ import annotations

from typing import Any

from asignals import _signal as core
from asignals import background
from asignals._receivers import ASYNC, Row
from asignals._signal import AsyncSignal


def drop_caches(signal: AsyncSignal[..., Any]) -> None:
    """Forget the signal's cached rows: the next send from each sender fills them anew."""
    with signal._lock:
        signal._reset_caches()


__all__ = ["ASYNC", "AsyncSignal", "Row", "background", "core", "drop_caches"]
