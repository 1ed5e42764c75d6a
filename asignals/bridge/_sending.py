"""How a bridge hooks the sends of a signal it carries, without touching the core.

A bridged event must be encoded (and size-checked) *before* any local receiver runs, so that
a send that cannot cross fails having done nothing. A receiver cannot do that (it runs among
the others), so each bridged signal gets instance attributes ``send`` and ``send_robust`` that
shadow the class's methods: they encode for every bridge carrying the signal, then call the
class's method (looked up at call time, so instrumentation that wraps the class still runs).
The bridge's publishing receiver, connected as before, picks the encoded event up from a
context variable and queues it. It is a receiver so that the publish happens inside the send
(tracing sees the send's span; ``send_robust`` reports a failed publish in its slot).

Background sends (``send_nowait``) reach ``signal.send_robust`` through the instance, so they
are encoded the same way. A send that bypasses the instance attribute (a class method called
directly, a bound method captured before the bridge started) is still published: the receiver
encodes it itself, after the receivers before it ran.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .._reserved import RESERVED

if TYPE_CHECKING:
    from ._bridge import Bridge

__all__ = ["Outgoing", "delivering", "install", "outgoing", "uninstall"]

_MISSING: Any = object()
_ATTR = "_asignals_bridges"


class Outgoing:
    """One send's encoded event for one bridge; ``next`` links the other bridges' copies."""

    __slots__ = ("body", "bridge", "data", "next", "signal")

    def __init__(
        self, bridge: Bridge, signal: Any, body: dict[str, Any], data: bytes, nxt: Outgoing | None
    ) -> None:
        self.bridge = bridge
        self.signal = signal
        self.body = body
        self.data: bytes | None = data
        self.next = nxt


#: The events encoded for the send running in this context (None: not sent through a bridge).
outgoing: contextvars.ContextVar[Outgoing | None] = contextvars.ContextVar(
    "asignals_bridge_outgoing", default=None
)
#: The remote event being delivered in this context; the publishing receiver skips exactly it.
delivering: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "asignals_bridge_delivering", default=None
)


def _bridged(
    signal: Any, method: str, bridges: list[Bridge]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def send(sender: Any = _MISSING, /, **named: Any) -> Any:
        unbound = getattr(type(signal), method)
        by_keyword = sender is _MISSING
        if by_keyword:
            sender = named.get("sender", _MISSING)
        if sender is _MISSING or "signal" in named:
            return await unbound(signal, **named)  # the core explains what is wrong
        kwargs = named if RESERVED.isdisjoint(named) else _without_reserved(named)
        out: Outgoing | None = None
        for bridge in reversed(bridges):
            out = bridge._prepare(signal, sender, kwargs, out)
        token = outgoing.set(out)
        try:
            if by_keyword:
                return await unbound(signal, **named)
            return await unbound(signal, sender, **named)
        finally:
            outgoing.reset(token)

    send.__name__ = method
    send.__qualname__ = f"{type(signal).__qualname__}.{method}"
    send.__doc__ = getattr(type(signal), method).__doc__
    return send


def _without_reserved(named: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in named.items() if k not in RESERVED}


def install(signal: Any, bridge: Bridge) -> None:
    """Route ``signal``'s sends through ``bridge`` (and any other bridge already on it)."""
    try:
        attrs = vars(signal)
    except TypeError:
        raise TypeError(f"{signal!r} cannot be bridged: it has no instance __dict__") from None
    bridges: list[Bridge] | None = attrs.get(_ATTR)
    if bridges is None:
        bridges = attrs[_ATTR] = []
        attrs["send"] = _bridged(signal, "send", bridges)
        attrs["send_robust"] = _bridged(signal, "send_robust", bridges)
    if bridge not in bridges:
        bridges.append(bridge)


def uninstall(signal: Any, bridge: Bridge) -> None:
    attrs = vars(signal)
    bridges: list[Bridge] | None = attrs.get(_ATTR)
    if bridges is None or bridge not in bridges:
        return
    bridges.remove(bridge)
    if not bridges:
        for name in (_ATTR, "send", "send_robust"):
            attrs.pop(name, None)
