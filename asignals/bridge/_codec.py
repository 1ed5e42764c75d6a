"""JSON codec for values that cross process boundaries.

Why not pickle: a message read from Redis is untrusted input, and unpickling runs code. This
codec only ever builds JSON scalars, containers and instances of classes the *receiving* side
registered itself, so the worst a hostile message can do is fail to decode.

Wire format: JSON scalars, lists and str-keyed dicts travel as themselves. Everything else is a
tagged object ``{"$t": tag, "v": payload}``; a plain dict that happens to contain ``"$t"`` is
wrapped as ``{"$t": "dict", "v": {...}}`` so it can never be mistaken for a tag. A value of
the class a typed signal declares for its keyword (the *hint*) travels as ``{"$t": "=", "v":
...}``: both sides know the class from the spec, so it needs no registered name.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import enum
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, TypeVar, cast

__all__ = ["DecodeError", "EncodeError", "JsonCodec"]

T = TypeVar("T")

_TAG = "$t"
_HINTED = "="  # "the class the spec declares"
_RESERVED_TAGS = frozenset({"dict", "tuple", "set", "frozenset", "map", _HINTED})
_MAX_DEPTH = 64
_SCALARS = (str, int, float, bool, type(None))


class EncodeError(TypeError):
    """A value cannot be encoded: its type is not JSON-native and has no registered adapter."""


class DecodeError(ValueError):
    """A message is malformed or names something this process did not register."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Adapter:
    tag: str
    cls: type[Any]
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def _builtin_adapters() -> list[_Adapter]:
    return [
        _Adapter("datetime", _dt.datetime, _dt.datetime.isoformat, _dt.datetime.fromisoformat),
        _Adapter("date", _dt.date, _dt.date.isoformat, _dt.date.fromisoformat),
        _Adapter("time", _dt.time, _dt.time.isoformat, _dt.time.fromisoformat),
        _Adapter(
            "timedelta",
            _dt.timedelta,
            lambda td: [td.days, td.seconds, td.microseconds],
            lambda v: _dt.timedelta(*_expect_ints(v, 3)),
        ),
        _Adapter("uuid", uuid.UUID, str, lambda v: uuid.UUID(_expect_str(v))),
        _Adapter("decimal", Decimal, str, lambda v: Decimal(_expect_str(v))),
        _Adapter(
            "bytes",
            bytes,
            lambda b: base64.b64encode(b).decode("ascii"),
            lambda v: base64.b64decode(_expect_str(v), validate=True),
        ),
    ]


def _kind_error(value: object, expected: str) -> DecodeError:
    return DecodeError(f"expected {expected}, got {type(value).__name__}")


# Each helper tests ``type(value)`` through a variable: the checkers then leave ``value``
# unnarrowed (pyright would narrow an untyped JSON value to ``list[Unknown]``) and the cast
# says what the test established.


def _expect_str(value: object) -> str:
    kind = type(value)
    if kind is not str:
        raise _kind_error(value, "str")
    return cast(str, value)


def _expect_list(value: object) -> list[Any]:
    kind = type(value)
    if kind is not list:
        raise _kind_error(value, "list")
    return cast("list[Any]", value)


def _expect_dict(value: object) -> dict[str, Any]:
    """A JSON object (its keys are str: JSON has no other)."""
    kind = type(value)
    if kind is not dict:
        raise _kind_error(value, "dict")
    return cast("dict[str, Any]", value)


def _expect_ints(value: object, length: int) -> list[int]:
    items = _expect_list(value)
    if len(items) != length or not all(type(i) is int for i in items):
        raise DecodeError(f"expected a list of {length} ints")
    return items


class JsonCodec:
    """Encodes keyword arguments to JSON and back, with registered type adapters.

    ``datetime``/``date``/``time``/``timedelta``, ``UUID``, ``Decimal``, ``bytes``, ``tuple``,
    ``set``/``frozenset`` and dicts with non-str keys work out of the box. Dataclasses, pydantic
    models and enums are opt-in: ``codec.register(MyClass)``, or declared by a typed signal's
    spec (``order: Order`` travels without registering ``Order``). Any other class needs
    explicit ``encode``/``decode`` functions. Types are matched exactly (a subclass is not
    silently decoded as its base); register the subclass too.
    """

    def __init__(self) -> None:
        self._by_type: dict[type[Any], _Adapter] = {}
        self._by_tag: dict[str, _Adapter] = {}
        self._derived: dict[type[Any], _Adapter | None] = {}
        for adapter in _builtin_adapters():
            self._add(adapter)

    def register(
        self,
        cls: type[T],
        *,
        name: str | None = None,
        encode: Callable[[T], Any] | None = None,
        decode: Callable[[Any], T] | None = None,
    ) -> type[T]:
        """Let instances of ``cls`` travel, under ``name`` (default ``module.QualName``).

        Without ``encode``/``decode``, ``cls`` must be a dataclass, a pydantic model or an
        ``Enum``. Both processes must register the class under the same name. Returns ``cls``,
        so this works as a class decorator.
        """
        if not isinstance(cls, type):
            raise TypeError(f"register() needs a class, got {cls!r}")
        tag = name if name is not None else f"{cls.__module__}.{cls.__qualname__}"
        if not tag or tag in _RESERVED_TAGS:
            raise ValueError(f"{tag!r} is not a usable type name")
        if (encode is None) != (decode is None):
            raise TypeError("pass both encode and decode, or neither")
        if encode is None or decode is None:
            encode, decode = self._derive(cls)
        if tag in self._by_tag and self._by_tag[tag].cls is not cls:
            raise ValueError(f"type name {tag!r} is already registered for {self._by_tag[tag].cls}")
        self._add(_Adapter(tag, cls, encode, decode))
        return cls

    @staticmethod
    def _derive(kind: type[Any]) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        # Adapters map to and from plain Python values; the codec encodes those recursively,
        # so a dataclass field holding a datetime or another registered class just works.
        if dataclasses.is_dataclass(kind):
            names = frozenset(f.name for f in dataclasses.fields(kind) if f.init)

            def encode_dc(obj: Any) -> Any:
                return {n: getattr(obj, n) for n in names}

            def decode_dc(value: Any) -> Any:
                fields = _expect_dict(value)
                unknown = set(fields) - names
                if unknown:
                    raise DecodeError(f"unknown fields for {kind.__qualname__}: {sorted(unknown)}")
                return kind(**fields)

            return encode_dc, decode_dc
        if callable(getattr(kind, "model_validate", None)) and callable(
            getattr(kind, "model_dump", None)
        ):
            # pydantic v2: its own JSON mode round-trips every type it validates.
            return (lambda obj: obj.model_dump(mode="json")), kind.model_validate
        if issubclass(kind, enum.Enum):
            return (lambda member: member.value), kind
        raise TypeError(
            f"{kind.__qualname__} is not a dataclass, pydantic model or Enum; "
            "pass encode= and decode= to register it"
        )

    def _add(self, adapter: _Adapter) -> None:
        self._by_type[adapter.cls] = adapter
        self._by_tag[adapter.tag] = adapter

    def _hinted(self, cls: type[Any]) -> _Adapter | None:
        """The adapter derived for a spec-declared class (cached; None if not derivable)."""
        try:
            return self._derived[cls]
        except KeyError:
            pass
        try:
            encode, decode = self._derive(cls)
        except TypeError:
            adapter = None
        else:
            adapter = _Adapter(_HINTED, cls, encode, decode)
        self._derived[cls] = adapter
        return adapter

    def derivable(self, cls: type[Any]) -> bool:
        """True for a dataclass, pydantic model or Enum (a class a spec can declare)."""
        return self._hinted(cls) is not None

    def encode(self, value: Any, hint: type[Any] | None = None) -> Any:
        """Return a JSON-ready structure for ``value``; :class:`EncodeError` names what failed.

        ``hint`` is the class the receiving side expects (from a typed signal's spec): a value
        of exactly that class travels without a registered name.
        """
        if hint is not None and type(value) is hint:
            adapter = self._hinted(hint)
            if adapter is not None:
                return {_TAG: _HINTED, "v": self._encode(adapter.encode(value), 1)}
        return self._encode(value, 0)

    def decode(self, value: object, hint: type[Any] | None = None) -> Any:
        """Rebuild a value from :meth:`encode`'s output; :class:`DecodeError` on anything else.

        A ``{"$t": "=", ...}`` value needs ``hint``, the class the spec declares.
        """
        try:
            kind = type(value)
            tagged = cast("dict[str, Any]", value) if kind is dict else None
            if tagged is not None and tagged.get(_TAG) == _HINTED:
                adapter = self._hinted(hint) if hint is not None else None
                if adapter is None or set(tagged) != {_TAG, "v"}:
                    raise DecodeError("a spec-typed value where the spec declares no class")
                return adapter.decode(self._decode(tagged["v"], 1))
            return self._decode(value, 0)
        except DecodeError:
            raise
        except Exception as exc:  # an adapter's decode or a constructor refused the payload
            raise DecodeError(f"{type(exc).__name__}: {exc}") from exc

    def _encode(self, value: object, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise EncodeError(f"value nested deeper than {_MAX_DEPTH} levels")
        kind = type(value)
        if kind in _SCALARS:
            return value
        depth += 1
        if kind is list:
            return [self._encode(v, depth) for v in cast("list[Any]", value)]
        if kind is dict:
            mapping = cast("dict[Any, Any]", value)
            if all(type(k) is str for k in mapping):
                body = {k: self._encode(v, depth) for k, v in mapping.items()}
                return {_TAG: "dict", "v": body} if _TAG in body else body
            pairs = [[self._encode(k, depth), self._encode(v, depth)] for k, v in mapping.items()]
            return {_TAG: "map", "v": pairs}
        if kind in (tuple, set, frozenset):
            items = [self._encode(v, depth) for v in cast("Iterable[Any]", value)]
            return {_TAG: kind.__name__, "v": items}
        adapter = self._by_type.get(kind)
        if adapter is None:
            raise EncodeError(
                f"cannot encode a value of type {kind.__module__}.{kind.__qualname__}; "
                f"register it with codec.register({kind.__qualname__}, ...)"
            )
        return {_TAG: adapter.tag, "v": self._encode(adapter.encode(value), depth)}

    def _decode(self, value: object, depth: int) -> Any:
        if depth > _MAX_DEPTH + 1:
            raise DecodeError(f"value nested deeper than {_MAX_DEPTH} levels")
        kind = type(value)
        if kind in _SCALARS:
            return value
        depth += 1
        if kind is list:
            return [self._decode(v, depth) for v in cast("list[Any]", value)]
        if kind is not dict:
            raise DecodeError(f"unexpected JSON value of type {kind.__name__}")
        mapping = cast("dict[str, Any]", value)
        if _TAG not in mapping:
            return {k: self._decode(v, depth) for k, v in mapping.items()}
        tag = mapping[_TAG]
        if set(mapping) != {_TAG, "v"}:
            raise DecodeError(f"tagged value {tag!r} has extra keys")
        payload = mapping["v"]
        if tag == "dict":
            return {k: self._decode(v, depth) for k, v in _expect_dict(payload).items()}
        if tag == "map":
            pairs = _expect_list(payload)
            if not all(type(p) is list and len(p) == 2 for p in pairs):
                raise DecodeError("a 'map' value must be a list of [key, value] pairs")
            return {self._decode(k, depth): self._decode(v, depth) for k, v in pairs}
        if tag in ("tuple", "set", "frozenset"):
            items = [self._decode(v, depth) for v in _expect_list(payload)]
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
        adapter = self._by_tag.get(tag) if type(tag) is str else None
        if adapter is None:
            raise DecodeError(f"unknown type name {tag!r} (not registered in this process)")
        return adapter.decode(self._decode(payload, depth))
