"""Django-style signals for async Python, on asyncio, uvloop and trio.

A signal lets the code where something happens announce it, and any number of receivers react,
without the sender importing them. Everything an application needs is importable from here:

- :class:`AsyncSignal` and the :func:`signal` decorator declare a signal (untyped, or typed
  from a spec function so that mypy and pyright check senders and receivers);
- :func:`receiver` (or :meth:`AsyncSignal.connect`) connects a receiver, sync or async, for
  every sender or, with ``sender=``, for one; :data:`ANY` spells "every sender";
- :func:`dispatcher` opens the :class:`Dispatcher` that runs background sends
  (``send_nowait``); :class:`BacklogFull` and :class:`DispatcherClosed` are its errors;
- :class:`WeakReceiverWarning` reports a weakly connected receiver lost before any send.

The built-in model and request signals are in :mod:`asignals.signals`, the test helpers in
:mod:`asignals.testing`, the adapters for SQLAlchemy, Tortoise ORM, ASGI apps and OpenTelemetry
in :mod:`asignals.contrib`, and the delivery of signals to other processes over a message broker
in :mod:`asignals.bridge`. Start with [Getting started](../getting-started.md).
"""

from ._receivers import WeakReceiverWarning
from ._signal import ANY, AsyncSignal, receiver, signal
from .background import BacklogFull, Dispatcher, DispatcherClosed, dispatcher

__version__ = "0.1.0"

__all__ = [
    "ANY",
    "AsyncSignal",
    "BacklogFull",
    "Dispatcher",
    "DispatcherClosed",
    "WeakReceiverWarning",
    "__version__",
    "dispatcher",
    "receiver",
    "signal",
]
