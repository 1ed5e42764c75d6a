"""Async twins of Django's built-in signals, sent by the adapters for real ORMs and ASGI apps.

Connect to these rather than declaring your own when the event is "a model instance was saved
or deleted" or "a request started or finished": the adapters in :mod:`asignals.contrib` send
them, so a receiver works whichever ORM or framework sends, and one ported from Django keeps
its signature, as the keyword arguments are Django's:

- ``pre_save``, ``post_save``, ``pre_delete``, ``post_delete``, ``m2m_changed``: sent by
  :func:`asignals.contrib.sqlalchemy.install` (SQLAlchemy 2 sessions, on flush) and
  :func:`asignals.contrib.tortoise.install` (inside Tortoise's ``save()``/``delete()``);
- ``pre_bulk``, ``post_bulk``: not in Django, sent by the SQLAlchemy adapter for statements
  that change many rows at once;
- ``request_started``, ``request_finished``, ``got_request_exception``: sent by
  :class:`asignals.contrib.asgi.SignalsMiddleware` for every HTTP request and websocket;
- ``pre_init``, ``post_init``: declared for adapters that can send them; none does yet (a
  constructor cannot await receivers).

Each is declared from a spec function (see :func:`asignals.signal`), so mypy and pyright check
a receiver against it and a send is refused at run time if a keyword is missing or unknown; the
parameters listed for each below are the keyword arguments its receivers get, besides
``signal``. Filter by ``sender``: the model class for the model signals, the application for
the request signals. A receiver that raises makes the ORM call or the request fail with an
``ExceptionGroup``, as any :meth:`~asignals.AsyncSignal.send` does. See
[Model signals](../guides/models.md) and [FastAPI and ASGI](../guides/fastapi.md).
"""

from __future__ import annotations

from collections.abc import Collection, MutableMapping
from typing import Any

from ._signal import signal


@signal
def pre_init(sender: type[Any], *, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Sent before a model instance's ``__init__`` runs (Django's); no adapter sends it yet.

    Declared so that a receiver written for Django's ``pre_init`` type-checks and an adapter
    of your own can send it.

    :param sender: the model class.
    :param args: the positional arguments the constructor was called with.
    :param kwargs: its keyword arguments.
    """


@signal
def post_init(sender: type[Any], *, instance: Any) -> Any:
    """Sent after a model instance's ``__init__`` ran (Django's); no adapter sends it yet.

    Declared so that a receiver written for Django's ``post_init`` type-checks and an adapter
    of your own can send it.

    :param sender: the model class.
    :param instance: the new instance.
    """


@signal
def pre_save(
    sender: type[Any],
    *,
    instance: Any,
    raw: bool,
    using: Any,
    update_fields: frozenset[str] | None,
    created: bool = False,
) -> Any:
    """Sent before an instance is written (INSERT or UPDATE): the place to fill in or check fields.

    The SQLAlchemy adapter sends it from ``before_flush``, for every object the flush will
    write, before any SQL of the flush; Tortoise's, inside ``Model.save()`` (and
    ``create()``). A receiver may change the instance, and what it sets is written. A
    receiver that raises aborts the write (the flush or ``save()`` raises).

    :param sender: the instance's model class.
    :param instance: the object about to be written.
    :param raw: always ``False`` (Django's "saved exactly as loaded from a fixture").
    :param using: what to query through: the SQLAlchemy session that flushes (query, but
        never flush or commit it here), or Tortoise's database client.
    :param update_fields: the frozenset of names of the changed column attributes
        (SQLAlchemy) or of the fields passed to ``save(update_fields=...)`` (Tortoise), or
        ``None`` (an INSERT, or a save of every field).
    :param created: whether the object will be INSERTed. Only the SQLAlchemy adapter sends
        it (Django and Tortoise do not): read it as ``kwargs.get("created")`` in a receiver
        meant for both.
    """


@signal
def post_save(
    sender: type[Any],
    *,
    instance: Any,
    created: bool,
    raw: bool,
    using: Any,
    update_fields: frozenset[str] | None,
) -> Any:
    """Sent after an instance was written: the place for reactions to a new or changed row.

    The SQLAlchemy adapter sends it from ``after_flush``, once every row of the flush is
    written and primary keys are set, inside the same transaction; Tortoise's, inside
    ``Model.save()`` after the write. For side effects that must not happen if the
    transaction later rolls back (an email), install the SQLAlchemy adapter with
    ``defer_post_until_commit=True``: it is then sent once the transaction committed.

    :param sender: the instance's model class.
    :param instance: the object that was written.
    :param created: ``True`` for an INSERT, ``False`` for an UPDATE.
    :param raw: always ``False``.
    :param using: what to query through, as for ``pre_save``.
    :param update_fields: as for ``pre_save``: the changed field names, or ``None``.
    """


@signal
def pre_delete(sender: type[Any], *, instance: Any, using: Any, origin: Any) -> Any:
    """Sent before an instance is deleted: the place to refuse a delete or clean up first.

    The SQLAlchemy adapter sends it from ``before_flush`` for every object the flush deletes,
    cascaded deletes and delete-orphans included; Tortoise's, inside ``Model.delete()``. A
    receiver that raises aborts the delete.

    :param sender: the instance's model class.
    :param instance: the object about to be deleted.
    :param using: what to query through, as for ``pre_save``.
    :param origin: the instance whose deletion started it (Django's; here the instance
        itself).
    """


@signal
def post_delete(sender: type[Any], *, instance: Any, using: Any, origin: Any) -> Any:
    """Sent after an instance was deleted: the place to drop what refers to it elsewhere.

    The SQLAlchemy adapter sends it from ``after_flush`` (or after the commit, with
    ``defer_post_until_commit=True``); Tortoise's, inside ``Model.delete()`` after the
    DELETE.

    :param sender: the instance's model class.
    :param instance: the object that was deleted.
    :param using: what to query through, as for ``pre_save``.
    :param origin: the instance whose deletion started it (here the instance itself).
    """


@signal
def m2m_changed(
    sender: Any,
    *,
    instance: Any,
    action: str,
    reverse: bool,
    model: type[Any],
    pk_set: Collection[Any] | None,
    using: Any,
    objects: tuple[Any, ...] | None = None,
) -> Any:
    """Sent before and after a many-to-many relation changes, as Django's ``m2m_changed``.

    The SQLAlchemy adapter sends it for relationships with a ``secondary`` table, from the
    flush (``pre_*`` before it, ``post_*`` after); Tortoise's, around
    ``ManyToManyRelation.add()``, ``remove()`` and ``clear()``.

    :param sender: the association: SQLAlchemy's secondary ``Table``, or Tortoise's through
        table name (a string, so ``sender="event_team"`` works).
    :param instance: the object whose collection changed.
    :param action: ``"pre_add"``, ``"post_add"``, ``"pre_remove"``, ``"post_remove"``,
        ``"pre_clear"`` or ``"post_clear"``.
    :param reverse: whether the change was made from the reverse side of the relation.
    :param model: the class of the objects added or removed.
    :param pk_set: the primary keys of the objects added or removed, ``None`` for a clear.
        In SQLAlchemy's ``pre_*`` actions it lacks objects the same flush inserts (they have
        no key yet): ``objects`` has them.
    :param using: what to query through, as for ``pre_save``.
    :param objects: the related instances themselves; only the SQLAlchemy adapter sends
        them, ``None`` otherwise.
    """


@signal
def pre_bulk(
    sender: type[Any],
    *,
    kind: str,
    statement: Any,
    pk_set: frozenset[Any] | None,
    using: Any,
) -> Any:
    """Sent before a statement that changes many rows at once runs (not in Django).

    Bulk statements fire no per-object signal, so this is how a cache or search index hears
    of them: the SQLAlchemy adapter sends it for ORM-enabled ``insert(Model)``,
    ``update(Model)`` and ``delete(Model)`` run through ``session.execute()``. A receiver
    that raises stops the statement.

    :param sender: the model class the statement targets.
    :param kind: ``"insert"``, ``"update"`` or ``"delete"``.
    :param statement: the SQLAlchemy statement.
    :param pk_set: the frozenset of affected primary keys where they are known before the
        statement runs (from its parameters, or a ``SELECT`` of the keys an ``update`` or
        ``delete`` matches, run only when a bulk receiver is connected), else ``None``.
    :param using: the session that executes it.
    """


@signal
def post_bulk(
    sender: type[Any],
    *,
    kind: str,
    statement: Any,
    pk_set: frozenset[Any] | None,
    using: Any,
) -> Any:
    """Sent after a statement that changed many rows at once ran (not in Django).

    The SQLAlchemy adapter sends it after ORM-enabled ``insert``/``update``/``delete``
    statements (or after the commit, with ``defer_post_until_commit=True``): the place to
    invalidate what the rows were cached as.

    :param sender: the model class the statement targeted.
    :param kind: ``"insert"``, ``"update"`` or ``"delete"``.
    :param statement: the SQLAlchemy statement.
    :param pk_set: the frozenset of affected primary keys where they are known (from the
        parameters, the matching keys read before an ``update``/``delete``, or an
        ``insert``'s ``RETURNING``), else ``None``.
    :param using: the session that executed it.
    """


@signal
def request_started(sender: Any, *, scope: MutableMapping[str, Any]) -> Any:
    """Sent when :class:`~asignals.contrib.asgi.SignalsMiddleware` starts serving a request.

    Sent before the app runs, for every HTTP request and websocket connection: the place for
    per-request bookkeeping that should not live in each app or framework (metrics, access
    logs, a connection count). A receiver that raises fails the request, as in Django.

    :param sender: the application: ``scope["app"]`` when the framework sets it (Starlette
        and FastAPI do), else the app the middleware wraps, or the middleware's ``sender=``.
    :param scope: the ASGI connection scope (``scope["path"]``, ``scope["headers"]``, ...).
    """


@signal
def request_finished(sender: Any, *, scope: MutableMapping[str, Any]) -> Any:
    """Sent when a request was served, also when the app raised or the client went away.

    Sent by :class:`~asignals.contrib.asgi.SignalsMiddleware` once the app has returned or
    raised, robustly (a failing receiver is logged, never raised into the server), and even
    when the request is cancelled: the place for per-request cleanup and timing. Held
    ``send_after_response`` sends are delivered after its receivers.

    :param sender: the application, as for ``request_started``.
    :param scope: the ASGI connection scope.
    """


@signal
def got_request_exception(
    sender: Any, *, scope: MutableMapping[str, Any], exception: BaseException
) -> Any:
    """Sent when the app raised while serving a request, before ``request_finished``.

    Sent by :class:`~asignals.contrib.asgi.SignalsMiddleware`, robustly: a failing receiver is
    logged and never masks the app's exception, which is re-raised. The place to report
    errors (to an error tracker, a log) once for every framework.

    :param sender: the application, as for ``request_started``.
    :param scope: the ASGI connection scope.
    :param exception: the exception the app raised.
    """


__all__ = [
    "got_request_exception",
    "m2m_changed",
    "post_bulk",
    "post_delete",
    "post_init",
    "post_save",
    "pre_bulk",
    "pre_delete",
    "pre_init",
    "pre_save",
    "request_finished",
    "request_started",
]
