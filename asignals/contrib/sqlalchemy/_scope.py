"""Which sessions an ``install()`` covers, and with what options.

``install(target)`` records an :class:`Installation`; the flush hooks, which SQLAlchemy calls for
every ``Session``, ask :func:`installation_for` whether (and how) to send for a session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import async_session as _async_session_of
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from ._outbox import Outbox

__all__: list[str] = []

SCOPE_KEY = "asignals.contrib.sqlalchemy.scope"


@dataclass(eq=False)
class Installation:
    """One ``install()`` call: the sessions it designates and its options."""

    target: Any
    matches: Callable[[Session], bool]
    defer: bool
    outbox: Outbox | None = None


installations: list[Installation] = []


def installation_for(session: Session) -> Installation | None:
    """The most recent installation covering ``session``, or None."""
    for candidate in reversed(installations):
        if candidate.matches(session):
            return candidate
    return None


def find(target: Any) -> Installation | None:
    for existing in installations:
        if existing.target is target:
            return existing
    return None


def using(session: Session) -> Any:
    """What receivers get as ``using``: the session to query through (async when there is one)."""
    return _async_session_of(session) or session


def forget(target: Any) -> None:
    """Undo what :func:`matcher` marked on ``target``."""
    if isinstance(target, async_sessionmaker):
        info = dict(target.kw.get("info") or {})
        info.pop(SCOPE_KEY, None)
        target.configure(info=info)


def matcher(target: Any) -> Callable[[Session], bool]:
    """A predicate telling whether a sync ``Session`` is in the scope ``target`` names."""
    if target is None:
        return lambda session: True
    if isinstance(target, async_sessionmaker):
        # Every AsyncSession is of the same class, so the factory marks its sessions' info.
        token = object()
        info = dict(target.kw.get("info") or {})
        info[SCOPE_KEY] = token
        target.configure(info=info)
        return lambda session: session.info.get(SCOPE_KEY) is token
    if isinstance(target, sessionmaker):
        session_class = cast("sessionmaker[Session]", target).class_
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


def engine_of(target: Any) -> AsyncEngine | None:
    """The async engine ``target`` binds its sessions to, when it names one."""
    if isinstance(target, AsyncEngine):
        return target
    bind = target.kw.get("bind") if isinstance(target, async_sessionmaker) else None
    if bind is None and isinstance(target, AsyncSession):
        bind = target.bind
    return bind if isinstance(bind, AsyncEngine) else None
