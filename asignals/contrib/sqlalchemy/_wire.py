"""What a model signal carries across processes, and how a model instance travels.

A ``post_save`` in the writing process holds live objects: the instance, attached to a session,
and ``using``, the session itself. Neither means anything in another process, so the outbox
writes the remote copy of each send in this form:

- ``instance`` becomes a *detached* instance of the same model, holding the column values it had
  when the row was written (``session.merge(instance)`` attaches it in the receiving process);
- ``using`` (and ``post_delete``'s ``origin``, which is the instance again) stays behind;
- ``m2m_changed`` keeps ``instance``, ``action``, ``reverse`` and ``pk_set``; ``model`` and
  ``objects`` stay behind (``pk_set`` names the rows);
- ``post_bulk`` keeps ``kind`` and ``pk_set``; the ``statement`` stays behind.

Instances travel through the bridge's codec under an adapter registered for their class on both
sides: the writer registers it on first use, a consumer with :func:`register_model`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.session import make_transient_to_detached

from ... import AsyncSignal, signals

__all__ = ["register_model"]

_DROPPED: dict[AsyncSignal, frozenset[str]] = {
    signals.post_save: frozenset({"using"}),
    signals.post_delete: frozenset({"using", "origin"}),
    signals.m2m_changed: frozenset({"using", "model", "objects"}),
    signals.post_bulk: frozenset({"using", "statement"}),
}


def wire_kwargs(signal: AsyncSignal, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the cross-process copy of a model signal's send."""
    dropped = _DROPPED.get(signal)
    if dropped is None:
        return kwargs
    return {k: v for k, v in kwargs.items() if k not in dropped}


def mapper_of(obj: object) -> Mapper[Any] | None:
    """The mapper of a mapped class or instance, or None."""
    found = sa_inspect(obj, raiseerr=False)
    if isinstance(found, Mapper):
        return found
    return getattr(found, "mapper", None) if found is not None else None


def model_tag(cls: type[Any]) -> str:
    """The codec name of a model class: its dotted name and table, the same in every process."""
    mapper = sa_inspect(cls)
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
        unknown = set(values) - keys
        if unknown:
            raise ValueError(f"{cls.__qualname__} has no column attribute(s) {sorted(unknown)}")
        obj = mapper.class_manager.new_instance()
        for key, value in values.items():
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
    if cls not in known:
        codec.register(cls, name=model_tag(cls), encode=_encoder(mapper), decode=_decoder(mapper))
        known.add(cls)


_models: weakref.WeakKeyDictionary[Any, set[type[Any]]] = weakref.WeakKeyDictionary()
_not_models: set[type[Any]] = set()  # classes seen among kwargs that are not mapped


def _models_of(codec: Any) -> set[type[Any]]:
    """The model classes already registered on ``codec``."""
    known = _models.get(codec)
    if known is None:
        known = _models[codec] = set()
    return known


def register_instances(codec: Any, kwargs: Mapping[str, Any]) -> None:
    """Register the model classes of the instances among ``kwargs``' values (first use)."""
    known = _models_of(codec)
    for value in kwargs.values():
        cls = type(value)
        if cls in known or cls in _not_models:
            continue
        if mapper_of(value) is not None and not isinstance(value, type):
            register_model(codec, cls)
        else:
            _not_models.add(cls)
