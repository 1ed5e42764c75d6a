"""Running the sends of a flush from SQLAlchemy's sync event hooks.

SQLAlchemy's asyncio layer runs the ordinary (sync) ``Session`` inside a greenlet. A sync event
hook can therefore hand a coroutine to the event loop with ``await_only`` and get its result
back: async receivers are really awaited *inside* the flush, on the same loop, no thread hop.

Two cases have no greenlet to hand the coroutine through:

- a plain ``Session``: there is no loop to await on, so the coroutine is stepped in place, which
  runs sync receivers and async ones that never suspend;
- an ``AsyncSession`` whose flush was started by sync attribute access outside ``await`` (a lazy
  load that autoflushes, ``obj.children``): SQLAlchemy itself cannot do that I/O either
  (``MissingGreenlet``), so the flush is refused before any receiver runs.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, cast

from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import async_session as _async_session_of
from sqlalchemy.orm import Session

from ... import AsyncSignal
from ...bridge._sending import local_only
from ._scope import installations

try:  # SQLAlchemy 2.1 renamed await_only() to await_(); 2.0 has only the old name.
    from sqlalchemy.util import await_ as _await_only
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util import await_only as _await_only

try:
    from sqlalchemy.util.concurrency import in_greenlet as _in_greenlet
except ImportError:  # pragma: no cover - older SQLAlchemy 2.0

    def _in_greenlet() -> bool:
        return True


__all__: list[str] = []

Send = tuple[AsyncSignal, Any, dict[str, Any]]


async def send_all(sends: list[Send]) -> None:
    for signal, sender, kwargs in sends:
        await send_local(signal, sender, kwargs)


async def send_local(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> Any:
    """``signal.send``, except that a signal an outbox carries is not published by its bridge.

    Its cross-process copy is the outbox row, written in the transaction; the local send holds
    live objects (the instance, the session) that could not be encoded anyway.
    """
    if not outboxed(signal):
        return await signal.send(sender, **kwargs)
    return await send_unpublished(signal, sender, kwargs)


async def send_unpublished(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> Any:
    """Run ``signal``'s local receivers without any bridge encoding or publishing the send."""
    token = local_only.set(True)
    try:
        return await signal.send(sender, **kwargs)
    finally:
        local_only.reset(token)


def outboxed(signal: AsyncSignal) -> bool:
    """Whether an installed outbox carries ``signal``."""
    return any(i.outbox is not None and i.outbox.carries(signal) for i in installations)


def run(session: Session, coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` (the sends of a flush of ``session``) from a sync SQLAlchemy hook."""
    if _in_greenlet():
        _await_only(coro)
        return
    if _async_session_of(session) is not None:
        coro.close()  # never started: nothing ran, and no "never awaited" warning
        raise MissingGreenlet(OUTSIDE_AWAIT)
    try:
        coro.send(None)
    except StopIteration:
        return
    except Exception as exc:
        if _needs_event_loop(exc):
            raise RuntimeError(NO_LOOP) from exc
        raise
    coro.close()  # suspended: nothing would ever resume it
    raise RuntimeError(NO_LOOP)


OUTSIDE_AWAIT = (
    "asignals.contrib.sqlalchemy: an AsyncSession flushed outside `await`, so neither its SQL "
    "nor the signal receivers can run (SQLAlchemy's MissingGreenlet: I/O attempted outside "
    "await). The usual cause is a lazy load that autoflushes, such as `obj.name = 'b'; "
    "obj.children`: load the attribute with `await obj.awaitable_attrs.children` (AsyncAttrs), "
    "eager-load it (`selectinload()` or `lazy='selectin'`), or `await session.flush()` first. "
    "No receiver ran."
)

NO_LOOP = (
    "asignals.contrib.sqlalchemy: a signal receiver needs an event loop, but the flush ran in a "
    "plain (sync) Session, where receivers run without one. Sync receivers work there, and so "
    "does an async receiver that never suspends, alone on its signal; an async receiver that "
    "awaits I/O, or several async receivers of one send, need an AsyncSession (or an "
    "async_sessionmaker)."
)


def _needs_event_loop(exc: BaseException) -> bool:
    """Whether ``exc`` (or a receiver error it groups) comes from running without a loop."""
    if isinstance(exc, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", exc)
        return any(_needs_event_loop(inner) for inner in group.exceptions)
    # asyncio's "no running event loop"; AnyIO's NoEventLoopError (4.11+), or sniffio's
    # AsyncLibraryNotFoundError from older AnyIO, both RuntimeErrors.
    return isinstance(exc, RuntimeError) and (
        str(exc) == "no running event loop"
        or type(exc).__name__ in ("NoEventLoopError", "AsyncLibraryNotFoundError")
    )
