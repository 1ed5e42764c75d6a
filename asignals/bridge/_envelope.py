"""The envelope an event travels in, and the name registries that make it safe to receive.

Signals and senders never travel as objects: each side maps its own objects to names it chose
(``attach(signal, name=...)``, ``register_sender(name, obj)``). A message can therefore only
reach a signal this process bridged and only name a sender this process registered; anything
else is a :class:`DecodeError`, which the reader turns into a dead letter.

A typed signal's spec (``signal.spec``) adds type hints: a keyword annotated with a dataclass,
pydantic model or Enum travels without ``codec.register`` and is rebuilt as that type.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import time
import types
import typing
from collections.abc import Mapping
from typing import Any, cast

from .._reserved import RESERVED
from ._codec import DecodeError, EncodeError, JsonCodec

__all__ = ["Encoded", "Envelope", "Event", "Registry"]

logger = logging.getLogger("asignals.bridge")

_VERSION = 2
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder()
_PLAIN = (str, int, float, bool, type(None))
_KEYS_V1 = frozenset({"v", "id", "ts", "origin", "group", "signal", "sender", "kwargs"})
_KEYS_V2 = _KEYS_V1 | {"headers"}


@dataclasses.dataclass(frozen=True, slots=True)
class Encoded:
    """One event ready for the wire: its stable envelope ``id`` and the ``data`` to publish.

    What :meth:`Bridge.encode` returns, so an outbox can store the bytes in a transaction and
    publish them later under the same id (consumers de-duplicate on it).
    """

    id: str
    """The envelope id, fixed at encoding: a republished event keeps it (de-duplicate on it)."""
    data: bytes
    """The bytes to store and then hand to ``publish_encoded`` unchanged."""


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
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """A received envelope resolved to this process's objects, ready to send."""

    envelope: Envelope
    signal: Any
    sender: Any
    kwargs: dict[str, Any]


def _reserved_names(signal: Any) -> frozenset[str]:
    """Keyword names a remote message may not use: ``signal``, ``sender`` and send options.

    A remote ``timeout=0`` must not become a dispatch option of the local send, so the reserved
    names and every named parameter of ``send_robust`` are off limits.
    """
    names = set(RESERVED)
    cls: Any = signal.__class__
    try:
        params = inspect.signature(cls.send_robust).parameters.values()
    except (AttributeError, TypeError, ValueError):
        return frozenset(names)
    for p in params:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
            names.add(p.name)
    return frozenset(names)


def _hint_of(annotation: Any, codec: JsonCodec) -> type[Any] | None:
    """The class a keyword is declared as, if the codec can derive an adapter for it.

    ``Order`` and ``Order | None`` (``Optional[Order]``) count; containers of them do not.
    """
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(arms) != 1:
            return None
        annotation = arms[0]
    if isinstance(annotation, type) and codec.derivable(annotation):
        return annotation
    return None


def _spec_hints(signal: Any, codec: JsonCodec) -> dict[str, type[Any]]:
    spec = getattr(signal, "spec", None)
    if spec is None:
        return {}
    try:
        annotations = typing.get_type_hints(spec)
    except Exception as exc:  # a forward reference that does not resolve (yet)
        logger.warning("cannot read the type hints of %r: %s", signal, exc)
        return {}
    annotations.pop("return", None)
    annotations.pop("sender", None)
    hints: dict[str, type[Any]] = {}
    for name, annotation in annotations.items():
        hint = _hint_of(annotation, codec)
        if hint is not None:
            hints[name] = hint
    return hints


def _headers(value: object) -> dict[str, str]:
    """The envelope's str-to-str headers; anything else in there is dropped (headers are for
    tracing: never a reason to lose the event)."""
    kind = type(value)
    if kind is not dict:
        return {}
    items = cast("dict[object, object]", value).items()
    return {k: v for k, v in items if type(k) is str and type(v) is str}


class Registry:
    """Names for bridged signals and registered senders, plus the codec for kwargs."""

    def __init__(self, codec: JsonCodec, origin: str, group: str | None, max_bytes: int) -> None:
        self.codec = codec
        self.origin = origin
        self.group = group
        self.max_bytes = max_bytes
        self.signals: dict[str, Any] = {}
        self._signal_names: dict[int, str] = {}
        self._reserved: dict[str, frozenset[str]] = {}
        self._hints: dict[str, dict[str, type[Any]]] = {}
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

    def signal_name(self, signal: Any) -> str | None:
        name = self._signal_names.get(id(signal))
        return name if name is not None and self.signals[name] is signal else None

    def hints(self, name: str) -> dict[str, type[Any]]:
        """The spec's class-typed keywords of signal ``name``, read once (lazily, so that a
        spec may name classes defined after the signal)."""
        hints = self._hints.get(name)
        if hints is None:
            hints = self._hints[name] = _spec_hints(self.signals[name], self.codec)
        return hints

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
            f"bridge.register_sender(name, sender) or senders={{'Name': sender}} "
            f"(str and int senders travel as themselves)"
        )

    def body(self, name: str, sender: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The envelope of one send as a JSON-ready dict (``headers`` still empty).

        Raises :class:`EncodeError` naming the keyword argument that cannot travel.
        """
        hints = self.hints(name)
        encode = self.codec.encode
        encoded: dict[str, Any] = {}
        for key, value in kwargs.items():
            if type(value) in _PLAIN:  # most kwargs: no trip through the codec
                encoded[key] = value
                continue
            try:
                encoded[key] = encode(value, hints.get(key))
            except EncodeError as exc:
                raise EncodeError(f"{name}: keyword argument {key!r}: {exc}") from None
        return {
            "v": _VERSION,
            "id": os.urandom(12).hex(),
            "ts": time.time(),
            "origin": self.origin,
            "group": self.group,
            "signal": name,
            "sender": self._encode_sender(sender),
            "kwargs": encoded,
            "headers": {},
        }

    def dump(self, body: dict[str, Any]) -> bytes:
        """Serialize an envelope and check it against ``max_message_bytes``."""
        try:
            data = _ENCODER.encode(body).encode()
        except (ValueError, UnicodeEncodeError) as exc:  # NaN is fine; lone surrogates are not
            raise EncodeError(f"{body['signal']}: cannot serialize the event: {exc}") from None
        if len(data) > self.max_bytes:
            raise EncodeError(
                f"{body['signal']}: the encoded event is {len(data):,} bytes, over "
                f"max_message_bytes={self.max_bytes:,}; send a reference (an id) instead"
            )
        return data

    # -- incoming ---------------------------------------------------------------------------

    def parse(self, raw: bytes) -> Envelope:
        """Check the envelope's shape without resolving names (origin filtering needs this)."""
        if len(raw) > self.max_bytes:
            raise DecodeError(
                f"message of {len(raw)} bytes exceeds max_message_bytes={self.max_bytes}"
            )
        try:
            decoded: object = _DECODER.decode(raw.decode())
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise DecodeError(f"not valid JSON: {exc}") from None
        kind = type(decoded)
        if kind is not dict:
            raise DecodeError("not an asignals envelope (not a JSON object)")
        body = cast("dict[str, object]", decoded)
        version = body.get("v")
        if version not in (1, _VERSION):
            raise DecodeError(f"unsupported envelope version {version!r}")
        if body.keys() != (_KEYS_V2 if version == _VERSION else _KEYS_V1):
            raise DecodeError("not an asignals envelope (wrong keys)")
        checks = {"id": str, "origin": str, "signal": str, "kwargs": dict}
        for key, expected in checks.items():
            if type(body[key]) is not expected:
                raise DecodeError(f"envelope field {key!r} must be {expected.__name__}")
        ts = body["ts"]
        if type(ts) not in (int, float):
            raise DecodeError("envelope field 'ts' must be a number")
        group = body["group"]
        if group is not None and type(group) is not str:
            raise DecodeError("envelope field 'group' must be a str or null")
        return Envelope(
            id=cast(str, body["id"]),
            ts=float(cast(float, ts)),
            origin=cast(str, body["origin"]),
            group=group,
            signal=cast(str, body["signal"]),
            sender=body["sender"],
            kwargs=cast("dict[str, Any]", body["kwargs"]),
            headers=_headers(body.get("headers")),
        )

    def _decode_sender(self, wire: object) -> Any:
        if wire is None:
            return None
        kind = type(wire)
        fields = cast("dict[str, object]", wire) if kind is dict else {}
        if len(fields) == 1:
            ((tag, value),) = fields.items()
            value_kind = type(value)
            if tag == "ref" and value_kind is str:
                name = cast(str, value)
                if name not in self._senders:
                    raise DecodeError(f"unknown sender {name!r} (not registered here)")
                return self._senders[name]
            if (tag == "str" and value_kind is str) or (tag == "int" and value_kind is int):
                return value
        raise DecodeError(f"malformed sender {wire!r}")

    def resolve(self, envelope: Envelope) -> Event:
        """Map names to this process's objects and decode kwargs, or raise DecodeError."""
        signal = self.signals.get(envelope.signal)
        if signal is None:
            raise DecodeError(f"unknown signal {envelope.signal!r} (not bridged here)")
        sender = self._decode_sender(envelope.sender)
        reserved = self._reserved[envelope.signal]
        hints = self.hints(envelope.signal)
        kwargs: dict[str, Any] = {}
        for key, value in envelope.kwargs.items():
            if not key.isidentifier() or key in reserved:
                raise DecodeError(f"keyword argument name {key!r} is not allowed")
            if type(value) in _PLAIN:  # most kwargs: no trip through the codec
                kwargs[key] = value
            else:
                try:
                    kwargs[key] = self.codec.decode(value, hints.get(key))
                except DecodeError as exc:
                    raise DecodeError(f"keyword argument {key!r}: {exc}") from None
        return Event(envelope, signal, sender, kwargs)
