"""blinker's ``Signal`` API (1.9) over asignals, for running blinker's signal tests.

Translation only: every call goes to an :class:`asignals.AsyncSignal`, which does all the
dispatching. blinker's sync ``send`` runs asignals' async one to completion on an event loop of
its own (``BACKEND``: asyncio, uvloop or trio); ``send_async`` awaits asignals' send with
``concurrent=False``, blinker's one-by-one order. Where asignals differs from blinker on purpose,
this layer does not hide it (the tests mark those cases).

Only the API the two share is here: no ``receiver_connected``/``receiver_disconnected``
signals, ``Namespace`` or ``doc=``, which asignals does not have.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import anyio

import asignals

ANY = asignals.ANY

# (name, options) as the suite's anyio_backend fixture gives them; the tests set it per test.
BACKEND: tuple[str, dict[str, Any]] = ("asyncio", {})

Results = list[tuple[Callable[..., Any], Any]]
Receiver = Callable[..., Any]


class Signal:
    """``blinker.Signal``: the same methods, each handed to one ``AsyncSignal``."""

    def __init__(self, name: str = "blinker_signal") -> None:
        self.signal = asignals.AsyncSignal(name=name)

    def __repr__(self) -> str:
        return repr(self.signal)

    def connect(self, receiver: Receiver, sender: Any = ANY, weak: bool = True) -> Receiver:
        return self.signal.connect(receiver, sender, weak)

    def connect_via(self, sender: Any, weak: bool = False) -> Callable[[Receiver], Receiver]:
        # blinker's decorator connects strongly by default, unlike connect().
        def decorator(fn: Receiver) -> Receiver:
            return self.signal.connect(fn, sender, weak)

        return decorator

    def connected_to(
        self, receiver: Receiver, sender: Any = ANY
    ) -> AbstractContextManager[Receiver]:
        return self.signal.connected_to(receiver, sender)

    def disconnect(self, receiver: Receiver, sender: Any = ANY) -> None:
        self.signal.disconnect(receiver, sender)

    def muted(self) -> AbstractContextManager[None]:
        return self.signal.muted()

    def send(self, sender: Any = None, /, **kwargs: Any) -> Results:
        name, options = BACKEND
        run = functools.partial(self.signal.send, sender, **kwargs)
        return anyio.run(run, backend=name, backend_options=options)

    async def send_async(
        self,
        sender: Any = None,
        /,
        *,
        _sync_wrapper: Callable[[Receiver], Callable[..., Awaitable[Any]]] | None = None,
        **kwargs: Any,
    ) -> Results:
        # asignals calls sync receivers inline in an async send: it needs no wrapper for them.
        return await self.signal.send(sender, concurrent=False, **kwargs)

    def has_receivers_for(self, sender: Any) -> bool:
        return self.signal.has_listeners(sender)

    def receivers_for(self, sender: Any) -> Iterator[Receiver]:
        return iter(self.signal.receivers_for(sender))

    @property
    def receivers(self) -> dict[int, Receiver]:
        # blinker's maps a receiver's id to it (or to a weak reference): the tests read values.
        return {id(r): r for r in self.signal.receivers}


def NamedSignal(name: str) -> Signal:
    """``blinker.NamedSignal``: asignals' signals take their name as an argument."""
    return Signal(name)
