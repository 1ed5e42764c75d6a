"""Async twins of Django's built-in signals.

The keyword arguments match Django's, so a receiver ported from Django keeps its signature:

- ``pre_init(sender=Model, args, kwargs)``, ``post_init(sender=Model, instance)``
- ``pre_save(sender=Model, instance, raw, using, update_fields)``
- ``post_save(sender=Model, instance, created, raw, using, update_fields)``
- ``pre_delete(sender=Model, instance, using, origin)``,
  ``post_delete(sender=Model, instance, using, origin)``
- ``m2m_changed(sender=through, instance, action, reverse, model, pk_set, using)``
- ``pre_bulk(sender=Model, kind, statement, pk_set, using)``,
  ``post_bulk(sender=Model, kind, statement, pk_set, using)`` — not in Django: sent for
  statements that change many rows at once (SQLAlchemy's ORM-enabled ``insert``/``update``/
  ``delete``) and so fire no per-object signal. ``kind`` is ``"insert"``, ``"update"`` or
  ``"delete"``; ``pk_set`` is the frozenset of affected primary keys where they are known (from
  the statement's parameters, a ``RETURNING`` clause, or a read of the matching keys before an
  ``update``/``delete``), else ``None``.
- ``request_started(sender=app, scope)``, ``request_finished(sender=app, scope)``,
  ``got_request_exception(sender=app, scope, exception)``

The adapters in :mod:`asignals.contrib` send them.
"""

from __future__ import annotations

from ._signal import AsyncSignal

pre_init = AsyncSignal(name="pre_init")
post_init = AsyncSignal(name="post_init")
pre_save = AsyncSignal(name="pre_save")
post_save = AsyncSignal(name="post_save")
pre_delete = AsyncSignal(name="pre_delete")
post_delete = AsyncSignal(name="post_delete")
m2m_changed = AsyncSignal(name="m2m_changed")
pre_bulk = AsyncSignal(name="pre_bulk")
post_bulk = AsyncSignal(name="post_bulk")

request_started = AsyncSignal(name="request_started")
request_finished = AsyncSignal(name="request_finished")
got_request_exception = AsyncSignal(name="got_request_exception")

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
