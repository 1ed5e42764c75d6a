"""The core internals the instrumentation is built on, imported here and nowhere else.

Receiver spans need each receiver's own start and end time, which only the core's private
dispatch entry can give without a cost on the uninstrumented send path. So an instrumented
send takes the core's own first steps (:func:`prepare`, ``asignals._signal._prepare``: the
arguments, the typed-signal check, ``wait_for`` waiters, the cached rows), wraps each receiver
in a timer, and runs them as the core does: sync receivers one after the other with the
core's :func:`failed` for their errors, as ``AsyncSignal._send`` does, and any others through
:func:`run` (``asignals._dispatch.run``), the core's dispatch entry.
"""

from __future__ import annotations

from asignals import background
from asignals._dispatch import failed, run
from asignals._receivers import ASYNC, INLINE, Row
from asignals._signal import AsyncSignal
from asignals._signal import _prepare as prepare

Options = tuple[bool, float | None, int | None] | None

__all__ = [
    "ASYNC",
    "INLINE",
    "AsyncSignal",
    "Options",
    "Row",
    "background",
    "failed",
    "prepare",
    "run",
]
