"""Django's model signals for SQLAlchemy 2 ``AsyncSession`` flushes.

``install()`` adds a few ``Session`` event listeners; after that, every flush of an
``AsyncSession`` in scope sends :mod:`asignals.signals`' ``pre_save``/``post_save``,
``pre_delete``/``post_delete`` and ``m2m_changed`` with Django's keyword arguments, and
ORM-enabled ``insert``/``update``/``delete`` statements send ``pre_bulk``/``post_bulk``.

Why it is built this way:

- SQLAlchemy's asyncio layer runs the ordinary (sync) ``Session`` inside a greenlet. A sync event
  hook can therefore hand a coroutine to the event loop with ``await_only`` and get its result
  back: async receivers are really awaited *inside* the flush, on the same loop, no thread hop.
- ``pre_save``/``pre_delete`` are sent from ``before_flush``, the one hook where the session may
  still be changed freely: a receiver can set attributes, add or delete objects (the new ones get
  their own ``pre_save``), and do async I/O. ``created`` is "the object is pending (will be
  INSERTed)"; ``update_fields`` is the set of changed column attribute names.
- ``post_save``/``post_delete``/``m2m_changed`` post actions are sent from ``after_flush``, once
  every row of the flush is written (primary keys are known), all in one trip to the event loop.
  With ``defer_post_until_commit=True`` they are queued on the transaction (savepoints included)
  and sent from ``after_transaction_end`` once the root transaction has committed (not from
  ``after_commit``, where no SQL may be emitted), or dropped on ROLLBACK.
- In a plain ``Session`` there is no greenlet and no loop to await on: the coroutine of the
  sends is stepped in place, which runs sync receivers and async ones that never suspend.
- A ``pre_*`` receiver that raises aborts the flush before any of its SQL is sent and rolls the
  transaction back, the same state a failed flush leaves (call ``rollback()`` or let
  ``session.begin()`` do it before using the session again).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import async_session as _async_session_of
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.state import InstanceState

from .. import signals
from .._signal import AsyncSignal
from . import _sqla_bulk, _sqla_m2m

try:  # SQLAlchemy 2.1 renamed await_only() to await_(); 2.0 has only the old name.
    from sqlalchemy.util import await_ as _await_only
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util import await_only as _await_only

try:
    from sqlalchemy.util.concurrency import in_greenlet as _in_greenlet
except ImportError:  # pragma: no cover - older SQLAlchemy 2.0

    def _in_greenlet() -> bool:
        return True


__all__ = ["install", "installed", "uninstall"]

_SCOPE_KEY = "asignals.contrib.sqlalchemy.scope"
_MAX_ROUNDS = 100

Send = tuple[AsyncSignal, Any, dict[str, Any]]


@dataclass(eq=False)
class _Installation:
    target: Any
    matches: Callable[[Session], bool]
    defer: bool


@dataclass(eq=False)
class _Flush:
    """What one flush sent ``pre_*`` for, so ``after_flush`` sends the matching ``post_*``."""

    installation: _Installation
    using: Any
    saves: dict[InstanceState[Any], bool] = field(default_factory=dict)  # state -> created
    deletes: dict[InstanceState[Any], None] = field(default_factory=dict)
    m2m: list[_sqla_m2m.M2MChange] = field(default_factory=list)
    _wanted: dict[tuple[AsyncSignal, Any], bool] = field(default_factory=dict)

    def wants(self, signal: AsyncSignal, sender: Any) -> bool:
        """Whether ``signal`` has receivers for ``sender`` (asked once per flush)."""
        key = (signal, sender)
        found = self._wanted.get(key)
        if found is None:
            found = self._wanted[key] = signal.has_listeners(sender)
        return found


_installations: list[_Installation] = []
_flushes: weakref.WeakKeyDictionary[Session, _Flush] = weakref.WeakKeyDictionary()
_deferred: weakref.WeakKeyDictionary[SessionTransaction, list[Send]] = weakref.WeakKeyDictionary()
_committed: weakref.WeakSet[SessionTransaction] = weakref.WeakSet()


# -- installing ----------------------------------------------------------------------------


def install(target: Any = None, *, defer_post_until_commit: bool = False) -> None:
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
    """
    if not isinstance(defer_post_until_commit, bool):
        raise TypeError(
            f"defer_post_until_commit must be True or False, got {defer_post_until_commit!r}"
        )
    for existing in _installations:
        if existing.target is target:
            existing.defer = defer_post_until_commit
            return
    matches = _matcher(target)
    if not _installations:
        _listen(True)
    _installations.append(_Installation(target, matches, defer_post_until_commit))


def uninstall(target: Any = None) -> bool:
    """Undo ``install(target)``; return whether it was installed."""
    for existing in _installations:
        if existing.target is target:
            _installations.remove(existing)
            if isinstance(target, async_sessionmaker):
                info = dict(target.kw.get("info") or {})
                info.pop(_SCOPE_KEY, None)
                target.configure(info=info)
            if not _installations:
                _listen(False)
            return True
    return False


def installed(target: Any = None) -> bool:
    """Whether ``install(target)`` is in effect."""
    return any(existing.target is target for existing in _installations)


def _matcher(target: Any) -> Callable[[Session], bool]:
    """A predicate telling whether a sync ``Session`` is in the scope ``target`` names."""
    if target is None:
        return lambda session: True
    if isinstance(target, async_sessionmaker):
        # Every AsyncSession is of the same class, so the factory marks its sessions' info.
        token = object()
        info = dict(target.kw.get("info") or {})
        info[_SCOPE_KEY] = token
        target.configure(info=info)
        return lambda session: session.info.get(_SCOPE_KEY) is token
    if isinstance(target, sessionmaker):
        session_class = target.class_
        return lambda session: isinstance(session, session_class)
    if isinstance(target, type) and issubclass(target, AsyncSession):
        async_class = target
        return lambda session: isinstance(_async_session_of(session), async_class)
    if isinstance(target, type) and issubclass(target, Session):
        sync_class = target
        return lambda session: isinstance(session, sync_class)
    if isinstance(target, AsyncSession):
        sync_session = target.sync_session
        return lambda session: session is sync_session
    if isinstance(target, Session):
        return lambda session: session is target
    if isinstance(target, AsyncEngine | Engine):
        engine = target.sync_engine if isinstance(target, AsyncEngine) else target
        return lambda session: getattr(session.bind, "engine", None) is engine
    raise TypeError(
        "asignals.contrib.sqlalchemy.install() takes None, an async_sessionmaker or "
        "sessionmaker, an AsyncSession or Session class or instance, or an AsyncEngine or "
        f"Engine; got {target!r}"
    )


_LISTENERS: list[tuple[str, Callable[..., Any]]] = []
_FLUSH_SIGNALS = (
    signals.pre_save,
    signals.post_save,
    signals.pre_delete,
    signals.post_delete,
    signals.m2m_changed,
)


def _listen(on: bool) -> None:
    for name, fn in _LISTENERS:
        if on:
            event.listen(Session, name, fn)
        elif event.contains(Session, name, fn):
            event.remove(Session, name, fn)


def _installation_for(session: Session) -> _Installation | None:
    for candidate in reversed(_installations):
        if candidate.matches(session):
            return candidate
    return None


def _using(session: Session) -> Any:
    """What receivers get as ``using``: the session to query through (async when there is one)."""
    return _async_session_of(session) or session


# -- bridging to the event loop --------------------------------------------------------------


async def _send_all(sends: list[Send]) -> None:
    for signal, sender, kwargs in sends:
        await signal.send(sender, **kwargs)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` from a sync SQLAlchemy hook.

    In an ``AsyncSession`` operation the hook runs in SQLAlchemy's greenlet, which hands the
    coroutine to the event loop and waits for it (``await_only``). In a plain ``Session`` there
    is no loop to wait on, so the coroutine is stepped right here: sync receivers, and async
    ones that finish without suspending, run to the end; a receiver that needs an event loop
    makes the flush fail with a RuntimeError saying so.
    """
    if _in_greenlet():
        _await_only(coro)
        return
    try:
        coro.send(None)
    except StopIteration:
        return
    except Exception as exc:
        if _needs_event_loop(exc):
            raise RuntimeError(_NO_LOOP) from exc
        raise
    coro.close()  # suspended: nothing would ever resume it
    raise RuntimeError(_NO_LOOP)


_NO_LOOP = (
    "asignals.contrib.sqlalchemy: a signal receiver needs an event loop, but the flush ran in a "
    "plain (sync) Session, where receivers run without one. Sync receivers work there, and so "
    "does an async receiver that never suspends, alone on its signal; an async receiver that "
    "awaits I/O, or several async receivers of one send, need an AsyncSession (or an "
    "async_sessionmaker)."
)


def _needs_event_loop(exc: BaseException) -> bool:
    """Whether ``exc`` (or a receiver error it groups) comes from running without a loop."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_needs_event_loop(inner) for inner in exc.exceptions)
    # asyncio's "no running event loop"; AnyIO's NoEventLoopError (4.11+), or sniffio's
    # AsyncLibraryNotFoundError from older AnyIO, both RuntimeErrors.
    return isinstance(exc, RuntimeError) and (
        str(exc) == "no running event loop"
        or type(exc).__name__ in ("NoEventLoopError", "AsyncLibraryNotFoundError")
    )


# -- the flush -------------------------------------------------------------------------------


def _on_before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    installation = _installation_for(session)
    if installation is None or not any(sig.receivers for sig in _FLUSH_SIGNALS):
        _flushes.pop(session, None)
        return
    flush = _Flush(installation, _using(session))
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
        _run(_send_all(sends))
    else:
        raise RuntimeError(
            f"pre_save/pre_delete receivers kept adding objects to the session for "
            f"{_MAX_ROUNDS} rounds; is a receiver creating an object for every object saved?"
        )
    if not signals.m2m_changed.receivers:
        return
    states = [instance_state(o) for o in session.new]
    states += [instance_state(o) for o in session.dirty]
    flush.m2m = _sqla_m2m.collect(states, lambda t: flush.wants(signals.m2m_changed, t))
    sends = [
        (signals.m2m_changed, change.through, change.kwargs("pre", flush.using))
        for change in flush.m2m
    ]
    if sends:
        _run(_send_all(sends))


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


def _deliver(session: Session, installation: _Installation, sends: list[Send]) -> None:
    """Send ``post_*`` now, or queue them on the transaction when deferring until commit."""
    if not sends:
        return
    if installation.defer:
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is not None:
            _deferred.setdefault(transaction, []).extend(sends)
            return
    _run(_send_all(sends))


# -- deferral until commit -------------------------------------------------------------------


@contextlib.contextmanager
def _outside_begin_block(session: Session) -> Iterator[None]:
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
            await signal.send(sender, **kwargs)
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
                _run(_send_all_deferred(sends))
        return
    if transaction.nested and sends:
        parent = transaction.parent
        while parent is not None and not parent.nested and parent.parent is not None:
            parent = parent.parent
        if parent is not None:
            _deferred.setdefault(parent, []).extend(sends)


# -- bulk statements -------------------------------------------------------------------------


def _on_do_orm_execute(orm_execute_state: Any) -> Any:
    state = orm_execute_state
    if not (state.is_insert or state.is_update or state.is_delete):
        return None
    session = state.session
    installation = _installation_for(session)
    if installation is None:
        return None
    return _sqla_bulk.execute(
        state,
        _using(session),
        _run,
        lambda sends: _deliver(session, installation, sends),
    )


_LISTENERS.extend(
    [
        ("before_flush", _on_before_flush),
        ("after_flush", _on_after_flush),
        ("after_flush_postexec", _on_after_flush_postexec),
        ("after_commit", _on_after_commit),
        ("after_rollback", _on_after_rollback),
        ("after_transaction_end", _on_after_transaction_end),
        ("do_orm_execute", _on_do_orm_execute),
    ]
)
