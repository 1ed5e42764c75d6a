"""What a model signal carries across processes, and how a model instance travels.

A ``post_save`` in the writing process holds live objects: the instance, attached to a session,
and ``using``, the session itself. Neither means anything in another process, so the outbox
writes the remote copy of each send with the same keyword names (receivers and typed signals
see the arguments they expect) and these values:

- ``instance`` (and ``post_delete``'s ``origin``) becomes a *detached* instance of the same
  model, holding the column values it had when the row was written (``session.merge(instance)``
  attaches it in the receiving process);
- ``using`` is None: the receiving process queries through its own sessions;
- ``m2m_changed``'s ``model`` travels as the model class (by name); ``objects``, the related
  instances as loaded in the writer, stays behind (``pk_set`` names the rows);
- ``post_bulk``'s ``statement`` is None (it holds the writer's SQL expression objects).

Models travel through the bridge's codec under adapters registered on both sides: the writer
registers each model on first use, a consumer calls :func:`register_model`.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping
from typing import Any, cast

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.session import make_transient_to_detached

from ... import AsyncSignal, signals
from ...bridge import EncodeError

__all__ = ["register_model"]

#: Per model signal: the keywords whose value stays in the writing process (sent as None), and
#: those left out (optional ones).
_LOCAL: dict[AsyncSignal, tuple[frozenset[str], frozenset[str]]] = {
    signals.post_save: (frozenset({"using"}), frozenset()),
    signals.post_delete: (frozenset({"using"}), frozenset()),
    signals.m2m_changed: (frozenset({"using"}), frozenset({"objects"})),
    signals.post_bulk: (frozenset({"using", "statement"}), frozenset()),
}


def wire_kwargs(signal: AsyncSignal, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the cross-process copy of a model signal's send."""
    local = _LOCAL.get(signal)
    if local is None:
        return kwargs
    emptied, left_out = local
    return {k: None if k in emptied else v for k, v in kwargs.items() if k not in left_out}


def mapper_of(obj: object) -> Mapper[Any] | None:
    """The mapper of a mapped class or instance, or None."""
    found = sa_inspect(obj, raiseerr=False)
    if isinstance(found, Mapper):
        return cast("Mapper[object]", found)  # of some mapped class
    mapper: Mapper[Any] | None = getattr(found, "mapper", None) if found is not None else None
    return mapper


def model_tag(cls: type[Any]) -> str:
    """The codec name of a model class: its dotted name and table, the same in every process."""
    mapper: Mapper[Any] = sa_inspect(cls)
    table = getattr(mapper.local_table, "name", "")
    return f"sqlalchemy:{cls.__module__}.{cls.__qualname__}[{table}]"


def _encoder(mapper: Mapper[Any]) -> Callable[[Any], dict[str, Any]]:
    keys = [prop.key for prop in mapper.column_attrs]

    def encode(obj: Any) -> dict[str, Any]:
        # Only loaded values: reading an expired one would be I/O in the middle of a flush.
        loaded = instance_state(obj).dict
        return {k: loaded[k] for k in keys if k in loaded}

    return encode


def _decoder(mapper: Mapper[Any]) -> Callable[[Any], Any]:
    keys = frozenset(prop.key for prop in mapper.column_attrs)
    cls = mapper.class_

    def decode(values: Any) -> Any:
        if not isinstance(values, Mapping):
            raise ValueError(f"{cls.__qualname__} travels as a mapping of column values")
        columns = cast("Mapping[str, Any]", values)  # str keys: checked against ``keys`` next
        unknown = set(columns) - keys
        if unknown:
            raise ValueError(f"{cls.__qualname__} has no column attribute(s) {sorted(unknown)}")
        obj = mapper.class_manager.new_instance()
        for key, value in columns.items():
            set_committed_value(obj, key, value)
        if all(v is not None for v in mapper.primary_key_from_instance(obj)):
            make_transient_to_detached(obj)  # a persistent row, outside any session
        return obj

    return decode


def register_model(codec: Any, cls: type[Any]) -> None:
    """Let instances of the mapped class ``cls`` travel through ``codec`` (a bridge's codec).

    Both processes need it: the outbox does it in the writer the first time an instance of
    ``cls`` is written; a consumer calls ``register_model(bridge.codec, Order)`` at start-up.
    The remote receiver then gets a detached ``Order`` holding the row's column values as they
    were written (``await session.merge(instance)`` attaches it to a session).
    """
    mapper = mapper_of(cls) if isinstance(cls, type) else None
    if mapper is None:
        raise TypeError(f"register_model() takes a mapped class, got {cls!r}")
    known = _models_of(codec)
    if cls in known.values():
        return
    tag = model_tag(cls)
    codec.register(cls, name=tag, encode=_encoder(mapper), decode=_decoder(mapper))
    known[tag] = cls
    meta = type(cls)
    if meta not in _classes_of(codec):
        # The class itself (m2m_changed's ``model``) travels by its tag, and is looked up
        # among the models this codec knows.
        codec.register(
            meta,
            name=f"sqlalchemy:class:{meta.__module__}.{meta.__qualname__}",
            encode=functools.partial(_tag_of, codec),
            decode=functools.partial(_class_of, codec),
        )
        _classes_of(codec).add(meta)


_models: weakref.WeakKeyDictionary[Any, dict[str, type[Any]]] = weakref.WeakKeyDictionary()
_metaclasses: weakref.WeakKeyDictionary[Any, set[type[Any]]] = weakref.WeakKeyDictionary()
_not_models: set[type[Any]] = set()  # classes seen among kwargs that are not mapped


def _models_of(codec: Any) -> dict[str, type[Any]]:
    """The model classes registered on ``codec``, by tag."""
    known = _models.get(codec)
    if known is None:
        known = _models[codec] = {}
    return known


def _classes_of(codec: Any) -> set[type[Any]]:
    """The metaclasses whose classes (the models) ``codec`` encodes by tag."""
    metas = _metaclasses.get(codec)
    if metas is None:
        metas = _metaclasses[codec] = set()
    return metas


def _tag_of(codec: Any, model: type[Any]) -> str:
    for tag, cls in _models_of(codec).items():
        if cls is model:
            return tag
    if mapper_of(model) is not None:
        register_model(codec, model)
        return model_tag(model)
    raise EncodeError(f"the class {model!r} cannot travel: only mapped model classes can")


def _class_of(codec: Any, tag: Any) -> type[Any]:
    cls = _models_of(codec).get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ValueError(
            f"unknown model {tag!r}: register it here with register_model(bridge.codec, Model)"
        )
    return cls


def register_instances(codec: Any, kwargs: Mapping[str, Any]) -> None:
    """Register the models among ``kwargs``' values, instances or classes (first use)."""
    known = _models_of(codec).values()
    for value in kwargs.values():
        cls = value if isinstance(value, type) else type(value)
        if cls in _not_models or cls in known:
            continue
        if mapper_of(cls) is not None:
            register_model(codec, cls)
        else:
            _not_models.add(cls)
