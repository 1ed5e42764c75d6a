"""How a signal holds one receiver: the reference to it, the sender it listens to, its key.

Everything here runs at ``connect`` time or when a cache is rebuilt, never per send: the send
loop only reads the rows :meth:`_Entry.row` builds. Nothing here knows the signal class: an
entry reports a death through the ``on_death`` callback its signal passes in.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import sys
import types
import warnings
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Final

from ._reserved import GIVEN

# Senders of these exact types match by value (``sender="orders"``), as in blinker; every other
# sender matches by identity, as in Django. bool is left out so ``True`` never matches ``1``.
VALUE_SENDER_TYPES: Final = (str, bytes, int)

# A connection as the send loop reads it: (getter, mode, entry); getter() is the receiver or None.
Row = tuple[Callable[[], Any], int, "_Entry"]

# How the send loop runs a receiver.
INLINE: Final = 0  # a sync callable: called on the loop thread; an awaitable result is awaited
ASYNC: Final = 1  # returns a coroutine: run concurrently
THREAD: Final = 2  # a sync callable connected with sync_to_thread=True


class WeakReceiverWarning(RuntimeWarning):
    """Warns that a weakly connected receiver was garbage collected before any send reached it.

    Receivers are weakly referenced by default (``weak=True``), as in Django and blinker, so a
    receiver that nothing else keeps alive (a lambda, a closure, a ``functools.partial`` built
    in the call, a bound method of a temporary object) disappears at once; there it would
    vanish silently. This warning names the receiver and the signal: connect it with
    ``weak=False`` (or ``@receiver(..., weak=False)``), or keep a reference to it. Receivers
    collected after a send reached them, disconnected ones and those collected at interpreter
    exit are not reported. Turn it into an error in tests with
    ``-W error::asignals.WeakReceiverWarning``.
    """


def describe(fn: Any) -> str:
    """A readable name for logs and errors; never raises, whatever ``fn`` is.

    Django's ``send_robust`` logs ``receiver.__qualname__``, which a ``functools.partial`` or a
    callable instance does not have: the logging call itself then crashes.
    """
    if isinstance(fn, functools.partial):
        return f"functools.partial({describe(fn.func)})"
    if isinstance(fn, types.MethodType):
        return describe(fn.__func__)
    name = getattr(fn, "__qualname__", None)
    if isinstance(name, str):
        module = getattr(fn, "__module__", None)
        return f"{module}.{name}" if isinstance(module, str) else name
    cls: type[Any] = type(fn)  # pyright: ignore[reportUnknownVariableType]
    return f"{cls.__module__}.{cls.__qualname__} instance"


def receiver_mode(fn: Callable[..., Any], sync_to_thread: bool) -> int:
    if inspect.iscoroutinefunction(fn):
        mode = ASYNC
    elif not inspect.isroutine(fn) and not isinstance(fn, functools.partial):
        # A callable instance: ``async def __call__`` makes it a coroutine function in effect.
        call = getattr(type(fn), "__call__", None)  # noqa: B004 - want the class attribute
        mode = ASYNC if inspect.iscoroutinefunction(call) else INLINE
    else:
        mode = INLINE
    if sync_to_thread:
        if mode == ASYNC:
            raise TypeError(
                f"sync_to_thread=True is for blocking sync receivers; {describe(fn)} is async"
            )
        return THREAD
    return mode


def check_receiver(fn: Any, owner: object, names: frozenset[str] | None) -> None:
    """Refuse, at connect time, receivers that could never be called by a send of ``owner``.

    Every send calls ``fn(signal=..., sender=..., **kwargs)``: ``fn`` must take ``**kwargs``
    and ``sender`` by keyword, and have no required parameter a send never passes. ``names``
    are the keyword arguments a typed signal sends (None: unknown, so only a first parameter
    that can be given positionally is held to ``sender``, as blinker's positional habit
    ``def on(obj, **kw)`` is the common trap).
    """
    if not callable(fn):
        raise TypeError(f"Signal receivers must be callable. Got {fn!r}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some builtins have no signature: nothing to check
    params = list(sig.parameters.values())
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise TypeError(
            f"signal receiver {describe(fn)} must accept keyword arguments (**kwargs): "
            f"a send passes signal=, sender= and the send's own keyword arguments"
        )
    passed: set[str] = {*GIVEN, *(names or ())}
    for index, p in enumerate(params):
        if p.default is not inspect.Parameter.empty or p.kind in (
            inspect.Parameter.VAR_KEYWORD,
            inspect.Parameter.VAR_POSITIONAL,
        ):
            continue
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            problem = f"its parameter {p.name!r} is positional-only"
        elif p.name in passed:
            continue
        elif names is not None:
            problem = f"its required parameter {p.name!r} is not one the signal sends"
        elif index == 0 and p.kind is not inspect.Parameter.KEYWORD_ONLY:
            # blinker's habit: the sender taken positionally under another name. A keyword-only
            # one (Django's own ``def r(*, setting, **kwargs)``) cannot be that mistake.
            problem = f"its first parameter is {p.name!r}, not 'sender'"
        else:
            continue  # may be one of the send's keyword arguments (instance=, created=...)
        raise TypeError(
            f"signal receiver {describe(fn)} cannot be called by {owner!r}: receivers get "
            f"signal= and sender= by keyword (receiver(signal=sig, sender=sender, **kwargs)), "
            f"and {problem}; write it as def {getattr(fn, '__name__', 'receiver')}"
            f"(sender, **kwargs)"
        )


def receiver_key(fn: Any) -> Hashable:
    if isinstance(fn, types.MethodType):
        return ("method", id(fn.__self__), id(fn.__func__))
    return ("object", id(fn))


def sender_key(sender: Any) -> Hashable:
    """The part of a lookup key that names the sender; None means any sender."""
    if sender is None:
        return None
    if type(sender) in VALUE_SENDER_TYPES:
        kind: type[Any] = type(sender)  # pyright: ignore[reportUnknownVariableType]
        return ("value", kind, sender)
    return ("id", id(sender))


class _PartialRef:
    """A weak reference to a ``functools.partial``, alive as long as what it wraps.

    A partial built in the ``connect`` call has no other owner, so a plain weak reference to it
    dies at once (Django and blinker drop such receivers silently). Holding the partial strongly
    instead would keep its function or instance alive forever. So we keep its arguments and
    weakly reference its target: the instance for a partial of a bound method, the function
    otherwise.
    """

    __slots__ = ("_args", "_func", "_keywords", "_original")

    def __init__(self, fn: functools.partial[Any], callback: Callable[[Any], None]) -> None:
        self._args = fn.args
        self._keywords = fn.keywords
        target = fn.func
        self._func: Callable[[], Any]
        if isinstance(target, types.MethodType):
            self._func = weakref.WeakMethod(target, callback)
        else:
            self._func = weakref.ref(target, callback)
        self._original = weakref.ref(fn)

    def __call__(self) -> Any:
        original = self._original()
        if original is not None:
            return original
        func = self._func()
        if func is None:
            return None
        return functools.partial(func, *self._args, **self._keywords)


def _on_receiver_death(
    on_death: Callable[[], str | None], entry_ref: weakref.ref[_Entry], _dead: object
) -> None:
    owner = on_death()  # drops the signal's caches; None once the signal itself is gone
    entry = entry_ref()
    if owner is None or entry is None:
        return
    # At interpreter exit every module's receivers are collected: nothing lost by mistake.
    if entry.called or entry.disconnected or not entry.warn or sys.is_finalizing():
        return
    if entry.sender_ref is not None and entry.sender_ref() is None:
        return  # its sender went first: nothing could have reached it anyway
    warnings.warn(
        f"receiver {entry.name} was weakly connected to {owner} and garbage collected "
        f"before any send reached it; nothing else referenced it. Pass weak=False to "
        f"connect() (or to @receiver) to keep it alive",
        WeakReceiverWarning,
        stacklevel=2,
    )


def _on_sender_death(on_death: Callable[[], str | None], _dead: object) -> None:
    on_death()


class _Entry:
    """One connection: a receiver, the sender it listens to, and how to run it."""

    __slots__ = (
        "__weakref__",
        "called",
        "disconnected",
        "getter",
        "key",
        "mode",
        "name",
        "sender_ref",
        "sender_value",
        "target",
        "warn",
        "weak",
    )

    def __init__(
        self,
        on_death: Callable[[], str | None],
        fn: Callable[..., Any],
        sender: Any,
        weak: bool,
        key: Hashable,
        mode: int,
    ) -> None:
        self.key = key
        self.mode = mode
        self.name = describe(fn)
        self.called = False
        self.disconnected = False
        self.target: Any = fn
        self.weak = False
        # A bound method (or a partial of one) lives as long as its instance, which may go
        # before any send on purpose (a handler closed early). A function, lambda, partial or
        # callable instance that dies unused was most likely only ever held by the signal.
        self.warn = False
        if weak:
            callback = functools.partial(_on_receiver_death, on_death, weakref.ref(self))
            try:
                if isinstance(fn, types.MethodType):
                    self.target = weakref.WeakMethod(fn, callback)
                elif isinstance(fn, functools.partial):
                    self.target = _PartialRef(fn, callback)  # pyright: ignore[reportUnknownArgumentType]
                    self.warn = not isinstance(fn.func, types.MethodType)
                else:
                    self.target = weakref.ref(fn, callback)
                    self.warn = True
                self.weak = True
            except TypeError:
                # Not weakly referenceable (a builtin, a __slots__ instance): hold it strongly
                # rather than refuse it; a strong reference never loses an event.
                pass
        # What the send loop calls to get the receiver: the weak reference itself, or for a
        # strong one a C-level callable returning it, so the loop needs no weak/strong branch.
        strong: Callable[[], Any] = itertools.repeat(fn).__next__  # pyright: ignore[reportUnknownArgumentType]
        self.getter: Callable[[], Any] = self.target if self.weak else strong
        # The sender: None for any; by value for str/bytes/int; otherwise by identity,
        # through a weak reference where the sender allows one.
        self.sender_value: Any = None
        self.sender_ref: Callable[[], Any] | None = None
        if sender is None:
            return
        if type(sender) in VALUE_SENDER_TYPES:
            self.sender_value = sender
            return
        try:
            self.sender_ref = weakref.ref(sender, functools.partial(_on_sender_death, on_death))
        except TypeError:
            self.sender_ref = _Strong(sender)

    def resolve(self) -> Any:
        """The receiver, or None once it has been garbage collected."""
        return self.getter()

    def row(self) -> Row:
        """What a cached send loop reads: ``(getter, mode, entry)``."""
        return (self.getter, self.mode, self)

    def alive(self) -> bool:
        if self.sender_ref is not None and self.sender_ref() is None:
            return False
        return self.resolve() is not None

    def listens_to(self, sender: Any) -> bool:
        if self.sender_ref is not None:
            current = self.sender_ref()
            return current is not None and current is sender
        if self.sender_value is not None:
            return type(sender) is type(self.sender_value) and sender == self.sender_value
        return True

    def same_receiver(self, fn: Any) -> bool:
        current = self.resolve()
        if current is None:
            return False
        if isinstance(fn, types.MethodType):
            return (
                isinstance(current, types.MethodType)
                and current.__self__ is fn.__self__
                and current.__func__ is fn.__func__
            )
        return current is fn


class _Strong:
    """The strong-reference twin of ``weakref.ref``, for senders that refuse weak references."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __call__(self) -> Any:
        return self._obj
