"""How a bridge hooks the sends of a signal it carries, without touching the core.

A bridged event must be encoded (and size-checked) *before* any local receiver runs, so that
a send that cannot cross fails having done nothing. A receiver cannot do that (it runs among
the others), so each bridged signal gets instance attributes ``send`` and ``send_robust`` that
shadow the class's methods: they encode for every bridge carrying the signal, then call the
class's method (looked up at call time, so instrumentation that wraps the class still runs).
The bridge's publishing receiver, connected as before, takes the encoded event and queues it.
It is a receiver so that the publish happens inside the send (tracing sees the send's span;
``send_robust`` reports a failed publish in its slot).

The wrapper hands the encoded event to the receiver through the bridge's list of outgoing
events, which the receiver matches by identity (signal, sender, every keyword value): not
through a context variable, because receivers share and copy back their context (Django
5.1+ semantics), so concurrent sends would see each other's values.

Background sends (``send_nowait``) reach ``signal.send_robust`` through the instance, so they
are encoded the same way. A send that bypasses the instance attribute (the class's method
called directly, a bound method captured before the bridge started) is still published: the
receiver encodes it itself, after the receivers before it ran.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from .._reserved import RESERVED
from .._shadowing import chain, shadow, unshadow

if TYPE_CHECKING:
    from ._bridge import Bridge

__all__ = ["Outgoing", "delivering", "install", "local_only", "same_objects", "uninstall"]

_MISSING: Any = object()
_ATTR = "_asignals_bridges"


class Outgoing:
    """One send's encoded event for one bridge, waiting for its publishing receiver.

    ``data`` is None for a local-only send: the receiver finds it and publishes nothing.
    """

    __slots__ = ("body", "data", "kwargs", "sender", "signal")

    def __init__(
        self,
        signal: Any,
        sender: Any,
        kwargs: dict[str, Any],
        body: dict[str, Any],
        data: bytes | None,
    ) -> None:
        self.signal = signal
        self.sender = sender
        self.kwargs = kwargs
        self.body = body
        self.data = data

    def matches(self, signal: Any, sender: Any, kwargs: dict[str, Any]) -> bool:
        """True when a receiver call is this send (identity of every object)."""
        if self.signal is not signal or self.sender is not sender:
            return False
        return same_objects(self.kwargs, kwargs)


def same_objects(mine: dict[str, Any], theirs: dict[str, Any]) -> bool:
    """True when both hold the same keys with the very same objects (identity, not equality).

    As many keys, and each of ours there with the same object: the same keys. A loop, not
    ``all()`` over a generator (twice as fast): it runs for every bridged send and delivery.
    """
    if len(mine) != len(theirs):
        return False
    for key, value in mine.items():  # noqa: SIM110 - all() over a generator is slower
        if theirs.get(key, _MISSING) is not value:
            return False
    return True


#: True around a send whose remote copy travels another way (an outbox writes it in the
#: transaction): its local receivers run, no bridge publishes it. Read once when the send
#: starts, so the sends its receivers make are published as usual.
local_only: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "asignals_bridge_local_only", default=False
)
#: The remote event being delivered in this context; the publishing receiver skips exactly it
#: (a receiver that sends the signal again, through ``signal.send``, makes a new event).
delivering: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "asignals_bridge_delivering", default=None
)


def _bridged(
    signal: Any,
    method: str,
    bridges: list[Bridge],
    inner: Callable[..., Coroutine[Any, Any, Any]] | None,
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """The instance attribute ``method`` of a bridged ``signal``.

    ``inner`` is the instance attribute it shadows (the pytest recorder's wrapper, say), called
    in place of the class's method so that both keep working; None calls the class's method.
    """
    cls: Any = signal.__class__

    def unbound_of() -> Callable[..., Coroutine[Any, Any, Any]]:
        if inner is None:
            method_of_class: Callable[..., Coroutine[Any, Any, Any]] = getattr(cls, method)
            return method_of_class
        shadowed = inner

        def without_signal(_signal: Any, *args: Any, **named: Any) -> Coroutine[Any, Any, Any]:
            return shadowed(*args, **named)

        return without_signal

    async def send(sender: Any = _MISSING, /, **named: Any) -> Any:
        unbound = unbound_of()
        by_keyword = sender is _MISSING
        if by_keyword:
            sender = named.get("sender", _MISSING)
        if sender is _MISSING or "signal" in named:
            return await unbound(signal, **named)  # the core explains what is wrong
        kwargs = named if RESERVED.isdisjoint(named) else _without_reserved(named)
        local = local_only.get()
        # Encode for every bridge before anything is queued or run: all or nothing.
        prepared = [(b, b._prepare(signal, sender, kwargs, local)) for b in bridges]
        for bridge, out in prepared:
            bridge._outgoing.append(out)
        local_token = local_only.set(False) if local else None
        try:
            if by_keyword:
                return await unbound(signal, **named)
            return await unbound(signal, sender, **named)
        finally:
            if local_token is not None:
                local_only.reset(local_token)
            for bridge, out in prepared:
                # Still there if the receiver never ran (an earlier receiver failed, ...).
                if out.signal is not None:
                    bridge._forget(out)

    send.__name__ = method
    send.__qualname__ = f"{cls.__qualname__}.{method}"
    send.__doc__ = getattr(cls, method).__doc__
    return send


def _without_reserved(named: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in named.items() if k not in RESERVED}


class _Hooked:
    """A bridged signal's bridges and the two wrappers that route its sends through them."""

    __slots__ = ("bridges", "wrappers")

    def __init__(self) -> None:
        self.bridges: list[Bridge] = []
        self.wrappers: dict[str, Callable[..., Any]] = {}


_METHODS = ("send", "send_robust")


def _hooked(signal: Any) -> _Hooked | None:
    for wrapper in chain(signal, "send"):
        hooked = wrapper.__dict__.get(_ATTR)
        if hooked is not None:
            return cast("_Hooked", hooked)
    return None


def install(signal: Any, bridge: Bridge) -> None:
    """Route ``signal``'s sends through ``bridge`` (and any other bridge already on it).

    A wrapper already on the instance (the pytest recorder's) stays in the chain: ours calls
    it instead of the class's method (see :mod:`asignals._shadowing`).
    """
    try:
        vars(signal)
    except TypeError:
        raise TypeError(f"{signal!r} cannot be bridged: it has no instance __dict__") from None
    hooked = _hooked(signal)
    if hooked is None:
        hooked = _Hooked()
        bridges = hooked.bridges

        def active() -> bool:
            return bool(bridges)

        for name in _METHODS:
            make = functools.partial(_bridged, signal, name, bridges)
            hooked.wrappers[name] = shadow(signal, name, make, active)
        hooked.wrappers["send"].__dict__[_ATTR] = hooked
    if bridge not in hooked.bridges:
        hooked.bridges.append(bridge)


def uninstall(signal: Any, bridge: Bridge) -> None:
    """Stop routing through ``bridge``; the last one out takes the wrappers off."""
    hooked = _hooked(signal)
    if hooked is None or bridge not in hooked.bridges:
        return
    hooked.bridges.remove(bridge)
    if not hooked.bridges:
        for name, wrapper in hooked.wrappers.items():
            unshadow(signal, name, wrapper)
