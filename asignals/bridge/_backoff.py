"""Exponential backoff with jitter, shared by the publisher and the reader.

Each delay is drawn from the upper half of its step (equal jitter): never much sooner than
asked, and restarted workers still do not retry in lockstep.
"""

from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff"]


class Backoff:
    """Delays that double from ``initial`` to ``maximum``, each drawn from [d/2, d], so
    restarted workers do not reconnect in lockstep."""

    def __init__(self, initial: float, maximum: float) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got ({initial}, {maximum})")
        self._initial = initial
        self._maximum = maximum
        self._attempt = 0

    @property
    def failing(self) -> bool:
        return self._attempt > 0

    def reset(self) -> None:
        self._attempt = 0

    def delay(self, attempt: int | None = None) -> float:
        """The next delay (or the one for ``attempt``, counted from 0, without advancing)."""
        if attempt is None:
            attempt = self._attempt
            self._attempt = min(self._attempt + 1, 30)
        base = min(self._maximum, self._initial * (2 ** min(attempt, 30)))
        return random.uniform(base / 2, base)

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay())
