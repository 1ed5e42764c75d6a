"""``AsyncSignal``: Django's ``Signal`` for async code, optionally typed from a spec function.

The design follows Django's dispatcher: connections live in an immutable tuple that is replaced
under a lock on every mutation, and each sender's matching receivers are cached. A send reads
the tuple and the cache without locking, so connecting from another thread, or from inside a
receiver, only affects the sends that start afterwards.

``AsyncSignal[P, R]`` is generic over the parameters ``P`` of its spec (``sender`` first, then
keyword arguments) and the receivers' result type ``R``, as in mitmproxy's signals: the type
checkers see every sender and receiver against the spec. An untyped ``AsyncSignal()`` is
``AsyncSignal[..., Any]`` and accepts anything, as before.

The send path is one loop, :func:`_send`, which *is* ``AsyncSignal.send`` at run time (type
checkers see a typed signature) and which ``send_robust`` calls with a marker: it runs sync
receivers inline (and the last receiver, if async, at the cost of a plain ``await``) and hands
the rest of the rows to :func:`asignals._dispatch.run` at the first receiver that needs
awaiting. A receiver's failure is handled by :func:`asignals._dispatch.failed`, off the hot
path. Instrumentation never runs receivers itself: it wraps them in the rows a cache is filled
with, through :data:`_row_hook`, and lets this loop run them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Hashable, Iterable
from contextlib import contextmanager
from typing import Any, Final, Generic, cast, overload

import anyio
from typing_extensions import ParamSpec, TypeVar

from . import _dispatch, _held, background
from ._receivers import (
    ASYNC,
    VALUE_SENDER_TYPES,
    Row,
    _Entry,
    check_receiver,
    receiver_key,
    receiver_mode,
    sender_key,
)
from ._reserved import OPTIONS, RESERVED

logger = logging.getLogger("asignals")

# The defaults make a bare ``AsyncSignal`` annotation mean the untyped ``AsyncSignal[..., Any]``.
P = ParamSpec("P", default=...)
R = TypeVar("R", default=Any)
_P = ParamSpec("_P")  # for functions: a spec or a receiver's signal
_R = TypeVar("_R")

#: What ``send`` returns: ``[(receiver, result), ...]`` in connection order.
Results = list[tuple[Callable[..., Any], Any]]


class _AnySender:
    """``asignals.ANY``: connect for every sender (the same as ``sender=None``)."""

    _instance: _AnySender | None = None

    def __new__(cls) -> _AnySender:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "asignals.ANY"

    def __reduce__(self) -> str:
        return "ANY"


ANY: Final = _AnySender()
"""The sender that stands for "every sender": pass it where ``None`` would read ambiguously.

``sig.connect(fn, sender=ANY)`` is ``sig.connect(fn)``, a receiver for every send whoever
sends it (what Django spells ``sender=None``); ``sig.wait_for(ANY)``, the default, waits for
the next send from anyone. Use it to say so explicitly, where a reader could take ``None`` for
"sent by nobody". There is one such object, and it pickles as itself.
"""

_MISSING: Any = object()  # no sender given
_DEFAULT: Any = object()  # dispatch option not given on this call: use the signal's
# How send_robust marks its call to the one send loop: no keyword argument can spell it.
_ROBUST: Final = "\x00robust"
# The keywords that take a send off its fast path.
_SPECIAL: Final = RESERVED | {_ROBUST}
_ordinary: Final = _SPECIAL.isdisjoint  # bound once: one lookup less per send
# No send's keyword names equal it (_ROBUST is gone by then): sends take the slow path.
_NEVER: Final = frozenset({_ROBUST})
_NOT_AWAITABLE: Final = _dispatch.NOT_AWAITABLE

#: What instrumentation (``asignals.contrib.opentelemetry``) sets to rewrite the rows a receiver
#: cache is filled with (a row's getter may return a wrapper of the receiver with the row's
#: mode): called as ``_row_hook(signal, rows)`` by :meth:`AsyncSignal._lookup` on a cache miss,
#: never per send. None, the default, costs the send path nothing; whoever sets or unsets it
#: drops the caches filled under the other setting before a send can use them.
_row_hook: Callable[[AsyncSignal[..., Any], tuple[Row, ...]], tuple[Row, ...]] | None = None


class _IdCache(dict[int, tuple[Row, ...]]):
    """Per-sender receiver cache keyed by ``id(sender)``.

    Each cached sender is watched through a weak reference that evicts its row when it dies,
    so a later object that reuses the id never sees another sender's receivers.
    """

    __slots__ = ("__weakref__", "watchers")

    def __init__(self) -> None:
        super().__init__()
        self.watchers: dict[int, weakref.ref[Any]] = {}


def _evict(cache_ref: weakref.ref[_IdCache], key: int, _dead: object) -> None:
    cache = cache_ref()
    if cache is not None:
        cache.pop(key, None)
        cache.watchers.pop(key, None)


def _forget(signal_ref: weakref.ref[AsyncSignal[..., Any]]) -> str | None:
    """What a dying receiver or sender calls: drop the signal's caches, return its repr."""
    signal = signal_ref()
    if signal is None:
        return None
    signal._forget_dead()
    return repr(signal)


def _check_options(concurrent: Any, timeout: Any, max_concurrency: Any) -> None:
    if concurrent is not _DEFAULT and not isinstance(concurrent, bool):
        raise TypeError(f"concurrent must be True or False, got {concurrent!r}")
    if timeout is not _DEFAULT and timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
    if max_concurrency is not _DEFAULT and max_concurrency is not None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise TypeError(f"max_concurrency must be an int or None, got {max_concurrency!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency!r}")


def _parse_call(
    signal: AsyncSignal[..., Any],
    method: str,
    args: tuple[Any, ...],
    named: dict[str, Any],
    options_allowed: bool = True,
) -> tuple[Any, tuple[bool, float | None, int | None] | None]:
    """The slow path of a send's arguments: sender by keyword, dispatch options, mistakes.

    Returns the sender and the dispatch options (None when the call gave none), removing both
    from ``named``.
    """
    if len(args) > 1:
        raise TypeError(
            f"{signal!r}.{method}() takes the sender as its only positional argument; pass "
            f"the other {len(args) - 1} value(s) as keyword arguments: "
            f"{method}(sender, name=value, ...)"
        )
    if "signal" in named:
        raise TypeError(
            f"{signal!r}.{method}() got a keyword argument 'signal': every receiver already "
            f"receives the signal as signal=; rename that argument"
        )
    sender = args[0] if args else _MISSING
    if "sender" in named:
        if sender is not _MISSING:
            raise TypeError(f"{signal!r}.{method}() got the sender twice, by position and keyword")
        sender = named.pop("sender")
    if sender is _MISSING:
        raise TypeError(
            f"{signal!r}.{method}() needs a sender: {method}(sender, **kwargs); "
            f"pass None to reach only the receivers connected for any sender"
        )
    if OPTIONS.isdisjoint(named):
        return sender, None
    if not options_allowed:
        given = ", ".join(sorted(OPTIONS.intersection(named)))
        raise TypeError(
            f"{signal!r}.{method}() takes no dispatch options (got {given}); set them on the "
            f"signal: AsyncSignal(..., concurrent=, timeout=, max_concurrency=)"
        )
    concurrent = named.pop("concurrent", _DEFAULT)
    timeout = named.pop("timeout", _DEFAULT)
    max_concurrency = named.pop("max_concurrency", _DEFAULT)
    _check_options(concurrent, timeout, max_concurrency)
    return sender, (
        signal.concurrent if concurrent is _DEFAULT else concurrent,
        signal.timeout if timeout is _DEFAULT else timeout,
        signal.max_concurrency if max_concurrency is _DEFAULT else max_concurrency,
    )


class _Spec:
    """The keyword names a typed signal's spec allows and requires, read once from it."""

    __slots__ = ("allowed", "open", "required")

    def __init__(self, spec: Callable[..., Any]) -> None:
        if not callable(spec):
            raise TypeError(f"a signal spec must be a function, got {spec!r}")
        try:
            params = list(inspect.signature(spec).parameters.values())
        except (TypeError, ValueError):
            raise TypeError(f"a signal spec must have a signature, got {spec!r}") from None
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(
                f"the spec {spec.__qualname__}() must take the sender first: "
                f"def {spec.__name__}(sender: ..., *, name: type, ...) -> None"
            )
        allowed: list[str] = []
        required: list[str] = []
        self.open = False
        for param in params[1:]:
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                self.open = True
                continue
            if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.name in RESERVED:
                raise TypeError(
                    f"the spec {spec.__qualname__}() can only have keyword-only parameters after "
                    f"the sender (put them after `*`), none named {sorted(RESERVED)}; "
                    f"got {param}"
                )
            allowed.append(param.name)
            if param.default is inspect.Parameter.empty:
                required.append(param.name)
        self.allowed = frozenset(allowed)
        self.required = frozenset(required)

    def check(self, signal: AsyncSignal[..., Any], named: dict[str, Any]) -> None:
        """Raise ``TypeError`` naming the missing or unknown keyword arguments, if any."""
        keys = named.keys()
        missing = sorted(self.required - keys)
        unknown = [] if self.open else sorted(keys - self.allowed)
        if not missing and not unknown:
            return
        parts: list[str] = []
        if missing:
            parts.append("missing " + ", ".join(repr(k) for k in missing))
        if unknown:
            parts.append("unexpected " + ", ".join(repr(k) for k in unknown))
        raise TypeError(
            f"{signal!r} send: {'; '.join(parts)} keyword argument(s); its spec takes "
            f"{', '.join(sorted(self.allowed)) or 'none'}"
        )


class _Waiter:
    """One ``wait_for`` call: which sends it wants, and the first one that matched."""

    __slots__ = ("error", "event", "kwargs", "sender", "where")

    def __init__(self, sender: Any, where: Callable[..., object] | None) -> None:
        self.sender = sender
        self.where = where
        self.event = anyio.Event()
        self.kwargs: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def offer(self, sender: Any, named: dict[str, Any]) -> None:
        if self.event.is_set():
            return
        wanted = self.sender
        if wanted is not None:
            if type(wanted) in VALUE_SENDER_TYPES:
                if type(sender) is not type(wanted) or sender != wanted:
                    return
            elif sender is not wanted:
                return
        try:
            if self.where is not None and not self.where(**named):
                return
        except Exception as exc:  # the waiter's bug: raised from wait_for, not into the send
            self.error = exc
        self.kwargs = dict(named)
        self.event.set()


async def _send(
    self: AsyncSignal[..., Any], sender: Any = _MISSING, /, *args: Any, **named: Any
) -> Results:
    """``AsyncSignal.send`` at run time; its docstring is copied from the method below."""
    # This docstring is also the typed stub's, in AsyncSignal (the reference shows that one).
    # The one send loop, ``send_robust``'s too (it marks its call with _ROBUST, which
    # takes the slow path below). ``named`` is the call's own ``**kwargs`` dict:
    # receivers get their own copy of it (``**`` always copies), so ``signal`` and
    # ``sender`` are put in it once per send.
    options = None
    robust = False
    if sender is _MISSING or args or not _ordinary(named):
        robust = named.pop(_ROBUST, None) is True
        sender, options = _parse_call(
            self,
            "send_robust" if robust else "send",
            args if sender is _MISSING else (sender, *args),
            named,
        )
    # None for an untyped signal nobody waits on; else the keyword names a typed send
    # passes, or _NEVER while someone waits: anything else goes through _before().
    if self._names is not None and named.keys() != self._names:
        self._before(sender, named)
    if self._silent:
        return []
    cls = type(sender)  # pyright: ignore[reportUnknownVariableType]
    if cls is str or cls is int or cls is bytes:
        rows = self._value_cache.get(sender)
    else:
        rows = self._id_cache.get(id(sender))
    if rows is None:
        rows = self._lookup(sender)
    named["signal"] = self
    named["sender"] = sender
    if options is not None or self._options:
        if options is None:
            options = (self.concurrent, self.timeout, self.max_concurrency)
        return await _dispatch.run(self, rows, 0, [], named, robust, *options)
    results: Results = []
    if not rows:
        return results
    last = rows[-1]
    for row in rows:
        get, mode, entry = row
        fn = get()
        if fn is None:
            continue
        if mode and (mode != ASYNC or row is not last):
            return await _dispatch.run(self, rows, rows.index(row), results, named, robust)
        try:
            if mode:
                # The last receiver, and async: nothing after it could run concurrently,
                # so it is awaited right here, at the cost of a plain await.
                result = await fn(**named)
            else:
                result = fn(**named)
                if (
                    result is not None
                    and type(result) not in _NOT_AWAITABLE
                    and hasattr(type(result), "__await__")  # pyright: ignore[reportUnknownArgumentType]
                ):
                    result = await result
        except Exception as exc:
            result = _dispatch.failed(self, entry, sender, exc, robust)
        results.append((fn, result))
    return results


_send.__name__ = "send"
_send.__qualname__ = "AsyncSignal.send"


class AsyncSignal(Generic[P, R]):
    """An event that code announces and any number of receivers react to, Django style.

    Use a signal to decouple the code where something happens (an order is placed) from the
    code that reacts to it (send the email, update the stats): the sender does not import its
    receivers, and adding a reaction means connecting a receiver, not editing the sender.
    Create one per event at module level, where both sides can import it:

    ```py
    order_placed = AsyncSignal("order_placed")

    @receiver(order_placed, sender=Order)
    async def email_customer(sender, *, order, **kwargs): ...

    await order_placed.send(Order, order=order)
    ```

    Receivers connect with :meth:`connect` or the :func:`receiver` decorator, sync or async
    alike. The sender chooses how they run: :meth:`send` waits for them and raises their
    failures, :meth:`send_robust` waits and returns the failures, :meth:`send_nowait` and
    :meth:`send_later` hand the send to the background :func:`~asignals.dispatcher`, and
    :meth:`send_after_response` holds it until the current HTTP request has succeeded.
    Connecting and disconnecting are thread-safe and may happen during a send, which works
    on the receivers as they were when it started. Works on asyncio, uvloop and trio.

    Give it a ``spec`` (or declare it with the :func:`signal` decorator) to make it typed:
    mypy and pyright then check every send and receiver against the spec's parameters, and
    each send's keyword names are checked at run time. Without one, it accepts any keyword
    arguments, as Django's ``Signal`` does.

    ``concurrent``, ``timeout`` and ``max_concurrency`` are the signal's
    [dispatch options](../guides/dispatch-options.md): :meth:`send` and :meth:`send_robust`
    take the same keywords to override them per call.

    :param name: the name shown in ``repr()``, in log lines and in error messages; a typed
        signal takes its spec's ``__name__`` by default. Give every signal one: an unnamed
        one shows as ``<AsyncSignal at 0x...>``.
    :param spec: a function whose parameters are what every send passes (``sender`` first,
        then keyword-only arguments) and whose return type is the receivers' result type. It
        is never called; its docstring becomes the signal's ``__doc__``. See
        [Typed signals](../guides/typed-signals.md).
    :param use_caching: accepted so that Django code ports unchanged, and has no effect: the
        per-sender receiver cache is always on (it is evicted when a sender dies, so it needs
        no opt-in).
    :param concurrent: ``False`` awaits the receivers one by one, in connection order, in the
        sending task (each sees the context variables the previous one set), instead of
        running the async ones concurrently.
    :param timeout: seconds each awaiting receiver may take; one past it is cancelled and
        counts as having raised ``TimeoutError``. ``None``: no limit. A sync receiver running
        inline cannot be interrupted: connect it with ``sync_to_thread=True`` to bound it.
    :param max_concurrency: at most this many receivers run at once (``None``: no cap), for
        receivers that share a scarce resource such as a connection pool.
    :raises TypeError: ``name`` is not a string, a dispatch option has the wrong type, or
        ``spec`` is not a function taking the sender first and keyword-only arguments after.
    :raises ValueError: ``timeout`` is not positive, or ``max_concurrency`` is below 1.
    """

    @overload
    def __init__(
        self: AsyncSignal[..., Any],
        name: str | None = None,
        *,
        use_caching: bool = False,
        concurrent: bool = True,
        timeout: float | None = None,
        max_concurrency: int | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        name: str | None = None,
        *,
        spec: Callable[P, R],
        use_caching: bool = False,
        concurrent: bool = True,
        timeout: float | None = None,
        max_concurrency: int | None = None,
    ) -> None: ...

    def __init__(
        self,
        name: str | None = None,
        *,
        spec: Callable[P, R] | None = None,
        use_caching: bool = False,
        concurrent: bool = True,
        timeout: float | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"AsyncSignal name must be a str, got {name!r}")
        _check_options(concurrent, timeout, max_concurrency)
        self._spec = None if spec is None else _Spec(spec)
        self.spec: Callable[P, R] | None = spec
        """The spec function of a typed signal, or ``None`` for an untyped one.

        For tools that need a signal's arguments at run time (a serializer, a form of the
        event, documentation): ``inspect.signature(sig.spec)`` lists the keyword arguments a
        send passes, ``typing.get_type_hints(sig.spec)`` their types.
        """
        # What the hot path compares a send's keyword names with (see _gate()).
        self._names: frozenset[str] | None = None if self._spec is None else self._spec.allowed
        if spec is not None:
            if name is None:
                name = getattr(spec, "__name__", None)
            self.__doc__ = spec.__doc__
        self.name: str | None = name
        """The signal's name, as shown in ``repr()``, log lines, errors and trace spans.

        A typed signal's defaults to its spec's ``__name__``; ``None`` if none was given.
        """
        # Accepted for Django compatibility. The per-sender cache is always on: it is keyed by
        # identity and evicted when a sender dies, so unlike Django's it needs no opt-in.
        self.use_caching: bool = use_caching
        """What was passed as ``use_caching``, kept for Django compatibility; it changes nothing.

        Receivers are always cached per sender, and the cache is evicted when a sender dies.
        """
        self.concurrent: bool = concurrent
        """Whether a send runs the async receivers concurrently (the default) or one by one.

        The value :meth:`send` and :meth:`send_robust` use when the call passes no
        ``concurrent=``. Set it at construction: the send path reads it, it is not meant to
        be reassigned.
        """
        self.timeout: float | None = timeout
        """Seconds each awaiting receiver may take before it is cancelled, or ``None``.

        The value a send uses when the call passes no ``timeout=``; set at construction.
        """
        self.max_concurrency: int | None = max_concurrency
        """How many receivers of one send may run at once, or ``None`` for no cap.

        The value a send uses when the call passes no ``max_concurrency=``; set at
        construction.
        """
        self._options = not concurrent or timeout is not None or max_concurrency is not None
        self._lock = threading.Lock()
        self._entries: tuple[_Entry, ...] = ()
        # (type, value) of the str/bytes/int senders some receiver is connected for.
        self._values: frozenset[tuple[type, Any]] = frozenset()
        self._value_cache: dict[Any, tuple[Row, ...]] = {}
        self._id_cache = _IdCache()
        self._muted = 0
        self._silent = True
        self._dead = False
        self._waiters: tuple[_Waiter, ...] = ()
        self._on_death = functools.partial(_forget, weakref.ref(self))

    def __repr__(self) -> str:
        if self.name:
            return f"<AsyncSignal {self.name!r}>"
        return f"<AsyncSignal at {id(self):#x}>"

    # -- connections --------------------------------------------------------------------

    @overload
    def connect(
        self,
        receiver: Callable[P, Awaitable[R]],
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
        *,
        sync_to_thread: bool = False,
    ) -> Callable[P, Awaitable[R]]: ...

    @overload
    def connect(
        self,
        receiver: Callable[P, R],
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
        *,
        sync_to_thread: bool = False,
    ) -> Callable[P, R]: ...

    def connect(
        self,
        receiver: Callable[..., Any],
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
        *,
        sync_to_thread: bool = False,
    ) -> Callable[..., Any]:
        """Connect ``receiver`` so that sends of this signal call it; return the receiver.

        Call it at import time, next to the receiver (or use :func:`receiver`), so the
        connection exists before the first send; it returns the receiver, so ``@sig.connect``
        works as a decorator, as in blinker. Connecting the same receiver for the same sender
        twice registers it once.

        :param receiver: a plain or ``async def`` function, a bound method, a
            ``functools.partial`` or a callable instance, called as ``receiver(signal=sig,
            sender=sender, **kwargs)``: it must accept ``**kwargs`` and ``sender`` by keyword
            (``def on_order(sender, **kwargs)`` is the Django shape).
        :param sender: only the sends from this sender reach it: by identity (a model class,
            an app), except ``str``, ``bytes`` and ``int`` senders, which match by value (so
            ``sender="orders"`` works). ``None`` or :data:`~asignals.ANY`: every send. The
            sender is weakly referenced where it can be.
        :param weak: hold the receiver through a weak reference (``weakref.WeakMethod`` for a
            bound method), so it disconnects itself when garbage collected. Pass ``False``
            for a receiver that nothing else keeps alive (a lambda, a closure): one collected
            before any send reached it is reported with :class:`~asignals.WeakReceiverWarning`.
        :param dispatch_uid: a hashable that identifies the connection instead of the
            receiver, for code that may run twice (a module imported under two names): the
            first connection with a uid wins, and ``disconnect(dispatch_uid=...)`` removes it.
        :param sync_to_thread: run this sync receiver in a worker thread (``anyio.to_thread``)
            instead of inline, for one that blocks (file or network I/O, a sync client); it
            also lets a send's ``timeout`` bound it.
        :returns: ``receiver`` itself.
        :raises TypeError: a send could not call the receiver (no ``**kwargs``, ``sender``
            not accepted by keyword, a required parameter the signal never passes, or a
            typed signal's keyword it does not accept); ``dispatch_uid`` is not hashable; or
            ``sync_to_thread=True`` for an async receiver. The message names the receiver.
        """
        self._connect(receiver, sender, weak, dispatch_uid, sync_to_thread)
        return receiver

    def _connect(
        self,
        fn: Callable[..., Any],
        sender: Any,
        weak: bool,
        dispatch_uid: Hashable | None,
        sync_to_thread: bool,
    ) -> bool:
        spec = self._spec
        # The names a send passes, when known (a spec with **kwargs may pass any others).
        check_receiver(fn, self, None if spec is None or spec.open else spec.allowed)
        if dispatch_uid is not None:
            try:
                hash(dispatch_uid)
            except TypeError:
                raise TypeError(
                    f"dispatch_uid must be hashable, got {type(dispatch_uid).__name__} "
                    f"{dispatch_uid!r} for receiver of {self!r}"
                ) from None
        if sender is ANY:
            sender = None
        mode = receiver_mode(fn, sync_to_thread)
        key = self._key(fn, sender, dispatch_uid)
        entry = _Entry(self._on_death, fn, sender, weak, key, mode)
        with self._lock:
            live = tuple(e for e in self._entries if e.alive())
            for existing in live:
                if existing.key == key and (dispatch_uid is not None or existing.same_receiver(fn)):
                    self._replace(live)
                    entry.disconnected = True  # never warn about the duplicate we drop
                    return False
            self._replace((*live, entry))
        return True

    def disconnect(
        self,
        receiver: Callable[..., Any] | None = None,
        sender: Any = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        """Undo a :meth:`connect`; return whether that connection existed.

        Use it to stop reacting at run time (a plugin unloads, a test cleans up; for a
        ``with`` block, :meth:`connected_to` does both steps). Name the connection as it was
        made: the same ``receiver`` and ``sender``, or the ``dispatch_uid`` it was connected
        with. A send already running still calls the receiver; the sends after it do not.

        :param receiver: the receiver that was connected (not needed with ``dispatch_uid``).
        :param sender: the sender it was connected for; ``None`` (or :data:`~asignals.ANY`)
            for a receiver connected for every sender.
        :param dispatch_uid: the uid it was connected with.
        :returns: ``True`` if it was connected, ``False`` if there was nothing to disconnect.
        :raises TypeError: neither ``receiver`` nor ``dispatch_uid`` was given.
        """
        if receiver is None and dispatch_uid is None:
            raise TypeError(f"{self!r}.disconnect() needs the receiver or its dispatch_uid")
        if sender is ANY:
            sender = None
        key = self._key(receiver, sender, dispatch_uid)
        with self._lock:
            kept: list[_Entry] = []
            found = False
            for e in self._entries:
                if not e.alive():
                    continue
                if (
                    not found
                    and e.key == key
                    and (dispatch_uid is not None or e.same_receiver(receiver))
                ):
                    e.disconnected = True
                    found = True
                    continue
                kept.append(e)
            self._replace(tuple(kept))
        return found

    @staticmethod
    def _key(fn: Any, sender: Any, dispatch_uid: Hashable | None) -> Hashable:
        if dispatch_uid is not None:
            return (("uid", dispatch_uid), sender_key(sender))
        return (receiver_key(fn), sender_key(sender))

    def _replace(self, entries: tuple[_Entry, ...]) -> None:
        # Called with the lock held. The caches are replaced, not cleared, so that a send
        # that already holds the old dict cannot write stale rows into the new one.
        self._entries = entries
        self._values = frozenset(
            (type(e.sender_value), e.sender_value)  # pyright: ignore[reportUnknownArgumentType]
            for e in entries
            if e.sender_value is not None
        )
        self._dead = False
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._value_cache = {}
        self._id_cache = _IdCache()
        self._silent = not self._entries or self._muted > 0

    def _forget_dead(self) -> None:
        """Weak-reference callback: a receiver or a sender died. May run in any thread.

        It runs in the middle of anything (garbage collection), so it takes no lock and only
        drops the caches; the dead entry is pruned by the next mutation or cache miss.
        """
        self._dead = True
        self._value_cache = {}
        self._id_cache = _IdCache()

    def _prune(self) -> None:
        # Never block a send: if a mutation holds the lock, it prunes for us.
        if self._lock.acquire(blocking=False):
            try:
                self._replace(tuple(e for e in self._entries if e.alive()))
            finally:
                self._lock.release()

    def _lookup(self, sender: Any) -> tuple[Row, ...]:
        """The live receivers for ``sender``, cached when the sender can be watched."""
        if type(sender) in VALUE_SENDER_TYPES and (type(sender), sender) not in self._values:
            # Nobody listens to this value in particular: it gets the receivers for any
            # sender, cached once, so that sends from ever new ids or names (a tenant, a
            # user) do not grow the cache.
            rows = self._id_cache.get(id(None))
            return self._lookup(None) if rows is None else rows
        value_cache = self._value_cache
        id_cache = self._id_cache
        if self._dead:
            self._prune()
        matched = tuple(e.row() for e in self._entries if e.listens_to(sender) and e.alive())
        for _, _, entry in matched:
            entry.called = True  # a send is about to reach it: no "collected unused" warning
        if _row_hook is not None:
            matched = _row_hook(self, matched)
        if type(sender) in VALUE_SENDER_TYPES:
            value_cache[sender] = matched
        elif sender is None:
            id_cache[id(None)] = matched
        else:
            key = id(sender)
            try:
                watcher = weakref.ref(sender, functools.partial(_evict, weakref.ref(id_cache), key))
            except TypeError:
                return matched  # cannot tell when it dies, so it is not cached
            id_cache.watchers[key] = watcher
            id_cache[key] = matched
        return matched

    # -- queries ------------------------------------------------------------------------

    def receivers_for(self, sender: Any) -> list[Callable[..., Any]]:
        """The live receivers a send from ``sender`` would call, in connection order.

        For checking the wiring (in a test, or a debug endpoint listing who reacts to what):
        the receivers connected for every sender and those connected for ``sender`` itself,
        the garbage-collected ones left out.
        """
        receivers: list[Callable[..., Any]] = []
        for e in self._entries:
            if e.listens_to(sender) and e.alive():
                receivers.append(e.resolve())
        return receivers

    def has_listeners(self, sender: Any = None) -> bool:
        """Whether a send from ``sender`` would reach any receiver.

        Use it to skip building costly keyword arguments when nobody listens. A send with no
        receiver is already cheap, so there is no need to guard a plain send with it. As in
        Django, ``has_listeners()`` with no sender counts only the receivers connected for
        every sender, not those connected for a particular one.
        """
        return any(e.listens_to(sender) and e.alive() for e in self._entries)

    @property
    def receivers(self) -> list[Callable[..., Any]]:
        """Every live receiver, whatever sender it is connected for, in connection order.

        A fresh list on each access, for inspecting the wiring; :meth:`receivers_for` gives
        those one sender's send would call.
        """
        return [r for r in (e.resolve() for e in self._entries if e.alive()) if r is not None]

    # -- sending ------------------------------------------------------------------------

    # What type checkers and the reference see. At run time ``send`` is :func:`_send` itself
    # (set after the class, with this docstring): its positional-only sender costs no tuple
    # per call, and it is the one coroutine frame of a send (a typed wrapper awaiting it would
    # be a second).
    async def send(self, *args: P.args, **kwargs: P.kwargs) -> list[tuple[Callable[..., Any], R]]:
        """Call every receiver connected for ``sender``; return ``[(receiver, result), ...]``.

        ``await sig.send(sender, **kwargs)`` is the send to use when the event's side effects
        are part of the caller's work: the caller waits for every receiver, and a receiver's
        failure is the caller's failure. Each receiver is called as ``receiver(signal=sig,
        sender=sender, **kwargs)``, in the caller's context (it sees the caller's context
        variables); sync receivers run inline on the event loop (in a thread only if connected
        with ``sync_to_thread=True``), async ones concurrently. With no receiver for ``sender``,
        or inside :meth:`muted`, it returns ``[]`` at once.

        When receivers raise, the ones still running are cancelled and an ``ExceptionGroup`` of
        every failure is raised: always a group, even for one failure, as ``asyncio.TaskGroup``
        does (Django raises a lone failure bare), so catch it with ``except* SomeError``. Use
        :meth:`send_robust` when one receiver's failure must not stop the others, and
        :meth:`send_nowait` when the caller should not wait at all.

        :param args: the sender, alone: who sends (``sender=`` works too). A receiver connected
            with ``sender=X`` gets only the sends from ``X``: by identity, except that ``str``,
            ``bytes`` and ``int`` senders match by value. ``None`` reaches only the receivers
            connected for every sender.
        :param kwargs: the event's data, passed to every receiver (a typed signal checks the
            names against its spec). ``concurrent``, ``timeout`` and ``max_concurrency`` are not
            passed on: they override the signal's [dispatch
            options](../guides/dispatch-options.md) for this call.
        :returns: ``[(receiver, result), ...]`` in connection order, whatever order the
            receivers finished in.
        :raises ExceptionGroup: one or more receivers raised (a receiver past its ``timeout``
            counts as raising ``TimeoutError``); the group is named ``"N receiver(s) of <signal>
            raised"``.
        :raises TypeError: the sender is missing or followed by another positional argument, a
            keyword argument is named ``signal``, a dispatch option has a wrong type, or a typed
            signal's keyword argument is missing or unknown.
        """
        return await _send(self, *cast("tuple[Any, ...]", args), **kwargs)

    def send_robust(
        self, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, list[tuple[Callable[..., Any], R | Exception]]]:
        """Like :meth:`send`, but a receiver's ``Exception`` is returned in its slot, not raised.

        ``await sig.send_robust(sender, **kwargs)`` is the send for side effects that must
        not depend on each other or fail the caller: an audit log, a cache purge, a
        notification. Every receiver runs to the end even when others fail; each failure is
        logged on the ``asignals`` logger with the receiver named (a ``timeout`` as one line,
        without a traceback) and returned instead of its result. Cancellation and any
        other ``BaseException`` are never swallowed. Background sends (:meth:`send_nowait`) run
        through it.

        :param args: the sender, alone, as for :meth:`send`.
        :param kwargs: the event's data, and optionally the dispatch options ``concurrent``,
            ``timeout`` and ``max_concurrency``, as for :meth:`send`.
        :returns: ``[(receiver, result_or_exception), ...]`` in connection order.
        :raises TypeError: bad arguments, as for :meth:`send` (raised, not returned).
        """
        named: dict[str, Any] = kwargs
        named[_ROBUST] = True
        # The class's own send: instrumentation that wraps AsyncSignal.send or
        # AsyncSignal.send_robust sees each send once.
        return _send(self, *cast("tuple[Any, ...]", args), **named)

    def _before(self, sender: Any, named: dict[str, Any]) -> None:
        """A send off the common path: check a typed send's names, hand it to waiters."""
        if self._spec is not None:
            self._spec.check(self, named)  # raises if a name is missing or unknown
        for waiter in self._waiters:
            waiter.offer(sender, named)

    def _gate(self) -> None:
        # Called with the lock held whenever the waiters change.
        if self._waiters:
            self._names = _NEVER
        else:
            self._names = None if self._spec is None else self._spec.allowed

    def _arguments(self, method: str, args: tuple[Any, ...], named: dict[str, Any]) -> Any:
        """The sender of a background send, its keyword arguments checked (and ``named`` too)."""
        if len(args) == 1 and RESERVED.isdisjoint(named):
            sender = args[0]
        else:
            sender, _ = _parse_call(self, method, args, named, options_allowed=False)
        if self._spec is not None:
            self._spec.check(self, named)
        return sender

    def send_nowait(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Schedule ``send_robust(sender, **kwargs)`` in the background and return at once.

        For reactions the caller should not wait for (an email, a webhook, a search index
        update) when the caller can still make the decision to send: the receivers run later,
        in a task of the running :func:`~asignals.dispatcher` (``async with
        asignals.dispatcher():``, or the ASGI ``lifespan``), with the context variables of the
        moment of the call. Nothing is lost: leaving the dispatcher waits for every scheduled
        send. Failures are logged, as by :meth:`send_robust`; the caller never sees them.

        It also works from a worker thread started by AnyIO (a FastAPI/Starlette ``def``
        endpoint). The keyword arguments are checked now (a typed signal's names, the
        sender); the dispatch options are the signal's own, none can be passed per call. See
        [Background sends](../guides/background.md).

        :param args: the sender, alone, as for :meth:`send`.
        :param kwargs: the event's data, as for :meth:`send`.
        :raises RuntimeError: no dispatcher is running on this event loop; the message says
            how to start one.
        :raises ~asignals.BacklogFull: the dispatcher already has ``max_pending`` sends
            scheduled and not finished (:meth:`send_later` waits for room instead).
        :raises ~asignals.DispatcherClosed: the dispatcher is shutting down or has shut down.
        :raises TypeError: bad arguments, as for :meth:`send`, or a dispatch option given.
        """
        sender = self._arguments("send_nowait", args, kwargs)
        background.submit(self, sender, kwargs)

    async def send_later(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Like :meth:`send_nowait`, but wait for room when the dispatcher's backlog is full.

        ``await sig.send_later(sender, **kwargs)`` is for producers that may outrun the
        receivers (an import job, a consumer loop): instead of failing with
        :class:`~asignals.BacklogFull`, it waits until one of the dispatcher's pending sends
        finishes, so the backlog applies back-pressure. It returns once the send is scheduled,
        not when it has run.

        :param args: the sender, alone, as for :meth:`send`.
        :param kwargs: the event's data, as for :meth:`send`.
        :raises RuntimeError: no dispatcher is running on this event loop.
        :raises ~asignals.DispatcherClosed: the dispatcher shut down, also while it waited.
        :raises TypeError: bad arguments, as for :meth:`send_nowait`.
        """
        sender = self._arguments("send_later", args, kwargs)
        await background.submit_wait(self, sender, kwargs)

    def send_after_response(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Hold ``send_nowait(sender, **kwargs)`` until the current request has succeeded.

        For side effects that must not happen when the request fails (the confirmation email
        of an order that a later step refuses): the send is handed to the background
        dispatcher, with the context variables of the moment of this call, once the response
        went out with a status that :class:`~asignals.contrib.asgi.SignalsMiddleware` delivers
        on (below 400 by default), after ``request_finished``. If the app raised, or the
        status is refused, it is dropped (logged at DEBUG on ``asignals.asgi``). Held sends
        go in call order. See [Request-bound sends](../guides/request-bound.md).

        :param args: the sender, alone, as for :meth:`send`.
        :param kwargs: the event's data, as for :meth:`send` (checked now).
        :raises RuntimeError: not inside a request served by ``SignalsMiddleware``, or after
            that request's held sends were delivered or dropped (code that outlived its
            request, such as a task it started: use :meth:`send_nowait` there).
        :raises TypeError: bad arguments, as for :meth:`send_nowait`.
        """
        sender = self._arguments("send_after_response", args, kwargs)
        _held.hold(self, sender, kwargs)

    # -- waiting ------------------------------------------------------------------------

    async def wait_for(
        self,
        sender: Any = ANY,
        *,
        where: Callable[..., object] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Wait for the next send of this signal from ``sender``; return its keyword arguments.

        For code that must wait until something happened elsewhere (a test waiting for a
        background receiver's chained event, a workflow step waiting for an approval): every
        send counts, in-process ones, background ones (:meth:`send_nowait`) and those a
        bridge delivers from another process. Nothing is connected: the waiter shows in no
        receiver list, and once it returns or is cancelled it costs other sends nothing.
        Only the sends that start after the call are seen.

        :param sender: only sends from this sender count (matched as receivers' senders
            are); :data:`~asignals.ANY` or ``None``: any sender.
        :param where: a predicate called as ``where(**kwargs)`` on each candidate send; the
            send counts only if it returns true. If it raises, the exception is raised from
            here, not into the send.
        :param timeout: seconds to wait at most; ``None`` waits for ever.
        :returns: a new dict of the matching send's keyword arguments (without ``signal``
            and ``sender``).
        :raises TimeoutError: no matching send within ``timeout`` seconds.
        :raises TypeError: ``where`` is not callable.
        """
        if where is not None and not callable(where):
            raise TypeError(f"wait_for(where=...) must be callable, got {where!r}")
        waiter = _Waiter(None if sender is ANY else sender, where)
        with self._lock:
            self._waiters = (*self._waiters, waiter)
            self._gate()
        try:
            with anyio.fail_after(timeout):
                await waiter.event.wait()
        finally:
            with self._lock:
                self._waiters = tuple(w for w in self._waiters if w is not waiter)
                self._gate()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.kwargs is not None
        return waiter.kwargs

    # -- testing helpers ----------------------------------------------------------------

    @contextmanager
    def connected_to(
        self, receiver: Callable[P, R | Awaitable[R]], sender: Any = None
    ) -> Generator[Callable[P, R | Awaitable[R]], None, None]:
        """Connect ``receiver`` for the ``with`` block only; the block gets the receiver.

        For tests and temporary listeners: ``with sig.connected_to(fake, sender=Order): ...``
        connects ``fake`` strongly (a lambda is fine) and disconnects it on leaving the block,
        even on an exception. If it was already connected for that sender before the block,
        it stays connected afterwards.

        :param receiver: the receiver, as for :meth:`connect`.
        :param sender: the sender it listens to, as for :meth:`connect`.
        :raises TypeError: a receiver :meth:`connect` would refuse.
        """
        added = self._connect(receiver, sender, False, None, False)
        try:
            yield receiver
        finally:
            if added:
                self.disconnect(receiver, sender=sender)

    @contextmanager
    def muted(self) -> Generator[None, None, None]:
        """Make every send of this signal a no-op returning ``[]`` for the ``with`` block.

        For tests, fixtures and data imports that must not trigger the reactions (no email for
        each loaded row): ``with post_save.muted(): ...``. It affects every task and thread
        sending this signal while the block runs, not only the current one, and nests.
        Keyword arguments are still checked; :meth:`wait_for` callers still see the sends.
        """
        with self._lock:
            self._muted += 1
            self._silent = True
        try:
            yield
        finally:
            with self._lock:
                self._muted -= 1
                self._silent = not self._entries or self._muted > 0


if sys.version_info >= (3, 12):
    # send_robust returns send's coroutine (no second frame); introspection should still see
    # a coroutine function, as it does for send.
    inspect.markcoroutinefunction(AsyncSignal.send_robust)


# The typed method above is what checkers and the reference read; the send itself is _send.
_send.__doc__ = AsyncSignal.send.__doc__
setattr(AsyncSignal, "send", _send)  # noqa: B010 - a method assignment checkers would refuse


class _Connector(Generic[P, R]):
    """What ``@receiver(signal, ...)`` returns: connects the function it decorates."""

    __slots__ = ("options", "signals")

    def __init__(self, signals: tuple[AsyncSignal[P, R], ...], options: dict[str, Any]) -> None:
        self.signals = signals
        self.options = options

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[..., Any], /) -> Callable[..., Any]:
        for s in self.signals:
            s.connect(fn, **self.options)
        return fn


def receiver(
    signal: AsyncSignal[_P, _R] | Iterable[AsyncSignal[_P, _R]],
    *,
    sender: Any = None,
    weak: bool = True,
    dispatch_uid: Hashable | None = None,
    sync_to_thread: bool = False,
) -> _Connector[_P, _R]:
    """Decorator that connects the function below it to a signal, or to each of several.

    The usual way to write a receiver, as in Django: the connection sits next to the code
    that reacts, and happens when its module is imported (import it at startup, e.g. from
    your app factory, or the receiver never runs). The function is returned unchanged, so it
    can still be called and tested directly:

    ```py
    @receiver(order_placed, sender=Order)
    async def email_customer(sender, *, order, **kwargs): ...

    @receiver([post_save, post_delete], sender=Product)
    def purge_cache(sender, *, instance, **kwargs): ...
    ```

    :param signal: an :class:`AsyncSignal`, or a list (any iterable) of them.
    :param sender: only sends from this sender reach the function, as for
        :meth:`AsyncSignal.connect`.
    :param weak: as for :meth:`AsyncSignal.connect`. A module-level function lives as long
        as its module, so the default is right for the decorator.
    :param dispatch_uid: as for :meth:`AsyncSignal.connect`.
    :param sync_to_thread: as for :meth:`AsyncSignal.connect`: run a blocking sync function
        in a worker thread.
    :returns: a decorator that connects the function and returns it.
    :raises TypeError: ``signal`` is neither a signal nor a list of them; when decorating,
        whatever :meth:`AsyncSignal.connect` refuses.
    """
    if isinstance(signal, AsyncSignal):
        signals: tuple[AsyncSignal[_P, _R], ...] = (signal,)
    elif isinstance(signal, str | bytes) or not isinstance(signal, Iterable):
        raise TypeError(f"@receiver takes an AsyncSignal or a list of them, got {signal!r}")
    else:
        signals = tuple(signal)
        for s in signals:
            if not isinstance(s, AsyncSignal):
                raise TypeError(
                    f"@receiver takes an AsyncSignal or a list of them; the list holds {s!r}"
                )
    options = {
        "sender": sender,
        "weak": weak,
        "dispatch_uid": dispatch_uid,
        "sync_to_thread": sync_to_thread,
    }
    return _Connector(signals, options)


@overload
def signal(spec: Callable[_P, _R], /) -> AsyncSignal[_P, _R]: ...


@overload
def signal(
    *,
    name: str | None = None,
    concurrent: bool = True,
    timeout: float | None = None,
    max_concurrency: int | None = None,
) -> Callable[[Callable[_P, _R]], AsyncSignal[_P, _R]]: ...


def signal(
    spec: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    concurrent: bool = True,
    timeout: float | None = None,
    max_concurrency: int | None = None,
) -> Any:
    """Declare a typed signal from a spec function: ``@asignals.signal`` above a ``def``.

    The way to declare a signal whose arguments the type checkers know: mypy and pyright then
    check every send and every receiver against the spec, and each send's keyword names are
    checked at run time, so a misspelt argument fails where it is written instead of reaching
    receivers as a missing value. The function is never called: its parameters (``sender``
    first, then keyword-only arguments) are what every send passes, its return type what
    every receiver returns, its name the signal's name and its docstring the signal's
    ``__doc__``:

    ```py
    @asignals.signal
    def order_placed(sender: type[Order], *, order: Order, total: Decimal) -> None:
        \"\"\"Sent once an order is stored.\"\"\"

    @asignals.signal(timeout=5)
    def payment_failed(sender: type[Order], *, order: Order, reason: str) -> None: ...
    ```

    Used bare, it returns the :class:`AsyncSignal`; called with options, a decorator. It is
    the same as ``AsyncSignal(spec=fn, name=fn.__name__)``. See
    [Typed signals](../guides/typed-signals.md).

    :param spec: the spec function (when used bare).
    :param name: the signal's name instead of the function's.
    :param concurrent: a [dispatch option](../guides/dispatch-options.md), as for
        :class:`AsyncSignal`.
    :param timeout: a dispatch option, as for :class:`AsyncSignal`.
    :param max_concurrency: a dispatch option, as for :class:`AsyncSignal`.
    :raises TypeError: the spec does not take the sender first and keyword-only arguments
        after it, or uses a reserved name (``signal``, ``sender``, a dispatch option).
    """

    def make(fn: Callable[_P, _R]) -> AsyncSignal[_P, _R]:
        return AsyncSignal(
            name,
            spec=fn,
            concurrent=concurrent,
            timeout=timeout,
            max_concurrency=max_concurrency,
        )

    if spec is None:
        return make
    return make(spec)


__all__ = ["ANY", "AsyncSignal", "receiver", "signal"]
