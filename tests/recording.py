"""A receiver that records every send of the signals a test watches, in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asignals import AsyncSignal


@dataclass
class Call:
    signal: str
    sender: Any
    kwargs: dict[str, Any]


class Recorder:
    """Connects to signals strongly and records every call in order (see the ``rec`` fixture)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._connected: list[tuple[AsyncSignal, Any, Any]] = []

    def watch(self, *sigs: AsyncSignal, sender: Any = None) -> None:
        for sig in sigs:

            def record(sender: Any, signal: AsyncSignal, **kwargs: Any) -> None:
                self.calls.append(Call(str(signal.name), sender, kwargs))

            sig.connect(record, sender=sender, weak=False)
            self._connected.append((sig, record, sender))

    def named(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.signal == name]

    def close(self) -> None:
        for sig, fn, sender in self._connected:
            sig.disconnect(fn, sender=sender)
