"""Async twins of Django's built-in signals, typed with the keyword arguments the adapters send.

The keyword arguments match Django's, so a receiver ported from Django keeps its signature;
each signal is declared from a spec function (see :func:`asignals.signal`), so mypy and pyright
check a receiver against it and a send is refused at run time if a keyword is missing or
unknown. Senders are model classes (``type[Any]``: any ORM's), except ``m2m_changed``'s (the
through model or table) and the request signals' (the ASGI app).

- ``pre_save``/``post_save``: ``created`` is "the object is pending (will be INSERTed)"
  (SQLAlchemy also sends it on ``pre_save``, Tortoise and Django do not); ``update_fields`` the
  frozenset of changed column attribute names, or None.
- ``pre_delete``/``post_delete``: ``origin`` is the instance whose deletion started it.
- ``m2m_changed``: ``action`` is ``"pre_add"``, ``"post_add"``, ``"pre_remove"``, ...,
  ``"post_clear"``; ``pk_set`` the affected primary keys (None for a clear); SQLAlchemy also
  sends the related ``objects``.
- ``pre_bulk``/``post_bulk`` — not in Django: sent for statements that change many rows at once
  (SQLAlchemy's ORM-enabled ``insert``/``update``/``delete``) and so fire no per-object signal.
  ``kind`` is ``"insert"``, ``"update"`` or ``"delete"``; ``pk_set`` is the frozenset of
  affected primary keys where they are known (from the statement's parameters, a ``RETURNING``
  clause, or a read of the matching keys before an ``update``/``delete``), else ``None``.
- ``request_started``/``request_finished``: ``scope`` is the ASGI scope;
  ``got_request_exception`` adds the ``exception`` the app raised.
- ``pre_init``/``post_init``: Django's, for adapters that send them (none of ours yet).

The adapters in :mod:`asignals.contrib` send them.
"""

from __future__ import annotations

from collections.abc import Collection, MutableMapping
from typing import Any

from ._signal import signal


@signal
def pre_init(sender: type[Any], *, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Sent before a model instance's ``__init__`` runs (Django's ``pre_init``)."""


@signal
def post_init(sender: type[Any], *, instance: Any) -> Any:
    """Sent after a model instance's ``__init__`` ran (Django's ``post_init``)."""


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
    """Sent before an instance is written (from SQLAlchemy's ``before_flush``)."""


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
    """Sent after an instance was written; ``created`` tells an INSERT from an UPDATE."""


@signal
def pre_delete(sender: type[Any], *, instance: Any, using: Any, origin: Any) -> Any:
    """Sent before an instance is deleted."""


@signal
def post_delete(sender: type[Any], *, instance: Any, using: Any, origin: Any) -> Any:
    """Sent after an instance was deleted."""


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
    """Sent before and after a many-to-many relation changes (``pre_add``, ``post_add``, ...)."""


@signal
def pre_bulk(
    sender: type[Any],
    *,
    kind: str,
    statement: Any,
    pk_set: frozenset[Any] | None,
    using: Any,
) -> Any:
    """Sent before an ORM-enabled ``insert``/``update``/``delete`` of many rows runs."""


@signal
def post_bulk(
    sender: type[Any],
    *,
    kind: str,
    statement: Any,
    pk_set: frozenset[Any] | None,
    using: Any,
) -> Any:
    """Sent after an ORM-enabled ``insert``/``update``/``delete`` of many rows ran."""


@signal
def request_started(sender: Any, *, scope: MutableMapping[str, Any]) -> Any:
    """Sent when the ASGI middleware starts serving a request."""


@signal
def request_finished(sender: Any, *, scope: MutableMapping[str, Any]) -> Any:
    """Sent when a request was served, also when the app raised or the client went away."""


@signal
def got_request_exception(
    sender: Any, *, scope: MutableMapping[str, Any], exception: BaseException
) -> Any:
    """Sent when the app raised while serving a request, before ``request_finished``."""


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
