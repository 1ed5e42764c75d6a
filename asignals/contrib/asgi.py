"""Request signals for any ASGI app, and a lifespan that runs the background dispatcher.

:class:`SignalsMiddleware` is pure ASGI (no Starlette import) so it wraps Starlette, FastAPI,
Quart, Litestar or a bare ASGI callable alike. For every ``http`` and ``websocket`` connection
it sends, as Django's handlers do:

- ``request_started(sender=app, scope=scope)`` before the app runs (a receiver that raises
  fails the request, as in Django);
- ``got_request_exception(sender=app, scope=scope, exception=exc)`` when the app raises
  (robust: a failing receiver is logged and never masks the app's exception, which is
  re-raised);
- ``request_finished(sender=app, scope=scope)`` once the app has returned or raised (robust,
  and sent even when the request is cancelled).

The sender is the application object: ``scope["app"]`` when the framework sets it (Starlette
and FastAPI do, so a middleware added with ``app.add_middleware`` still reports the FastAPI
instance), else the app the middleware wraps; pass ``sender=`` to choose. Django sends the
handler class instead; an ASGI process often serves several apps, so the instance is the more
useful filter: ``@receiver(request_finished, sender=app)``.

:func:`lifespan` / :func:`make_lifespan` open :func:`asignals.dispatcher` for the app's
lifetime, so request handlers can ``send_nowait`` and shutdown drains every queued send.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import anyio

from ..background import DEFAULT_MAX_PENDING, dispatcher
from ..signals import got_request_exception, request_finished, request_started

__all__ = ["SignalsMiddleware", "lifespan", "make_lifespan"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_AppT = TypeVar("_AppT")
_StateT = TypeVar("_StateT")

_REQUEST_SCOPES = frozenset({"http", "websocket"})


def _check_asgi_app(app: object) -> None:
    """Refuse, at construction, what could never be called as ``app(scope, receive, send)``."""
    if isinstance(app, str):
        raise TypeError(
            f"SignalsMiddleware needs the ASGI application object, not the import string {app!r}"
        )
    if not callable(app):
        raise TypeError(
            f"SignalsMiddleware needs an ASGI application, an async callable "
            f"app(scope, receive, send); got {app!r} of type {type(app).__name__}"
        )
    if inspect.isclass(app):
        raise TypeError(
            f"SignalsMiddleware got the class {app.__qualname__}, not an ASGI application "
            f"instance; pass an instance (ASGI 2 double-callable classes are not supported)"
        )
    try:
        inspect.signature(app).bind(None, None, None)
    except TypeError:
        raise TypeError(
            f"SignalsMiddleware needs an ASGI application callable as app(scope, receive, "
            f"send); {app!r} does not take those three arguments"
        ) from None
    except ValueError:
        pass  # no introspectable signature (a builtin): trust it


class SignalsMiddleware:
    """ASGI middleware sending ``request_started``, ``request_finished`` and
    ``got_request_exception`` for every HTTP request and websocket connection.

    Other scopes (``lifespan``) pass straight through.
    """

    __slots__ = ("_sender", "app")

    def __init__(self, app: ASGIApp, *, sender: Any = None) -> None:
        _check_asgi_app(app)
        self.app = app
        self._sender = sender

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _REQUEST_SCOPES:
            await self.app(scope, receive, send)
            return
        sender = self._sender
        if sender is None:
            sender = scope.get("app", self.app)
        await request_started.send(sender, scope=scope)
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            await got_request_exception.send_robust(sender, scope=scope, exception=exc)
            await request_finished.send_robust(sender, scope=scope)
            raise
        except BaseException:
            # Cancelled (client gone, server stopping): still tell receivers it finished.
            with anyio.CancelScope(shield=True):
                await request_finished.send_robust(sender, scope=scope)
            raise
        await request_finished.send_robust(sender, scope=scope)


def make_lifespan(
    user_lifespan: Callable[[_AppT], AbstractAsyncContextManager[_StateT]] | None = None,
    *,
    max_pending: int | None = DEFAULT_MAX_PENDING,
    drain_timeout: float | None = None,
) -> Callable[[_AppT], AbstractAsyncContextManager[_StateT | None]]:
    """A Starlette/FastAPI ``lifespan`` that runs a background dispatcher, around your own.

    ``FastAPI(lifespan=make_lifespan(my_lifespan, drain_timeout=10))``. The dispatcher opens
    after your lifespan's startup code and is drained before its shutdown code, so background
    receivers can use what your lifespan sets up (database pools, clients) until the last
    queued send has finished. Whatever your lifespan yields (Starlette's lifespan state) is
    passed through.
    """

    @asynccontextmanager
    async def _lifespan(app: _AppT) -> AsyncIterator[_StateT | None]:
        if user_lifespan is None:
            async with dispatcher(max_pending=max_pending, drain_timeout=drain_timeout):
                yield None
            return
        async with (
            user_lifespan(app) as state,
            dispatcher(max_pending=max_pending, drain_timeout=drain_timeout),
        ):
            yield state

    return _lifespan


_default_lifespan: Callable[[object], AbstractAsyncContextManager[None]] = make_lifespan()


def lifespan(app: object) -> AbstractAsyncContextManager[None]:
    """``FastAPI(lifespan=asignals.contrib.asgi.lifespan)``: a dispatcher for the app's life.

    Default options; use :func:`make_lifespan` to set them or to wrap a lifespan of your own.
    """
    return _default_lifespan(app)
