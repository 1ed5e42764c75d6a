"""Test helpers: assert which signals your code sent, with which arguments, without receivers.

Installing asignals registers a pytest plugin (a ``pytest11`` entry point) that provides the
``signal_recorder`` fixture: a :class:`SignalRecorder` that records every send of the signals
you choose, the signal, the sender, the keyword arguments and the results (or the error the
send raised), in the order the sends finished. Use it to test the sending side of a feature
("placing an order sends ``order_placed`` with the total") without connecting receivers, and
to wait for background sends:

```py
async def test_order_placed(signal_recorder):
    signal_recorder.watch(order_placed)
    await place_order(total=10)
    signal_recorder.assert_sent(order_placed, sender=Order, total=10)
```

It records ``send`` and ``send_robust``, and background sends (``send_nowait``,
``send_later``) when the dispatcher runs them; ``send_after_response`` sends when they are
delivered, and those dropped because their request failed in :attr:`SignalRecorder.dropped`.
It works under pytest-asyncio, AnyIO's pytest plugin or no plugin at all: the fixture itself
is synchronous. To test receivers instead, send the signal, or use
:meth:`~asignals.AsyncSignal.connected_to` and :meth:`~asignals.AsyncSignal.muted`. See
[Testing](../guides/testing.md).
"""

# Why the recorder wraps the signal's ``send``/``send_robust`` instead of connecting a receiver:
# a receiver cannot see the other receivers' results, it shows up in ``has_listeners()`` and in
# those results, and it misses sends of a signal that is muted or has no receivers yet. The
# wrapper is an instance attribute put on the signal for the duration of the test and removed on
# teardown; the signal's behaviour is otherwise untouched.

from __future__ import annotations

import contextvars
import functools
import math
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import anyio
import pytest

from . import _held
from ._receivers import describe
from ._reserved import RESERVED
from ._shadowing import shadow, unshadow
from ._signal import AsyncSignal

__all__ = ["DroppedSend", "SentSignal", "SignalRecorder", "signal_recorder"]

_ANY: Final[Any] = object()  # "any sender" in the assertion helpers

# Set while a recorded send runs, so a send nested in it (none today) is not recorded twice.
_recording: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "asignals_recording", default=False
)


@dataclass(frozen=True)
class SentSignal:
    """One recorded send, as :class:`SignalRecorder` keeps it in ``sends``.

    The assertion helpers return one, for the checks they do not cover: what a receiver
    returned (``sent.results``), which receivers ran (``sent.receivers``), whether the send
    failed (``sent.error``). Frozen: a recorded send does not change.
    """

    signal: AsyncSignal
    """The signal that was sent."""
    sender: Any
    """The sender the send was made with."""
    kwargs: dict[str, Any]
    """The keyword arguments of the send, without ``signal``, ``sender`` and dispatch options."""
    results: list[tuple[Any, Any]] | None
    """``[(receiver, result), ...]`` as the send returned it, or ``None`` when it raised.

    For ``send_robust``, a receiver's exception is its result.
    """
    error: BaseException | None = None
    """What the send raised (an ``ExceptionGroup`` for failing receivers), or ``None``."""
    robust: bool = False
    """``True`` for ``send_robust`` (and background sends, which run through it)."""
    receivers: list[str] = field(default_factory=list[str])
    """The names of the receivers in ``results``, in connection order, as messages show them."""

    def describe(self) -> str:
        """The send on one line, as the assertion messages list it."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        head = f"{self.signal!r} sender={self.sender!r}" + (f", {args}" if args else "")
        if self.error is not None:
            return f"{head} -> raised {self.error!r}"
        return f"{head} -> {len(self.results or ())} result(s)"


@dataclass(frozen=True)
class DroppedSend:
    """A ``send_after_response`` that was dropped because its request failed.

    :attr:`SignalRecorder.dropped` holds them, so a test can check that a failing request
    sends nothing (``assert not signal_recorder.of(order_confirmed)``) and why it was dropped.
    """

    signal: AsyncSignal
    """The signal that would have been sent."""
    sender: Any
    """Its sender."""
    kwargs: dict[str, Any]
    """Its keyword arguments."""
    status: int | None
    """The response status that ``deliver_on`` refused, or ``None`` when no response was sent."""
    exception: BaseException | None
    """What the app (or ``deliver_on``) raised, or ``None`` when the status alone was refused."""


class SignalRecorder:
    """Records every send of the watched signals, for assertions on what code sent.

    In pytest, take the ``signal_recorder`` fixture, which closes it after the test. Outside
    pytest (a unittest case, a script), use it as a context manager:
    ``with SignalRecorder(order_placed, order_cancelled) as rec: ...``. Recording wraps each
    watched signal's ``send`` and ``send_robust`` on the instance; nothing is connected, so
    ``has_listeners()``, receivers' results and muted signals behave as without it. Iterating
    it gives the recorded sends, ``len()`` their number.

    :param signals: the signals to watch from the start (more with :meth:`watch`).
    :raises TypeError: one of ``signals`` is not an :class:`~asignals.AsyncSignal`.
    """

    def __init__(self, *signals: AsyncSignal) -> None:
        self.sends: list[SentSignal] = []
        """Every recorded send of the watched signals, in the order the sends finished."""
        self.dropped: list[DroppedSend] = []
        """The held sends of watched signals that were dropped, oldest first."""
        self._wrapped: list[tuple[AsyncSignal, str, Callable[..., Any]]] = []
        self._active = True
        _held.observers.append(self._on_drop)
        self.watch(*signals)

    # -- watching -----------------------------------------------------------------------

    def watch(self, *signals: AsyncSignal) -> SignalRecorder:
        """Start recording these signals; return the recorder, for chaining.

        Watch the signals a test is about before the code under test runs: sends made
        earlier are not recorded. Watching a signal twice records it once.

        :raises TypeError: one of ``signals`` is not an :class:`~asignals.AsyncSignal`.
        """
        for signal in signals:
            if not isinstance(signal, AsyncSignal):
                raise TypeError(f"SignalRecorder.watch() takes AsyncSignals, got {signal!r}")
            if any(w[0] is signal for w in self._wrapped):
                continue
            for method in ("send", "send_robust"):
                wrapper = shadow(
                    signal,
                    method,
                    functools.partial(self._wrap, signal, method),
                    lambda: self._active,
                )
                self._wrapped.append((signal, method, wrapper))
        return self

    def _wrap(self, signal: AsyncSignal, method: str, _shadowed: object) -> Callable[..., Any]:
        # What it shadows, or the class's method bound to the signal.
        inner: Callable[..., Coroutine[Any, Any, Any]] = getattr(signal, method)
        robust = method == "send_robust"

        # updated=(): not the shadowed wrapper's __dict__ (its place in the chain).
        @functools.wraps(inner, updated=())
        async def recorded(*args: Any, **kwargs: Any) -> Any:
            # Arguments pass through untouched, so the signal's own checks (a missing sender,
            # a stray positional) still apply.
            if not self._active or _recording.get():
                return await inner(*args, **kwargs)
            sender = args[0] if args else kwargs.get("sender")
            named = {k: v for k, v in kwargs.items() if k not in RESERVED}
            token = _recording.set(True)
            try:
                results = await inner(*args, **kwargs)
            except BaseException as exc:
                self._add(signal, sender, named, None, exc, robust)
                raise
            finally:
                _recording.reset(token)
            self._add(signal, sender, named, results, None, robust)
            return results

        return recorded

    def _add(
        self,
        signal: AsyncSignal,
        sender: Any,
        kwargs: dict[str, Any],
        results: list[tuple[Any, Any]] | None,
        error: BaseException | None,
        robust: bool,
    ) -> None:
        names = [describe(r) for r, _ in results] if results else []
        self.sends.append(SentSignal(signal, sender, kwargs, results, error, robust, names))

    def _on_drop(
        self,
        signal: AsyncSignal,
        sender: Any,
        kwargs: dict[str, Any],
        status: int | None,
        exception: BaseException | None,
    ) -> None:
        if any(w[0] is signal for w in self._wrapped):
            self.dropped.append(DroppedSend(signal, sender, kwargs, status, exception))

    def close(self) -> None:
        """Stop recording and take the wrappers off the signals; what was recorded stays.

        The fixture and the ``with`` block call it; call it yourself for a recorder made
        otherwise, or a signal keeps the wrapper (and the recorder) after the test.
        """
        self._active = False
        if self._on_drop in _held.observers:
            _held.observers.remove(self._on_drop)
        for signal, method, wrapper in reversed(self._wrapped):
            unshadow(signal, method, wrapper)  # under another wrapper, ours passes through
        self._wrapped.clear()

    def __enter__(self) -> SignalRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------

    def of(self, signal: AsyncSignal) -> list[SentSignal]:
        """The recorded sends of one signal, oldest first, for checks of your own.

        ``assert [s.kwargs["total"] for s in rec.of(order_placed)] == [10, 20]``; an empty
        list when it was never sent (or not watched).
        """
        return [s for s in self.sends if s.signal is signal]

    def clear(self) -> None:
        """Forget what was recorded so far, sends and dropped sends; keep watching.

        For a test in several steps: clear after the setup, so the assertions see only the
        sends of the step under test.
        """
        self.sends.clear()
        self.dropped.clear()

    def __iter__(self) -> Iterator[SentSignal]:
        return iter(list(self.sends))

    def __len__(self) -> int:
        return len(self.sends)

    # -- asserting ----------------------------------------------------------------------

    def assert_sent(
        self, signal: AsyncSignal, *, sender: Any = _ANY, times: int | None = None, **kwargs: Any
    ) -> SentSignal:
        """Assert ``signal`` was sent (from ``sender``, with at least these keyword arguments).

        The assertion for the sending side of a feature: keyword arguments not named are not
        compared, so a test states only what it is about. Values compare with ``==`` (a
        ``NaN`` equals a ``NaN``); ``sender`` is compared only when given. On failure the
        message lists every recorded send of the signal and why each did not match.

        :param signal: the watched signal.
        :param sender: the sender the send must have been made with.
        :param times: exactly this many matching sends (default: at least one).
        :param kwargs: keyword arguments the send must have had, with these values.
        :returns: the last matching send, for further checks.
        :raises AssertionError: no (or not ``times``) matching sends.
        """
        __tracebackhide__ = True
        matching = [s for s in self.of(signal) if _mismatch(s, sender, kwargs) is None]
        if matching and (times is None or len(matching) == times):
            return matching[-1]
        wanted = "at least once" if times is None else f"exactly {times} time(s)"
        raise self._failure(signal, sender, kwargs, wanted, len(matching))

    def _failure(
        self, signal: AsyncSignal, sender: Any, kwargs: dict[str, Any], wanted: str, count: int
    ) -> AssertionError:
        expected = _expectation(signal, sender, kwargs)
        return AssertionError(
            f"expected {expected} {wanted}; {count} matching send(s)\n"
            + self._report(signal, sender, kwargs)
        )

    def assert_not_sent(self, signal: AsyncSignal, *, sender: Any = _ANY, **kwargs: Any) -> None:
        """Assert no recorded send of ``signal`` matches ``sender`` and ``kwargs``.

        For the paths that must stay quiet (a refused order sends no ``order_placed``). With
        no ``sender`` and no ``kwargs`` it asserts the signal was not sent at all; with some,
        that no send matched them. Background sends are recorded when they run: let the
        dispatcher drain first, or the assertion may pass too early.

        :raises AssertionError: a matching send was recorded; the message lists them.
        """
        __tracebackhide__ = True
        matching = [s for s in self.of(signal) if _mismatch(s, sender, kwargs) is None]
        if matching:
            raise AssertionError(
                f"expected no {_expectation(signal, sender, kwargs)}, but got "
                f"{len(matching)}:\n" + "\n".join(f"  {s.describe()}" for s in matching)
            )

    async def wait_for(
        self,
        signal: AsyncSignal,
        *,
        sender: Any = _ANY,
        times: int = 1,
        timeout: float = 5.0,
        **kwargs: Any,
    ) -> SentSignal:
        """Wait until ``times`` matching sends were recorded; return the one that made the count.

        For background sends (``send_nowait``, ``send_later``), which are recorded when the
        dispatcher runs them, after the call that made them has returned.
        Matching is :meth:`assert_sent`'s; a matching send recorded before the call counts.

        :param timeout: seconds to wait at most.
        :raises AssertionError: fewer than ``times`` matching sends after ``timeout`` seconds,
            with :meth:`assert_sent`'s message.
        """
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        while True:
            matching = [s for s in self.of(signal) if _mismatch(s, sender, kwargs) is None]
            if len(matching) >= times:
                return matching[times - 1]
            if time.monotonic() >= deadline:
                wanted = f"at least {times} time(s) within {timeout}s"
                raise self._failure(signal, sender, kwargs, wanted, len(matching))
            await anyio.sleep(min(0.005, max(0.0, deadline - time.monotonic())))

    def _report(self, signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> str:
        sends = self.of(signal)
        if not sends:
            others = sorted({repr(s.signal) for s in self.sends})
            seen = f" (recorded: {', '.join(others)})" if others else ""
            watched = any(w[0] is signal for w in self._wrapped)
            hint = "" if watched else f"; {signal!r} is not watched: call .watch() on it first"
            return f"  {signal!r} was never sent{seen}{hint}"
        lines = [f"  {signal!r} was sent {len(sends)} time(s):"]
        for number, sent in enumerate(sends, 1):
            why = _mismatch(sent, sender, kwargs)
            lines.append(f"  #{number} {sent.describe()}" + (f"  <- {why}" if why else ""))
        return "\n".join(lines)


def _expectation(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> str:
    parts = [] if sender is _ANY else [f"sender={sender!r}"]
    parts += [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{signal!r} sent" + (f" with {', '.join(parts)}" if parts else "")


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        equal = bool(a == b)
    except Exception:
        return False
    if not equal and isinstance(a, float) and isinstance(b, float):
        return math.isnan(a) and math.isnan(b)
    return equal


def _mismatch(sent: SentSignal, sender: Any, kwargs: dict[str, Any]) -> str | None:
    """Why ``sent`` does not match the expectation, or None when it does."""
    if sender is not _ANY and not _same(sent.sender, sender):
        return f"sender {sent.sender!r} != {sender!r}"
    for key, value in kwargs.items():
        if key not in sent.kwargs:
            return f"no {key}="
        if not _same(sent.kwargs[key], value):
            return f"{key}={sent.kwargs[key]!r} != {value!r}"
    return None


@pytest.fixture
def signal_recorder() -> Iterator[SignalRecorder]:
    """Pytest fixture: a :class:`SignalRecorder` watching nothing yet, closed after the test.

    Take it as a test argument and call ``signal_recorder.watch(sig)`` for the signals the
    test is about; everything it wrapped is restored when the test ends, pass or fail. It is
    synchronous, so it works in sync tests and under any async test plugin.
    """
    recorder = SignalRecorder()
    try:
        yield recorder
    finally:
        recorder.close()
