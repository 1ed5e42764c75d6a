"""The envelope an event travels in, and the name registries that make it safe to receive.

Signals and senders never travel as objects: each side maps its own objects to names it chose
(``attach(signal, name=...)``, ``register_sender(name, obj)``). A message can therefore only
reach a signal this process bridged and only name a sender this process registered; anything
else is a :class:`DecodeError`, which the reader turns into a dead letter.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time
from typing import Any

from ._codec import DecodeError, EncodeError, JsonCodec

__all__ = ["Envelope", "Event", "Registry"]

_VERSION = 1
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder()
_PLAIN = (str, int, float, bool, type(None))
_ENVELOPE_KEYS = frozenset({"v", "id", "ts", "origin", "group", "signal", "sender", "kwargs"})


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """What is written to the stream, as decoded JSON (values still in wire form)."""

    id: str
    ts: float
    origin: str
    group: str | None
    signal: str
    sender: Any
    kwargs: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """A received envelope resolved to this process's objects, ready to send."""

    envelope: Envelope
    signal: Any
    sender: Any
    kwargs: dict[str, Any]


def _reserved_names(signal: Any) -> frozenset[str]:
    """Keyword names a remote message may not use: ``signal``, ``sender`` and send options.

    A remote ``timeout=0`` must not become a dispatch option of the local send, so the options
    of API.md and every named parameter of ``send_robust`` are off limits.
    """
    names = {"signal", "sender", "concurrent", "timeout", "max_concurrency"}
    try:
        params = inspect.signature(type(signal).send_robust).parameters.values()
    except (AttributeError, TypeError, ValueError):
        return frozenset(names)
    for p in params:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
            names.add(p.name)
    return frozenset(names)


class Registry:
    """Names for bridged signals and registered senders, plus the codec for kwargs."""

    def __init__(self, codec: JsonCodec, origin: str, group: str | None) -> None:
        self.codec = codec
        self.origin = origin
        self.group = group
        self.signals: dict[str, Any] = {}
        self._signal_names: dict[int, str] = {}
        self._reserved: dict[str, frozenset[str]] = {}
        self._senders: dict[str, Any] = {}
        self._sender_names: dict[int, str] = {}

    def add_signal(self, signal: Any, name: str | None) -> str:
        name = name if name is not None else getattr(signal, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"{signal!r} has no name; give it one (AsyncSignal(name=...)) or pass name="
            )
        if not callable(getattr(signal, "send_robust", None)):
            raise TypeError(f"{signal!r} is not a signal (it has no send_robust)")
        current = self.signals.get(name)
        if current is not None and current is not signal:
            raise ValueError(f"another signal is already bridged under the name {name!r}")
        known = self._signal_names.get(id(signal))
        if known is not None and known != name:
            raise ValueError(f"{signal!r} is already bridged as {known!r}")
        self.signals[name] = signal
        self._signal_names[id(signal)] = name
        self._reserved[name] = _reserved_names(signal)
        return name

    def add_sender(self, name: str, sender: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a sender name must be a non-empty str, got {name!r}")
        current = self._senders.get(name)
        if current is not None and current is not sender:
            raise ValueError(f"sender name {name!r} is already registered for {current!r}")
        self._senders[name] = sender
        self._sender_names[id(sender)] = name

    def signal_name(self, signal: Any) -> str:
        return self._signal_names[id(signal)]

    # -- outgoing ---------------------------------------------------------------------------

    def _encode_sender(self, sender: Any) -> Any:
        name = self._sender_names.get(id(sender))
        if name is not None and self._senders[name] is sender:
            return {"ref": name}
        if sender is None:
            return None
        if type(sender) is str:
            return {"str": sender}
        if type(sender) is int:
            return {"int": sender}
        raise EncodeError(
            f"sender {sender!r} cannot cross processes: register it with "
            f"bridge.register_sender(name, sender) (str and int senders travel as themselves)"
        )

    def encode(self, signal: Any, sender: Any, kwargs: dict[str, Any]) -> bytes:
        """Build the JSON envelope for one send; raises :class:`EncodeError` naming the kwarg."""
        name = self.signal_name(signal)
        encoded: dict[str, Any] = {}
        for key, value in kwargs.items():
            try:
                encoded[key] = self.codec.encode(value)
            except EncodeError as exc:
                raise EncodeError(f"{name}: keyword argument {key!r}: {exc}") from None
        body = {
            "v": _VERSION,
            "id": os.urandom(12).hex(),
            "ts": time.time(),
            "origin": self.origin,
            "group": self.group,
            "signal": name,
            "sender": self._encode_sender(sender),
            "kwargs": encoded,
        }
        return _ENCODER.encode(body).encode()

    # -- incoming ---------------------------------------------------------------------------

    def parse(self, raw: bytes, max_bytes: int) -> Envelope:
        """Check the envelope's shape without resolving names (origin filtering needs this)."""
        if len(raw) > max_bytes:
            raise DecodeError(f"message of {len(raw)} bytes exceeds max_message_bytes={max_bytes}")
        try:
            body = _DECODER.decode(raw.decode())
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise DecodeError(f"not valid JSON: {exc}") from None
        if type(body) is not dict or set(body) != _ENVELOPE_KEYS:
            raise DecodeError("not an asignals envelope (wrong keys)")
        if body["v"] != _VERSION:
            raise DecodeError(f"unsupported envelope version {body['v']!r}")
        checks = {"id": str, "origin": str, "signal": str, "kwargs": dict}
        for key, kind in checks.items():
            if type(body[key]) is not kind:
                raise DecodeError(f"envelope field {key!r} must be {kind.__name__}")
        if type(body["ts"]) not in (int, float):
            raise DecodeError("envelope field 'ts' must be a number")
        if body["group"] is not None and type(body["group"]) is not str:
            raise DecodeError("envelope field 'group' must be a str or null")
        return Envelope(
            id=body["id"],
            ts=float(body["ts"]),
            origin=body["origin"],
            group=body["group"],
            signal=body["signal"],
            sender=body["sender"],
            kwargs=body["kwargs"],
        )

    def _decode_sender(self, wire: Any) -> Any:
        if wire is None:
            return None
        if type(wire) is dict and len(wire) == 1:
            ((kind, value),) = wire.items()
            if kind == "ref" and type(value) is str:
                if value not in self._senders:
                    raise DecodeError(f"unknown sender {value!r} (not registered here)")
                return self._senders[value]
            if kind == "str" and type(value) is str:
                return value
            if kind == "int" and type(value) is int:
                return value
        raise DecodeError(f"malformed sender {wire!r}")

    def resolve(self, envelope: Envelope) -> Event:
        """Map names to this process's objects and decode kwargs, or raise DecodeError."""
        signal = self.signals.get(envelope.signal)
        if signal is None:
            raise DecodeError(f"unknown signal {envelope.signal!r} (not bridged here)")
        sender = self._decode_sender(envelope.sender)
        reserved = self._reserved[envelope.signal]
        kwargs: dict[str, Any] = {}
        for key, value in envelope.kwargs.items():
            if not key.isidentifier() or key in reserved:
                raise DecodeError(f"keyword argument name {key!r} is not allowed")
            # Scalars are most kwargs; they need no trip through the codec.
            kwargs[key] = value if type(value) in _PLAIN else self.codec.decode(value)
        return Event(envelope, signal, sender, kwargs)
