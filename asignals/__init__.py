"""asignals: Django-style signals for async Python (asyncio, uvloop and trio)."""

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
