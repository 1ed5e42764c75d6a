"""Request signals for any ASGI app, and a lifespan that runs the background dispatcher.

Use it in a Starlette, FastAPI or other ASGI app: the middleware lets receivers react to every
request (metrics, error reporting, cleanup) and makes ``send_after_response`` work; the
lifespan makes ``send_nowait`` work in request handlers and drains it at shutdown. See
[FastAPI and ASGI](../guides/fastapi.md) and [Request-bound sends](../guides/request-bound.md).

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

Inside such a request, ``sig.send_after_response(sender, **kw)`` holds the send: once the app
has returned without raising and ``deliver_on(status)`` accepts the response status (default:
below 400), every held send goes to ``send_nowait``, in call order, after ``request_finished``'s
receivers; otherwise they are dropped and the drop is logged at DEBUG on ``asignals.asgi``. A
websocket connection delivers when its app returns without raising.

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
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import anyio

from .. import _held
from ..background import DEFAULT_MAX_PENDING, dispatcher
from ..signals import got_request_exception, request_finished, request_started

__all__ = ["SignalsMiddleware", "lifespan", "make_lifespan"]

Scope = MutableMapping[str, Any]
"""An ASGI connection scope (``scope["type"]``, ``scope["path"]``, ...), as the server passes it."""
Message = MutableMapping[str, Any]
"""An ASGI event message (``{"type": "http.response.start", "status": 200, ...}``)."""
Receive = Callable[[], Awaitable[Message]]
"""The ASGI ``receive`` callable: awaits the next message from the client."""
Send = Callable[[Message], Awaitable[None]]
"""The ASGI ``send`` callable: sends one message to the client."""
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI application: ``await app(scope, receive, send)``. What the middleware wraps."""

_AppT = TypeVar("_AppT")
_StateT = TypeVar("_StateT")

_REQUEST_SCOPES = frozenset({"http", "websocket"})

logger = logging.getLogger("asignals.asgi")


def _below_400(status: int) -> bool:
    return status < 400


def _takes(fn: Callable[..., object], count: int) -> bool:
    """Whether ``fn`` can be called with ``count`` positional arguments."""
    try:
        inspect.signature(fn).bind(*(None,) * count)
    except TypeError:
        return False
    except ValueError:
        pass  # no introspectable signature (a builtin): trust it
    return True


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
    if not _takes(app, 3):
        raise TypeError(
            f"SignalsMiddleware needs an ASGI application callable as app(scope, receive, "
            f"send); {app!r} does not take those three arguments"
        )


def _check_lifespan(user_lifespan: object) -> None:
    """Refuse, at construction, what could never be entered as ``user_lifespan(app)``."""
    if inspect.isasyncgenfunction(user_lifespan):
        raise TypeError(
            f"make_lifespan() needs an async context manager factory; "
            f"{user_lifespan.__qualname__} is a bare async generator function: decorate it "
            f"with @contextlib.asynccontextmanager"
        )
    if isinstance(user_lifespan, AbstractAsyncContextManager):
        raise TypeError(
            f"make_lifespan() needs the lifespan function, called with the app at startup, "
            f"not an already created context manager {user_lifespan!r}: pass "
            f"make_lifespan(my_lifespan), not make_lifespan(my_lifespan(app))"
        )
    if not callable(user_lifespan):
        raise TypeError(
            f"make_lifespan() needs a lifespan function, lifespan(app) -> async context "
            f"manager (as FastAPI's lifespan=), or None; got {user_lifespan!r} of type "
            f"{type(user_lifespan).__name__}"
        )
    if not _takes(user_lifespan, 1):
        raise TypeError(
            f"make_lifespan() needs a lifespan function called as lifespan(app); "
            f"{user_lifespan!r} does not take that one argument"
        )


class SignalsMiddleware:
    """ASGI middleware: the request signals for every request, and the held sends' delivery.

    Add it to any ASGI app to send ``request_started``, ``got_request_exception`` and
    ``request_finished`` for every HTTP request and websocket connection (the module's
    documentation says when each is sent), and to make
    :meth:`~asignals.AsyncSignal.send_after_response` work inside requests: the sends it holds
    are delivered once the request succeeded, and dropped otherwise. It is pure ASGI, so it
    wraps Starlette, FastAPI, Quart, Litestar or a bare ASGI callable alike; other scopes
    (``lifespan``) pass straight through:

    ```py
    app = FastAPI(lifespan=asignals.contrib.asgi.lifespan)
    app.add_middleware(SignalsMiddleware)  # any other ASGI app: SignalsMiddleware(app)
    ```

    :param app: the ASGI application to wrap (``app.add_middleware`` passes it).
    :param sender: the sender of the request signals; by default ``scope["app"]`` when the
        framework sets it (Starlette and FastAPI do), else ``app``. Pass one to tell apart the
        apps of one process, or to use a constant (``sender="api"``).
    :param deliver_on: ``deliver_on(status) -> bool`` decides which HTTP response statuses
        count as success for held sends (default: ``status < 400``);
        ``deliver_on=lambda status: status < 500`` also delivers on client errors. If it
        raises, the held sends are dropped and the error is logged. A websocket connection
        delivers when its app returns without raising.
    :raises TypeError: ``app`` is not an ASGI application instance (an import string, a class,
        a callable that does not take ``scope, receive, send``), or ``deliver_on`` is not
        callable.
    """

    __slots__ = ("_deliver_on", "_sender", "app")

    def __init__(
        self,
        app: ASGIApp,
        *,
        sender: Any = None,
        deliver_on: Callable[[int], bool] = _below_400,
    ) -> None:
        _check_asgi_app(app)
        if not callable(deliver_on):
            raise TypeError(
                f"SignalsMiddleware(deliver_on=...) needs a predicate on the response status, "
                f"such as `lambda status: status < 400`; got {deliver_on!r} of type "
                f"{type(deliver_on).__name__}"
            )
        self.app: ASGIApp = app
        """The wrapped ASGI application, called for every scope."""
        self._sender = sender
        self._deliver_on = deliver_on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _REQUEST_SCOPES:
            await self.app(scope, receive, send)
            return
        sender = self._sender
        if sender is None:
            sender = scope.get("app", self.app)
        held: _held.Hold = []
        token = _held.current.set(held)
        status: int | None = None
        app_send: Send = send
        if scope["type"] == "http":
            # A plain function handing back send's awaitable: no coroutine of its own per
            # message on the response path.
            def send_and_watch(message: Message) -> Awaitable[None]:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                return send(message)

            app_send = send_and_watch
        try:
            await request_started.send(sender, scope=scope)
            try:
                await self.app(scope, receive, app_send)
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
        except BaseException as exc:
            self._drop(held, scope, status, exc)
            raise
        finally:
            _held.current.reset(token)
        if held:
            self._settle(held, scope, status)
        else:
            held.append(_held.CLOSED)

    def _settle(self, held: _held.Hold, scope: Scope, status: int | None) -> None:
        """The app returned: deliver the held sends if ``status`` says the request succeeded."""
        if scope["type"] == "http":
            if status is None:
                self._drop(held, scope, None, None)
                return
            try:
                accepted = self._deliver_on(status)
            except Exception as exc:
                logger.error(
                    "asignals: deliver_on(%r) raised for %s; dropping its held sends (%s)",
                    status,
                    _describe(scope),
                    _held.names(held),
                    exc_info=True,
                )
                self._drop(held, scope, status, exc)
                return
            if not accepted:
                self._drop(held, scope, status, None)
                return
        errors = _held.deliver(held)
        if errors:
            for error in errors[1:]:
                logger.error(
                    "asignals: a held send of %s could not be scheduled",
                    _describe(scope),
                    exc_info=error,
                )
            raise errors[0]

    @staticmethod
    def _drop(
        held: _held.Hold, scope: Scope, status: int | None, exception: BaseException | None
    ) -> None:
        if held and logger.isEnabledFor(logging.DEBUG):
            if exception is not None:
                why = f"the app raised {exception!r}"
            elif status is None:
                why = "the app sent no response"
            else:
                why = f"status {status} is not delivered on"
            logger.debug(
                "asignals: dropped %d held send(s) of %s (%s): %s",
                len(held),
                _describe(scope),
                _held.names(held),
                why,
            )
        _held.drop(held, status, exception)


def _describe(scope: Scope) -> str:
    if scope["type"] == "websocket":
        return f"websocket {scope.get('path', '?')}"
    return f"{scope.get('method', '?')} {scope.get('path', '?')}"


def make_lifespan(
    user_lifespan: Callable[[_AppT], AbstractAsyncContextManager[_StateT]] | None = None,
    *,
    max_pending: int | None = DEFAULT_MAX_PENDING,
    drain_timeout: float | None = None,
) -> Callable[[_AppT], AbstractAsyncContextManager[_StateT | None]]:
    """A Starlette/FastAPI ``lifespan`` that runs a background dispatcher, around your own.

    Use it instead of :func:`lifespan` when the app has a lifespan of its own, or to set the
    dispatcher's options: ``FastAPI(lifespan=make_lifespan(my_lifespan, drain_timeout=10))``.
    The dispatcher opens after your lifespan's startup code and is drained before its shutdown
    code, so background receivers can use what your lifespan sets up (database pools,
    clients) until the last queued send has finished. Whatever your lifespan yields
    (Starlette's lifespan state) is passed through.

    :param user_lifespan: your lifespan function, ``lifespan(app)`` returning an async context
        manager (an ``@asynccontextmanager`` function, as FastAPI's ``lifespan=`` takes), or
        ``None`` for none.
    :param max_pending: the dispatcher's bound on pending background sends, as for
        :func:`asignals.dispatcher`.
    :param drain_timeout: seconds the shutdown waits for pending sends before cancelling
        them, as for :func:`asignals.dispatcher`; set it below your server's shutdown grace
        period.
    :returns: the lifespan function to pass to the app.
    :raises TypeError: ``user_lifespan`` is not a lifespan function (a bare async generator
        function, an already created context manager, something not callable with the app).
    """
    if user_lifespan is not None:
        _check_lifespan(user_lifespan)

    @asynccontextmanager
    async def _lifespan(app: _AppT) -> AsyncGenerator[_StateT | None, None]:
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

    The one line that makes ``send_nowait`` work in request handlers of an app with no
    lifespan of its own: a background dispatcher opens at startup and is drained at shutdown,
    so no queued send is lost when the server stops. It has the default options
    (:data:`~asignals.background.DEFAULT_MAX_PENDING`, no drain deadline); use
    :func:`make_lifespan` to set them or to wrap a lifespan of your own.

    :param app: the application, as the framework passes it.
    """
    return _default_lifespan(app)
