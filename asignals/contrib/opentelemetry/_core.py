"""The core internals the instrumentation is built on, imported here and nowhere else.

Receiver spans need each receiver's own start and end time, which only the core's private
dispatch entry can give without a cost on the uninstrumented send path. So an instrumented
send does what the start of ``AsyncSignal._send`` does (:func:`prepare`: the arguments, the
typed-signal check, ``wait_for`` waiters, the cached rows), wraps each receiver in a timer, and
hands the rows to :func:`run` (``asignals._dispatch.run``), which runs them exactly as the core
runs the receivers of any send. Keep :func:`prepare` in step with ``AsyncSignal._send``.
"""

from __future__ import annotations

from typing import Any

from asignals import background
from asignals._dispatch import run
from asignals._receivers import ASYNC, Row
from asignals._reserved import RESERVED
from asignals._signal import AsyncSignal, _parse_call

Options = tuple[bool, float | None, int | None] | None


def prepare(
    signal: AsyncSignal[..., Any], method: str, args: tuple[Any, ...], named: dict[str, Any]
) -> tuple[Any, tuple[Row, ...], Options] | None:
    """The sender, rows and dispatch options of a send, or None when it reaches nobody.

    Raises what the core raises for bad arguments. On return ``named`` holds the receivers'
    keyword arguments, ``signal`` and ``sender`` included.
    """
    options = None
    if len(args) == 1 and RESERVED.isdisjoint(named):
        sender = args[0]
    else:
        sender, options = _parse_call(signal, method, args, named)
    names = signal._names
    if names is not None and named.keys() != names:
        signal._check(named)
    if signal._waiters:
        signal._offer(sender, named)
    if signal._silent:
        return None
    cls = type(sender)
    if cls is str or cls is int or cls is bytes:
        rows = signal._value_cache.get(sender)
    else:
        rows = signal._id_cache.get(id(sender))
    if rows is None:
        rows = signal._lookup(sender)
    named["signal"] = signal
    named["sender"] = sender
    if options is None and signal._options:
        options = (signal.concurrent, signal.timeout, signal.max_concurrency)
    return sender, rows, options


__all__ = ["ASYNC", "AsyncSignal", "Options", "Row", "background", "prepare", "run"]
