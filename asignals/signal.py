"""``AsyncSignal``: Django's ``Signal`` for async code.

The design follows Django's dispatcher: connections live in an immutable tuple that is replaced
under a lock on every mutation, and each sender's matching receivers are cached. A send reads
the tuple and the cache without locking, so connecting from another thread, or from inside a
receiver, only affects the sends that start afterwards.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

from . import _held, background, dispatch
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

logger = logging.getLogger("asignals")

F = TypeVar("F", bound=Callable[..., Any])
Results = list[tuple[Any, Any]]


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

_MISSING: Any = object()  # no sender given
_DEFAULT: Any = object()  # dispatch option not given on this call: use the signal's


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


# Keywords that a send does not pass through to receivers as they are.
_RESERVED: Final = frozenset({"signal", "sender", "concurrent", "timeout", "max_concurrency"})


def _parse_call(
    signal: AsyncSignal, method: str, sender: Any, args: tuple[Any, ...], named: dict[str, Any]
) -> tuple[Any, tuple[bool, float | None, int | None] | None]:
    """The slow path of a send's arguments: sender by keyword, dispatch options, mistakes.

    Returns the sender and the dispatch options (None when the call gave none), removing both
    from ``named``.
    """
    if args:
        raise TypeError(
            f"{signal!r}.{method}() takes the sender as its only positional argument; pass "
            f"the other {len(args)} value(s) as keyword arguments"
        )
    if "signal" in named:
        raise TypeError(
            f"{signal!r}.{method}() got a keyword argument 'signal': every receiver already "
            f"receives the signal as signal=; rename that argument"
        )
    if "sender" in named:
        if sender is not _MISSING:
            raise TypeError(f"{signal!r}.{method}() got the sender twice, by position and keyword")
        sender = named.pop("sender")
    if sender is _MISSING:
        raise TypeError(
            f"{signal!r}.{method}() needs a sender: {method}(sender, **kwargs); "
            f"pass None to reach only the receivers connected for any sender"
        )
    concurrent = named.pop("concurrent", _DEFAULT)
    timeout = named.pop("timeout", _DEFAULT)
    max_concurrency = named.pop("max_concurrency", _DEFAULT)
    if concurrent is _DEFAULT and timeout is _DEFAULT and max_concurrency is _DEFAULT:
        return sender, None
    _check_options(concurrent, timeout, max_concurrency)
    return sender, (
        signal.concurrent if concurrent is _DEFAULT else concurrent,
        signal.timeout if timeout is _DEFAULT else timeout,
        signal.max_concurrency if max_concurrency is _DEFAULT else max_concurrency,
    )


def _make_send(robust: bool) -> Callable[..., Coroutine[Any, Any, Results]]:
    """Build ``send`` or ``send_robust``.

    The two differ only in what a receiver's exception does, and this loop is the product's
    hot path: a shared coroutine that both awaited would cost one more coroutine per send, so
    the loop is written once and specialised here. It runs the sync receivers inline and hands
    the rest of the list to :func:`dispatch.run` at the first receiver that needs awaiting.

    ``sender`` is positional-only in the signature so that the common call parses fast; a
    sender given by keyword (Django style) and the dispatch options (``concurrent``,
    ``timeout``, ``max_concurrency``) are picked out of ``named`` by :func:`_parse_call`.
    """
    method = "send_robust" if robust else "send"

    # No *args: Python's own "takes from 1 to 2 positional arguments" error is clear enough,
    # and parsing *args costs every send.
    async def send(self: AsyncSignal, sender: Any = _MISSING, /, **named: Any) -> Results:
        options = None
        if sender is _MISSING or not _RESERVED.isdisjoint(named):
            sender, options = _parse_call(self, method, sender, (), named)
        if self._silent:
            return []
        cls = type(sender)
        if cls is str or cls is int or cls is bytes:
            rows = self._value_cache.get(sender)
        else:
            rows = self._id_cache.get(id(sender))
        if rows is None:
            rows = self._lookup(sender)
        # Receivers get their own copy of this dict (**kwargs always copies), so it is built
        # once per send.
        named["signal"] = self
        named["sender"] = sender
        if options is not None or self._options:
            if options is None:
                options = (self.concurrent, self.timeout, self.max_concurrency)
            return await dispatch.run(self, rows, 0, [], named, robust, *options)
        results: Results = []
        index = 0
        for get, mode, entry in rows:
            fn = get()
            if fn is None:
                index += 1
                continue
            if mode and (mode != ASYNC or index + 1 < len(rows)):
                return await dispatch.run(self, rows, index, results, named, robust)
            try:
                if mode:
                    # The last receiver, and async: nothing after it could run concurrently,
                    # so it is awaited right here, at the cost of a plain await.
                    result = await fn(**named)
                else:
                    result = fn(**named)
                    if result is not None and hasattr(type(result), "__await__"):
                        result = await result
            except Exception as exc:
                if not robust:
                    raise ExceptionGroup(f"a receiver of {self!r} raised", [exc]) from None
                dispatch.log_failure(self, entry, sender, exc)
                result = exc
            results.append((fn, result))
            index += 1
        return results

    send.__name__ = method
    send.__qualname__ = f"AsyncSignal.{method}"
    return send


class AsyncSignal:
    """A signal that sync and async receivers connect to, Django style.

    ``await sig.send(sender, **kwargs)`` calls every receiver connected for that sender as
    ``receiver(signal=sig, sender=sender, **kwargs)`` and returns ``[(receiver, result), ...]``
    in connection order. Sync receivers run inline on the event loop; async ones run
    concurrently. See the README for every option.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        use_caching: bool = False,
        concurrent: bool = True,
        timeout: float | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"AsyncSignal name must be a str, got {name!r}")
        _check_options(concurrent, timeout, max_concurrency)
        self.name = name
        # Accepted for Django compatibility. The per-sender cache is always on: it is keyed by
        # identity and evicted when a sender dies, so unlike Django's it needs no opt-in.
        self.use_caching = use_caching
        self.concurrent = concurrent
        self.timeout = timeout
        self.max_concurrency = max_concurrency
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

    def __repr__(self) -> str:
        if self.name:
            return f"<AsyncSignal {self.name!r}>"
        return f"<AsyncSignal at {id(self):#x}>"

    # -- connections --------------------------------------------------------------------

    def connect(
        self,
        fn: Callable[..., Any],
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
        *,
        sync_to_thread: bool = False,
    ) -> None:
        """Connect ``fn`` to this signal, for every sender or only for ``sender``.

        ``weak=True`` holds a weak reference, so a receiver that is garbage collected
        disconnects itself. ``dispatch_uid`` identifies the connection: connecting twice with
        the same uid (or the same receiver and sender) registers once, the first one winning.
        ``sync_to_thread=True`` runs a blocking sync receiver in a worker thread.
        """
        self._connect(fn, sender, weak, dispatch_uid, sync_to_thread)

    def _connect(
        self,
        fn: Callable[..., Any],
        sender: Any,
        weak: bool,
        dispatch_uid: Hashable | None,
        sync_to_thread: bool,
    ) -> bool:
        check_receiver(fn)
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
        entry = _Entry(self, fn, sender, weak, key, mode)
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
        fn: Callable[..., Any] | None = None,
        sender: Any = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        """Disconnect a (receiver, sender) pair or a ``dispatch_uid``; True if it was connected."""
        if fn is None and dispatch_uid is None:
            raise TypeError(f"{self!r}.disconnect() needs the receiver or its dispatch_uid")
        if sender is ANY:
            sender = None
        key = self._key(fn, sender, dispatch_uid)
        with self._lock:
            kept = []
            found = False
            for e in self._entries:
                if not e.alive():
                    continue
                if not found and e.key == key and (dispatch_uid is not None or e.same_receiver(fn)):
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
            (type(e.sender_value), e.sender_value) for e in entries if e.sender_value is not None
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

    def receivers_for(self, sender: Any) -> list[Any]:
        """The live receivers a send from ``sender`` would call, in connection order."""
        receivers = []
        for e in self._entries:
            if e.listens_to(sender) and e.alive():
                receivers.append(e.resolve())
        return receivers

    def has_listeners(self, sender: Any = None) -> bool:
        """Whether a send from ``sender`` would reach anyone.

        As in Django, ``has_listeners()`` with no sender counts only the receivers connected
        for any sender.
        """
        return any(e.listens_to(sender) and e.alive() for e in self._entries)

    @property
    def receivers(self) -> list[Any]:
        """Every live receiver, whatever its sender, in connection order."""
        return [r for r in (e.resolve() for e in self._entries if e.alive()) if r is not None]

    # -- sending ------------------------------------------------------------------------

    send = _make_send(robust=False)
    send.__doc__ = """Call every receiver for ``sender``; return ``[(receiver, result), ...]``.

    If receivers raise, the still-running ones are cancelled and an ``ExceptionGroup`` of
    every failure is raised (always a group, as ``asyncio.TaskGroup`` does).
    Per-call options: ``concurrent``, ``timeout``, ``max_concurrency``.
    """

    send_robust = _make_send(robust=True)
    send_robust.__doc__ = """Like ``send``, but an ``Exception`` from a receiver is logged on the
    ``asignals`` logger and returned in that receiver's slot; the others carry on."""

    def send_nowait(self, sender: Any = _MISSING, /, *args: Any, **named: Any) -> None:
        """Schedule ``send_robust(sender, **kwargs)`` on the running dispatcher; return at once."""
        if sender is _MISSING or args or not _RESERVED.isdisjoint(named):
            sender, options = _parse_call(self, "send_nowait", sender, args, named)
            if options is not None:
                raise TypeError("send_nowait() takes no dispatch options; set them on the signal")
        background.submit(self, sender, named)

    async def send_later(self, sender: Any = _MISSING, /, *args: Any, **named: Any) -> None:
        """Like ``send_nowait``, but wait for room when the dispatcher's backlog is full."""
        if sender is _MISSING or args or not _RESERVED.isdisjoint(named):
            sender, options = _parse_call(self, "send_later", sender, args, named)
            if options is not None:
                raise TypeError("send_later() takes no dispatch options; set them on the signal")
        await background.submit_wait(self, sender, named)

    def send_after_response(self, sender: Any = _MISSING, /, *args: Any, **named: Any) -> None:
        """Hold ``send_nowait(sender, **kwargs)`` until the current request has succeeded.

        For side effects that must not happen when the request fails (the confirmation email
        of an order that a later step refuses): the send is delivered once the response went
        out with a status the ``SignalsMiddleware`` delivers on (below 400 by default) and
        dropped if the app raised. Raises ``RuntimeError`` outside a request served by it.
        """
        if sender is _MISSING or args or not _RESERVED.isdisjoint(named):
            sender, options = _parse_call(self, "send_after_response", sender, args, named)
            if options is not None:
                raise TypeError(
                    "send_after_response() takes no dispatch options; set them on the signal"
                )
        _held.hold(self, sender, named)

    # -- testing helpers ----------------------------------------------------------------

    @contextmanager
    def connected_to(self, fn: F, sender: Any = None) -> Iterator[F]:
        """Connect ``fn`` (strongly) for the ``with`` block only.

        If ``fn`` was already connected for that sender, it stays connected afterwards.
        """
        added = self._connect(fn, sender, False, None, False)
        try:
            yield fn
        finally:
            if added:
                self.disconnect(fn, sender=sender)

    @contextmanager
    def muted(self) -> Iterator[None]:
        """Make every send of this signal a no-op returning ``[]`` for the ``with`` block."""
        with self._lock:
            self._muted += 1
            self._silent = True
        try:
            yield
        finally:
            with self._lock:
                self._muted -= 1
                self._silent = not self._entries or self._muted > 0


def receiver(
    signal: AsyncSignal | Sequence[AsyncSignal],
    *,
    sender: Any = None,
    weak: bool = True,
    dispatch_uid: Hashable | None = None,
    sync_to_thread: bool = False,
) -> Callable[[F], F]:
    """Decorator connecting the function to one signal or to each of a list of signals."""
    signals = (signal,) if isinstance(signal, AsyncSignal) else tuple(signal)
    for s in signals:
        if not isinstance(s, AsyncSignal):
            raise TypeError(f"@receiver takes an AsyncSignal or a list of them, got {s!r}")

    def decorator(fn: F) -> F:
        for s in signals:
            s.connect(
                fn,
                sender=sender,
                weak=weak,
                dispatch_uid=dispatch_uid,
                sync_to_thread=sync_to_thread,
            )
        return fn

    return decorator


__all__ = ["ANY", "AsyncSignal", "receiver"]
