"""Tracing hooks: how ``asignals.contrib.opentelemetry`` sees the bridge without the bridge
importing it.

``instrument()`` sets :data:`hooks`; the bridge reads the module attribute on every publish,
delivery and dead letter, so with ``hooks is None`` (the default) tracing costs one attribute
read. A hook must not raise: the bridge calls it on the send path. Headers are plain ``str`` to
``str`` maps carried in the envelope beside (never inside) the keyword arguments, on every
transport; a malformed header from another process is the hook's to ignore.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

__all__ = ["BridgeHooks", "hooks"]


class BridgeHooks(Protocol):
    """What an instrumentation implements to trace bridged events."""

    def on_publish(self, signal_name: str, headers: dict[str, str]) -> None:
        """Called in the sending context as an event is encoded; may add (W3C) headers."""

    def on_deliver(
        self, signal_name: str, headers: dict[str, str], attempt: int
    ) -> AbstractContextManager[None]:
        """Wraps the local send of a received event (``attempt`` counts from 1)."""
        ...

    def on_dead_letter(self, signal_name: str, reason: str) -> None:
        """Called when an event is dead-lettered (``signal_name`` is ``""`` if unknown)."""
        ...


#: The installed hooks, or None (nothing is traced and nothing is paid).
hooks: BridgeHooks | None = None
