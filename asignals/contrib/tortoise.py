"""Django's model signals for Tortoise ORM models: call :func:`install` after ``Tortoise.init()``.

Use it to react to saves and deletes of Tortoise models with ordinary asignals receivers, sync
or async, filtered by ``sender=`` (the model class), with the same code as for SQLAlchemy or
Django. See [Model signals](../guides/models.md#tortoise-orm).

Tortoise has its own per-model signals (``tortoise.signals``): async-only listeners called
positionally as ``(sender, instance, using_db, update_fields)``, awaited inside ``Model.save()``
and ``Model.delete()``. ``install()`` registers one such listener per model through Tortoise's
public ``Model.register_listener``, and each re-sends the event as :mod:`asignals.signals`'
``pre_save``/``post_save``/``pre_delete``/``post_delete`` with Django's keyword arguments, so
receivers can be sync or async, filter by sender and use everything ``AsyncSignal`` offers.
Because the listener is awaited inside ``save()``, a ``pre_save`` receiver can change the
instance before it is written, and an exception from any receiver propagates out of ``save()``
or ``delete()`` (as an ``ExceptionGroup``).

Tortoise has no many-to-many signal, so ``install()`` also wraps ``ManyToManyRelation.add``,
``remove`` and ``clear`` (class-level, undone by ``uninstall()``) to send ``m2m_changed``.

Not covered, as in Tortoise itself: ``bulk_create``/``QuerySet.update``/``QuerySet.delete``, and
rows removed by the database's ``ON DELETE CASCADE``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

from tortoise import Tortoise
from tortoise.fields.relational import ManyToManyRelation
from tortoise.models import Model
from tortoise.signals import Signals

from .. import signals

__all__ = ["install", "installed", "uninstall"]

_models: set[type[Model]] = set()
_originals: dict[str, Callable[..., Any]] = {}


class _Listeners(Protocol):
    """A model class's listener registry, with the types Tortoise's annotations leave out.

    Tortoise annotates a listener as a bare ``Callable`` and the class-level registry with its
    model TypeVar (which a checker cannot read through the class); both hold these types.
    """

    _listeners: dict[Signals, dict[type[Model], list[Callable[..., Any]]]]

    def register_listener(self, signal: Signals, listener: Callable[..., Any]) -> None: ...


async def _on_pre_save(
    sender: type[Model], instance: Model, using_db: Any, update_fields: Iterable[str] | None
) -> None:
    await signals.pre_save.send(
        sender,
        instance=instance,
        raw=False,
        using=using_db,
        update_fields=None if update_fields is None else frozenset(update_fields),
    )


async def _on_post_save(
    sender: type[Model],
    instance: Model,
    created: bool,
    using_db: Any,
    update_fields: Iterable[str] | None,
) -> None:
    await signals.post_save.send(
        sender,
        instance=instance,
        created=created,
        raw=False,
        using=using_db,
        update_fields=None if update_fields is None else frozenset(update_fields),
    )


async def _on_pre_delete(sender: type[Model], instance: Model, using_db: Any) -> None:
    await signals.pre_delete.send(sender, instance=instance, using=using_db, origin=instance)


async def _on_post_delete(sender: type[Model], instance: Model, using_db: Any) -> None:
    await signals.post_delete.send(sender, instance=instance, using=using_db, origin=instance)


_LISTENERS: tuple[tuple[Signals, Callable[..., Any]], ...] = (
    (Signals.pre_save, _on_pre_save),
    (Signals.post_save, _on_post_save),
    (Signals.pre_delete, _on_pre_delete),
    (Signals.post_delete, _on_post_delete),
)


def install(*models: type[Model]) -> None:
    """Make ``models`` send the model signals; with no argument, every model Tortoise knows.

    Call it once at startup, after ``await Tortoise.init(...)`` (Tortoise registers listeners
    per concrete model class, so only the models known by then are covered; pass classes to
    cover some only, or models added later). From then on ``save()`` (and ``create()``) sends
    ``pre_save``/``post_save`` and ``delete()`` sends ``pre_delete``/``post_delete``, awaited
    inside the call: a ``pre_save`` receiver can change the instance before it is written, and
    a receiver's exception propagates out of ``save()``/``delete()``. ``add()``, ``remove()``
    and ``clear()`` of their many-to-many relations send ``m2m_changed``. Installing twice is
    harmless.

    :param models: Tortoise ``Model`` classes; none for every model of ``Tortoise.apps``.
    :raises RuntimeError: no models given and Tortoise is not initialised yet.
    :raises TypeError: something other than a Tortoise ``Model`` class was given.
    """
    if not models:
        apps = Tortoise.apps
        if not apps:
            raise RuntimeError(
                "asignals.contrib.tortoise.install() with no models needs Tortoise "
                "initialised: call it after `await Tortoise.init(...)`, or pass the model classes"
            )
        models = tuple(apps.get_models_iterable())
    for model in models:
        if not (isinstance(model, type) and issubclass(model, Model)):
            raise TypeError(
                f"asignals.contrib.tortoise.install() takes Tortoise Model classes; got {model!r}"
            )
    for model in models:
        for signal, listener in _LISTENERS:
            cast(_Listeners, model).register_listener(signal, listener)
        _models.add(model)
    _patch_m2m()


def uninstall(*models: type[Model]) -> bool:
    """Undo :func:`install` for ``models`` (default: all); return whether any was installed.

    For tests and for shutting down cleanly: the listeners are removed from the models, and
    the many-to-many methods are restored once no model is installed any more. Receivers stay
    connected: these models' saves and deletes just stop sending to them.

    :param models: the model classes to stop covering; none for every installed one.
    :returns: ``True`` if at least one of them was installed.
    """
    chosen = set(models) if models else set(_models)
    removed = False
    for model in chosen & _models:
        for signal, listener in _LISTENERS:
            registered = cast(_Listeners, Model)._listeners[signal].get(model, [])
            if listener in registered:
                registered.remove(listener)
        _models.discard(model)
        removed = True
    if not _models:
        _unpatch_m2m()
    return removed


def installed(model: type[Model]) -> bool:
    """Whether :func:`install` covers ``model``: its saves and deletes send the signals.

    For setup code that installs conditionally, and for tests that check the wiring.
    """
    return model in _models


# -- many-to-many ------------------------------------------------------------------------------


def _patch_m2m() -> None:
    if _originals:
        return
    for name, wrapper in (("add", _add), ("remove", _remove), ("clear", _clear)):
        _originals[name] = getattr(ManyToManyRelation, name)
        setattr(ManyToManyRelation, name, wrapper)


def _unpatch_m2m() -> None:
    for name, original in _originals.items():
        setattr(ManyToManyRelation, name, original)
    _originals.clear()


def _m2m_kwargs(
    relation: ManyToManyRelation[Any], objects: tuple[Model, ...] | None, using_db: Any
) -> dict[str, Any]:
    field = relation.field
    return {
        "instance": relation.instance,
        "reverse": bool(getattr(field, "_generated", False)),
        "model": field.related_model,
        "pk_set": None if objects is None else {o.pk for o in objects},
        "using": using_db or relation.remote_model._meta.db,
    }


async def _send_around(
    relation: ManyToManyRelation[Any],
    action: str,
    objects: tuple[Model, ...] | None,
    using_db: Any,
    call: Callable[[], Any],
) -> None:
    """``pre_<action>``, the original method, ``post_<action>`` (Django's order)."""
    if type(relation.instance) not in _models or objects == ():
        await call()
        return
    kwargs = _m2m_kwargs(relation, objects, using_db)
    through = relation.field.through
    await signals.m2m_changed.send(through, action=f"pre_{action}", **kwargs)
    await call()
    await signals.m2m_changed.send(through, action=f"post_{action}", **kwargs)


async def _add(self: ManyToManyRelation[Any], *instances: Model, using_db: Any = None) -> None:
    await _send_around(
        self,
        "add",
        instances,
        using_db,
        lambda: _originals["add"](self, *instances, using_db=using_db),
    )


async def _remove(self: ManyToManyRelation[Any], *instances: Model, using_db: Any = None) -> None:
    await _send_around(
        self,
        "remove",
        instances,
        using_db,
        lambda: _originals["remove"](self, *instances, using_db=using_db),
    )


async def _clear(self: ManyToManyRelation[Any], using_db: Any = None) -> None:
    await _send_around(
        self, "clear", None, using_db, lambda: _originals["clear"](self, using_db=using_db)
    )
