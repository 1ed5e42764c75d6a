"""The flush hooks: ``pre_*`` from ``before_flush``, ``post_*`` from ``after_flush``.

- ``pre_save``/``pre_delete`` are sent from ``before_flush``, the one hook where the session may
  still be changed freely: a receiver can set attributes, add or delete objects (the new ones get
  their own ``pre_save``), and do async I/O. ``created`` is "the object is pending (will be
  INSERTed)"; ``update_fields`` is the set of changed column attribute names.
- ``post_save``/``post_delete``/``m2m_changed`` post actions are sent from ``after_flush``, once
  every row of the flush is written (primary keys are known), all in one trip to the event loop.
  With ``defer_post_until_commit=True`` they are queued on the transaction (savepoints included)
  and sent from ``after_transaction_end`` once the root transaction has committed (not from
  ``after_commit``, where no SQL may be emitted), or dropped on ROLLBACK. With an outbox, the
  sends its bridge carries are written to the outbox table right away, in the transaction.
- A ``pre_*`` receiver that raises aborts the flush before any of its SQL is sent and rolls the
  transaction back, the same state a failed flush leaves (call ``rollback()`` or let
  ``session.begin()`` do it before using the session again).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.state import InstanceState

from ... import AsyncSignal, signals
from . import _bulk, _m2m
from ._run import Send, run, send_all, send_local
from ._scope import Installation, installation_for, using

__all__: list[str] = []

_MAX_ROUNDS = 100


def observed(signal: AsyncSignal, sender: Any = None) -> bool:
    """Whether a send of ``signal`` from ``sender`` would be seen by anyone in this process.

    A receiver for ``sender`` (or any sender) sees it; so does whatever wrapped the signal's
    ``send`` on the instance: ``asignals.testing``'s recorder, which records sends that reach no
    receiver, and a running bridge, which publishes them.
    """
    return signal.has_listeners(sender) or "send" in vars(signal)


def _active(signal: AsyncSignal) -> bool:
    """Whether ``signal`` could be seen for some sender (the flush's cheap first check)."""
    return bool(signal.receivers) or "send" in vars(signal)


@dataclass(eq=False)
class _Flush:
    """What one flush sent ``pre_*`` for, so ``after_flush`` sends the matching ``post_*``."""

    installation: Installation
    using: Any
    # state -> created
    saves: dict[InstanceState[Any], bool] = field(default_factory=dict[InstanceState[Any], bool])
    deletes: dict[InstanceState[Any], None] = field(default_factory=dict[InstanceState[Any], None])
    m2m: list[_m2m.M2MChange] = field(default_factory=list[_m2m.M2MChange])
    _wanted: dict[tuple[AsyncSignal, Any], bool] = field(
        default_factory=dict[tuple[AsyncSignal, Any], bool]
    )

    def wants(self, signal: AsyncSignal, sender: Any) -> bool:
        """Whether ``signal`` from ``sender`` is observed or carried (asked once per flush)."""
        key = (signal, sender)
        found = self._wanted.get(key)
        if found is None:
            found = self._wanted[key] = observed(signal, sender) or carried(
                self.installation, signal
            )
        return found


def carried(installation: Installation, signal: AsyncSignal) -> bool:
    """Whether the installation's outbox takes a copy of ``signal``'s sends."""
    outbox = installation.outbox
    return outbox is not None and outbox.carries(signal)


_flushes: weakref.WeakKeyDictionary[Session, _Flush] = weakref.WeakKeyDictionary()
_deferred: weakref.WeakKeyDictionary[SessionTransaction, list[Send]] = weakref.WeakKeyDictionary()
_committed: weakref.WeakSet[SessionTransaction] = weakref.WeakSet()
_FLUSH_SIGNALS = (
    signals.pre_save,
    signals.post_save,
    signals.pre_delete,
    signals.post_delete,
    signals.m2m_changed,
)
_POST_SIGNALS = (signals.post_save, signals.post_delete, signals.m2m_changed)


# -- the flush -------------------------------------------------------------------------------


def _on_before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    installation = installation_for(session)
    if installation is None or not (
        any(_active(sig) for sig in _FLUSH_SIGNALS)
        or any(carried(installation, sig) for sig in _POST_SIGNALS)
    ):
        _flushes.pop(session, None)
        return
    flush = _Flush(installation, using(session))
    _flushes[session] = flush
    try:
        _pre_phase(session, flush)
    except BaseException:
        _flushes.pop(session, None)
        _roll_back_failed_flush(session)
        raise


def _pre_phase(session: Session, flush: _Flush) -> None:
    """Send ``pre_save``/``pre_delete`` until receivers stop adding work, then m2m ``pre_*``."""
    for _ in range(_MAX_ROUNDS):
        sends = _new_work(session, flush)
        if not sends:
            break  # nothing new, or no receiver ran that could have added work
        run(session, send_all(sends))
    else:
        raise RuntimeError(
            f"pre_save/pre_delete receivers kept adding objects to the session for "
            f"{_MAX_ROUNDS} rounds; is a receiver creating an object for every object saved?"
        )
    m2m = signals.m2m_changed
    if not (_active(m2m) or carried(flush.installation, m2m)):
        return
    states = [instance_state(o) for o in session.new]
    states += [instance_state(o) for o in session.dirty]
    flush.m2m = _m2m.collect(states, lambda t: flush.wants(signals.m2m_changed, t))
    sends = [
        (signals.m2m_changed, change.through, change.kwargs("pre", flush.using))
        for change in flush.m2m
    ]
    if sends:
        run(session, send_all(sends))


def _new_work(session: Session, flush: _Flush) -> list[Send]:
    """Record the objects the flush will write that got no ``pre_*`` yet; return the sends."""
    sends: list[Send] = []
    saves = flush.saves
    wanted: dict[type[Any], bool] = {}
    for obj in session.new:
        state = instance_state(obj)
        if state not in saves:
            saves[state] = True
            cls = state.class_
            wants = wanted.get(cls)
            if wants is None:
                wants = wanted[cls] = flush.wants(signals.pre_save, cls)
            if wants:
                sends.append(_pre_save(state, obj, True, flush))
    for obj in session.dirty:
        state = instance_state(obj)
        if state in flush.saves or state in flush.deletes:
            continue
        if _is_persistent_orphan(state):
            flush.deletes[state] = None
            if flush.wants(signals.pre_delete, state.class_):
                sends.append((signals.pre_delete, state.class_, _delete_kwargs(obj, flush)))
        elif session.is_modified(obj, include_collections=False):
            flush.saves[state] = False
            if flush.wants(signals.pre_save, state.class_):
                sends.append(_pre_save(state, obj, False, flush))
    for obj in session.deleted:
        state = instance_state(obj)
        if state not in flush.deletes:
            flush.saves.pop(state, None)
            flush.deletes[state] = None
            if flush.wants(signals.pre_delete, state.class_):
                sends.append((signals.pre_delete, state.class_, _delete_kwargs(obj, flush)))
    return sends


def _pre_save(state: InstanceState[Any], obj: object, created: bool, flush: _Flush) -> Send:
    return (
        signals.pre_save,
        state.class_,
        {
            "instance": obj,
            "created": created,
            "raw": False,
            "using": flush.using,
            "update_fields": None if created else _changed_fields(state),
        },
    )


def _delete_kwargs(obj: object, flush: _Flush) -> dict[str, Any]:
    return {"instance": obj, "using": flush.using, "origin": obj}


def _changed_fields(state: InstanceState[Any]) -> frozenset[str]:
    """Column attribute names whose value changes, including FKs set through a many-to-one."""
    mapper = state.mapper
    attrs = state.attrs
    changed = {prop.key for prop in mapper.column_attrs if attrs[prop.key].history.has_changes()}
    for rel in mapper.relationships:
        if rel.direction.name == "MANYTOONE" and attrs[rel.key].history.has_changes():
            for column in rel.local_columns:
                changed.add(mapper.get_property_by_column(column).key)
    return frozenset(changed)


def _is_persistent_orphan(state: InstanceState[Any]) -> bool:
    # Mapper._is_orphan is what Session._flush itself uses to turn a de-parented object with a
    # delete-orphan cascade into a DELETE; there is no public spelling of it.
    is_orphan = getattr(state.mapper, "_is_orphan", None)
    return bool(state.has_identity and is_orphan is not None and is_orphan(state))


def _roll_back_failed_flush(session: Session) -> None:
    """Leave the session as a failed flush does: transaction rolled back, awaiting rollback().

    The error came from ``before_flush``, before SQLAlchemy opened the flush's subtransaction,
    so SQLAlchemy would not roll anything back. Opening that subtransaction and rolling it back
    is exactly what ``Session._flush`` does when its SQL fails (there is no public spelling).
    """
    begin = getattr(session, "_autobegin_t", None)
    if begin is None:  # pragma: no cover - a future SQLAlchemy; the error still propagates
        return
    with contextlib.suppress(Exception):  # never mask the receiver's error
        begin()._begin().rollback(_capture_exception=True)


def _on_after_flush(session: Session, flush_context: Any) -> None:
    flush = _flushes.get(session)
    if flush is None:
        return
    sends: list[Send] = []
    wanted: dict[type[Any], bool] = {}
    for state, created in flush.saves.items():
        cls = state.class_
        wants = wanted.get(cls)
        if wants is None:
            wants = wanted[cls] = flush.wants(signals.post_save, cls)
        obj = state.obj() if wants else None
        if obj is None:
            continue
        kwargs = {
            "instance": obj,
            "created": created,
            "raw": False,
            "using": flush.using,
            "update_fields": None if created else _changed_fields(state),
        }
        sends.append((signals.post_save, state.class_, kwargs))
    for state in flush.deletes:
        obj = state.obj()
        if obj is not None and flush.wants(signals.post_delete, state.class_):
            sends.append((signals.post_delete, state.class_, _delete_kwargs(obj, flush)))
    for change in flush.m2m:
        sends.append((signals.m2m_changed, change.through, change.kwargs("post", flush.using)))
    _deliver(session, flush.installation, sends)


def _on_after_flush_postexec(session: Session, flush_context: Any) -> None:
    _flushes.pop(session, None)


def _deliver(session: Session, installation: Installation, sends: list[Send]) -> None:
    """Send ``post_*`` now, or queue them on the transaction when deferring until commit.

    The outbox's copy is written first, in the flush's transaction, whether or not the local
    sends are deferred: it must commit or roll back with the rows it describes.
    """
    if not sends:
        return
    outbox = installation.outbox
    if outbox is not None:
        outbox._write_flush(session, sends)
    if installation.defer:
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is not None:
            _deferred.setdefault(transaction, []).extend(sends)
            return
    run(session, send_all(sends))


# -- deferral until commit -------------------------------------------------------------------


@contextlib.contextmanager
def _outside_begin_block(session: Session) -> Generator[None, None, None]:
    """Let receivers start the session's next transaction during ``with session.begin():``.

    The block's commit runs these hooks while the block is still the session's transaction
    context, and SQLAlchemy refuses any SQL then ("Can't operate on closed transaction inside
    context manager") although the transaction is over. The block is set aside while the
    deferred sends run (there is no public spelling), as it is right after it exits anyway.
    """
    block = getattr(session, "_trans_context_manager", None)
    if block is None:
        yield
        return
    session._trans_context_manager = None
    try:
        yield
    finally:
        session._trans_context_manager = block


def _on_after_commit(session: Session) -> None:
    # No SQL may be emitted here (the transaction is in its "committed" state), so the sends
    # wait for after_transaction_end; this only records that the root transaction committed.
    if session.get_nested_transaction() is not None:
        return  # a savepoint was released; its sends move to the parent at transaction end
    root = session.get_transaction()
    if root is not None and root in _deferred:
        _committed.add(root)


async def _send_all_deferred(sends: list[Send]) -> None:
    # The data is committed: every deferred send is made even if one fails, and the failures
    # are raised together (out of commit()) once all have run.
    errors: list[Exception] = []
    for signal, sender, kwargs in sends:
        try:
            await send_local(signal, sender, kwargs)
        except ExceptionGroup as group:
            errors.extend(group.exceptions)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise ExceptionGroup("receivers deferred until commit raised (data committed)", errors)


def _on_after_rollback(session: Session) -> None:
    _flushes.pop(session, None)
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is not None:
        _deferred.pop(transaction, None)


def _on_after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    sends = _deferred.pop(transaction, None)
    if transaction.parent is None:
        # The transaction is closed and the session has none: receivers may query through
        # ``using`` and load expired attributes (that autobegins the next transaction).
        committed = transaction in _committed
        _committed.discard(transaction)
        if committed and sends:
            with _outside_begin_block(session):
                run(session, _send_all_deferred(sends))
        return
    if transaction.nested and sends:
        parent = transaction.parent  # not None: checked above
        while not parent.nested and parent.parent is not None:
            parent = parent.parent
        _deferred.setdefault(parent, []).extend(sends)


# -- bulk statements -------------------------------------------------------------------------


def _on_do_orm_execute(orm_execute_state: Any) -> Any:
    state = orm_execute_state
    if not (state.is_insert or state.is_update or state.is_delete):
        return None
    session = state.session
    installation = installation_for(session)
    if installation is None:
        return None
    return _bulk.execute(
        state,
        using(session),
        lambda coro: run(session, coro),
        lambda sends: _deliver(session, installation, sends),
        lambda signal, model: observed(signal, model) or carried(installation, signal),
    )


#: The ``Session`` events this module listens to while anything is installed.
LISTENERS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("before_flush", _on_before_flush),
    ("after_flush", _on_after_flush),
    ("after_flush_postexec", _on_after_flush_postexec),
    ("after_commit", _on_after_commit),
    ("after_rollback", _on_after_rollback),
    ("after_transaction_end", _on_after_transaction_end),
    ("do_orm_execute", _on_do_orm_execute),
)
