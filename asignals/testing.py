"""Test helpers, and the pytest plugin (``pytest11`` entry point) that provides them as fixtures.

``signal_recorder`` records every send of the signals you choose: the signal, the sender, the
keyword arguments and the results (or the error the send raised), in the order the sends
finished. It works for ``send``, ``send_robust`` and background sends (``send_nowait``,
``send_later``, recorded when the dispatcher runs them), under pytest-asyncio, AnyIO's pytest
plugin or no plugin at all: the fixture itself is synchronous. ``send_after_response`` sends
are recorded when delivered; those dropped because their request failed are in ``dropped``.

Why the recorder wraps the signal's ``send``/``send_robust`` instead of connecting a receiver:
a receiver cannot see the other receivers' results, it shows up in ``has_listeners()`` and in
those results, and it misses sends of a signal that is muted or has no receivers yet. The
wrapper is an instance attribute put on the signal for the duration of the test and removed on
teardown; the signal's behaviour is otherwise untouched.

::

    async def test_order_placed(signal_recorder):
        signal_recorder.watch(order_placed)
        await place_order(total=10)
        signal_recorder.assert_sent(order_placed, sender=Order, total=10)
"""

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
    """One recorded send. ``results`` is ``[(receiver, result), ...]`` as the send returned it,
    or None when the send raised ``error``; ``robust`` tells ``send_robust`` from ``send``."""

    signal: AsyncSignal
    sender: Any
    kwargs: dict[str, Any]
    results: list[tuple[Any, Any]] | None
    error: BaseException | None = None
    robust: bool = False
    receivers: list[str] = field(default_factory=list[str])

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        head = f"{self.signal!r} sender={self.sender!r}" + (f", {args}" if args else "")
        if self.error is not None:
            return f"{head} -> raised {self.error!r}"
        return f"{head} -> {len(self.results or ())} result(s)"


@dataclass(frozen=True)
class DroppedSend:
    """A ``send_after_response`` dropped because its request failed: ``status`` is the
    response status (None when none was sent), ``exception`` what the app raised (or None)."""

    signal: AsyncSignal
    sender: Any
    kwargs: dict[str, Any]
    status: int | None
    exception: BaseException | None


class SignalRecorder:
    """Records every send of the watched signals; see the module docstring.

    Also usable without pytest: ``with SignalRecorder(sig_a, sig_b) as rec: ...``.
    """

    def __init__(self, *signals: AsyncSignal) -> None:
        self.sends: list[SentSignal] = []
        #: The held sends of watched signals that were dropped, oldest first.
        self.dropped: list[DroppedSend] = []
        self._wrapped: list[tuple[AsyncSignal, str, Callable[..., Any]]] = []
        self._active = True
        _held.observers.append(self._on_drop)
        self.watch(*signals)

    # -- watching -----------------------------------------------------------------------

    def watch(self, *signals: AsyncSignal) -> SignalRecorder:
        """Start recording these signals (watching one twice records it once). Returns self."""
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
        """Stop recording and take the wrappers off the signals."""
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
        """The recorded sends of one signal, oldest first."""
        return [s for s in self.sends if s.signal is signal]

    def clear(self) -> None:
        """Forget what was recorded so far (keep watching)."""
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

        ``times`` asks for exactly that many matching sends. Returns the last matching send.
        The failure message lists every recorded send of the signal and why each did not match.
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
        """Assert no recorded send of ``signal`` matches ``sender`` and ``kwargs``."""
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
        """Wait until ``times`` matching sends were recorded: for ``send_nowait``, whose send
        runs later on the dispatcher. Fails like :meth:`assert_sent` after ``timeout`` seconds.
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
    """A :class:`SignalRecorder` watching nothing yet: ``signal_recorder.watch(sig)``.

    Everything it wrapped is restored when the test ends.
    """
    recorder = SignalRecorder()
    try:
        yield recorder
    finally:
        recorder.close()
