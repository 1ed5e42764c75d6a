"""Django's ``django.dispatch`` API (5.2) over asignals, for running Django's dispatcher tests.

Translation only: every call goes to an :class:`asignals.AsyncSignal`, which does all the
dispatching. Django's sync ``send``/``send_robust`` run asignals' async ones to completion on
an event loop of their own (``BACKEND``: asyncio, uvloop or trio), as a sync Django caller
would see them; ``asend``/``asend_robust`` await them on the running loop. Where asignals
differs from Django on purpose, this layer does not hide it (the tests mark those cases).

Not translated: Django's ``sender_receivers_cache`` and ``_clear_dead_receivers``. asignals'
per-sender cache is always on and evicts dead senders and receivers by itself, so there is no
dict to show and nothing to clear by hand; the dispatcher tests use neither.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import anyio

import asignals

# (name, options) as the suite's anyio_backend fixture gives them; the tests set it per test.
BACKEND: tuple[str, dict[str, Any]] = ("asyncio", {})

Results = list[tuple[Callable[..., Any], Any]]
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class Signal:
    """``django.dispatch.Signal``: the same methods, each handed to one ``AsyncSignal``."""

    def __init__(self, use_caching: bool = False) -> None:
        self.signal = asignals.AsyncSignal(name="django_signal", use_caching=use_caching)

    def connect(
        self,
        receiver: Callable[..., Any],
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
    ) -> None:
        # Django's connect returns None; asignals' returns the receiver.
        self.signal.connect(receiver, sender, weak, dispatch_uid)

    def disconnect(
        self,
        receiver: Callable[..., Any] | None = None,
        sender: Any = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        return self.signal.disconnect(receiver, sender, dispatch_uid)

    def has_listeners(self, sender: Any = None) -> bool:
        return self.signal.has_listeners(sender)

    @property
    def receivers(self) -> list[Callable[..., Any]]:
        # Django's holds (key, weakref, is_async) tuples; the tests only count them.
        return self.signal.receivers

    def send(self, sender: Any, **named: Any) -> Results:
        return _run(self.signal.send, sender, named)

    def send_robust(self, sender: Any, **named: Any) -> Results:
        return _run(self.signal.send_robust, sender, named)

    async def asend(self, sender: Any, **named: Any) -> Results:
        return await self.signal.send(sender, **named)

    async def asend_robust(self, sender: Any, **named: Any) -> Results:
        return await self.signal.send_robust(sender, **named)


def _run(method: Callable[..., Awaitable[Results]], sender: Any, named: dict[str, Any]) -> Results:
    name, options = BACKEND
    return anyio.run(
        functools.partial(method, sender, **named), backend=name, backend_options=options
    )


def receiver(signal: Signal | list[Signal] | tuple[Signal, ...], **kwargs: Any) -> Decorator:
    """``django.dispatch.receiver``: asignals' decorator, given the wrapped signals."""
    signals = signal if isinstance(signal, list | tuple) else [signal]
    connect: Decorator = asignals.receiver([s.signal for s in signals], **kwargs)
    return connect
