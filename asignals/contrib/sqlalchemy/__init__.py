"""Django's model signals for SQLAlchemy 2 ``AsyncSession`` flushes.

``install()`` adds a few ``Session`` event listeners; after that, every flush of an
``AsyncSession`` in scope sends :mod:`asignals.signals`' ``pre_save``/``post_save``,
``pre_delete``/``post_delete`` and ``m2m_changed`` with Django's keyword arguments, and
ORM-enabled ``insert``/``update``/``delete`` statements send ``pre_bulk``/``post_bulk``.

With an :class:`Outbox`, the sends its bridge carries also get a durable cross-process copy,
written in the flush's transaction and published after COMMIT by :meth:`Outbox.relay`.

Async receivers are awaited inside the flush, on the session's event loop (see ``_run``);
``pre_*`` receivers may still change the session, ``post_*`` ones see every row of the flush
written (see ``_flush``). In a plain ``Session`` sync receivers run, and async ones that never
suspend.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from . import _scope
from ._flush import LISTENERS
from ._outbox import Outbox
from ._relay import Relay
from ._wire import register_model

__all__ = ["Outbox", "Relay", "install", "installed", "register_model", "uninstall"]


def install(
    target: Any = None, *, defer_post_until_commit: bool = False, outbox: Outbox | None = None
) -> None:
    """Send the model signals for flushes of the sessions ``target`` designates.

    ``target`` is one of:

    - ``None``: every session (each ``AsyncSession`` and any plain ``Session``);
    - an ``async_sessionmaker`` or ``sessionmaker``: the sessions it creates from now on;
    - an ``AsyncSession`` or ``Session`` subclass: sessions of that class;
    - an ``AsyncSession`` or ``Session`` instance: that session;
    - an ``AsyncEngine`` or ``Engine``: sessions whose ``bind`` is that engine.

    With ``defer_post_until_commit=True``, ``post_save``, ``post_delete``, ``post_bulk`` and the
    ``post_*`` actions of ``m2m_changed`` wait until the transaction commits and are dropped if
    it rolls back. Installing the same target again replaces its options. When several
    installations match a session, the most recent one decides.

    With ``outbox=``, the ``post_*`` sends of signals the outbox's bridge carries are also
    written to the outbox table in the flush's transaction (see :class:`Outbox`), deferred or
    not; a send that cannot be encoded fails the flush.
    """
    if outbox is not None and not isinstance(outbox, Outbox):
        raise TypeError(
            f"outbox must be an asignals.contrib.sqlalchemy.Outbox, got {outbox!r}: "
            "install(Session, outbox=Outbox(bridge, metadata=Base.metadata))"
        )
    if not isinstance(defer_post_until_commit, bool):
        raise TypeError(
            f"defer_post_until_commit must be True or False, got {defer_post_until_commit!r}"
        )
    existing = _scope.find(target)
    if existing is not None:
        existing.defer = defer_post_until_commit
        existing.outbox = outbox
        return
    matches = _scope.matcher(target)
    if not _scope.installations:
        _listen(True)
    _scope.installations.append(
        _scope.Installation(target, matches, defer_post_until_commit, outbox)
    )
    if outbox is not None and outbox.engine is None:
        outbox.engine = _scope.engine_of(target)


def uninstall(target: Any = None) -> bool:
    """Undo ``install(target)``; return whether it was installed."""
    existing = _scope.find(target)
    if existing is None:
        return False
    _scope.installations.remove(existing)
    _scope.forget(target)
    if not _scope.installations:
        _listen(False)
    return True


def installed(target: Any = None) -> bool:
    """Whether ``install(target)`` is in effect."""
    return _scope.find(target) is not None


def _listen(on: bool) -> None:
    for name, fn in LISTENERS:
        if on:
            event.listen(Session, name, fn)
        elif event.contains(Session, name, fn):
            event.remove(Session, name, fn)
