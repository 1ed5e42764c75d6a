"""Receivers wrapped in a timer for the length of one instrumented send.

The dispatch rows of an instrumented send hold these instead of the receivers: each records
when its receiver started and ended and what it raised, so the spans and the duration histogram
can be recorded after the send, with the real times, without a span being opened per receiver
while it runs. A receiver keeps its mode (sync, async, thread), so the core runs it exactly as
it would the receiver itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from time import time_ns
from typing import Any


class Timing:
    """One receiver of one send: its start and end (epoch ns, 0 until then), its error, and
    whether it was cancelled (by a failing sibling, a ``timeout``, the caller)."""

    __slots__ = ("cancelled", "end", "entry", "error", "fn", "start")

    def __init__(self, fn: Any, entry: Any) -> None:
        self.fn = fn
        self.entry = entry
        self.start = 0
        self.end = 0
        self.error: Exception | None = None
        self.cancelled = False

    def get(self) -> Timing:
        """The row's getter: the core calls what it returns."""
        return self

    def __call__(self, **named: Any) -> Any:
        """Run the receiver with ``named``, timing it."""
        raise NotImplementedError


class Sync(Timing):
    """A sync receiver (inline or in a thread); an awaitable it returns is timed to its end."""

    __slots__ = ()

    def __call__(self, **named: Any) -> Any:
        self.start = time_ns()
        try:
            value = self.fn(**named)
        except Exception as exc:
            self.error = exc
            self.end = time_ns()
            raise
        except BaseException:
            self.cancelled = True
            self.end = time_ns()
            raise
        if value is not None and hasattr(type(value), "__await__"):  # pyright: ignore[reportUnknownArgumentType] - type() of an Any
            return self._finish(value)
        self.end = time_ns()
        return value

    async def _finish(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except Exception as exc:
            self.error = exc
            raise
        except BaseException:
            self.cancelled = True
            raise
        finally:
            self.end = time_ns()


class Async(Timing):
    """An async receiver: the coroutine the core runs times the receiver's own."""

    __slots__ = ()

    def __call__(self, **named: Any) -> Coroutine[Any, Any, Any]:
        return self._run(named)

    async def _run(self, named: dict[str, Any]) -> Any:
        self.start = time_ns()
        try:
            return await self.fn(**named)
        except Exception as exc:
            self.error = exc
            raise
        except BaseException:
            self.cancelled = True
            raise
        finally:
            self.end = time_ns()
