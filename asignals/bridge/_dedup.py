"""Consumer-side de-duplication by envelope id."""

from __future__ import annotations

import collections

__all__ = ["Deduplicator"]


class Deduplicator:
    """Remembers the ids of the last ``maxsize`` events handled, to drop redeliveries.

    Delivery is at least once (a retried publish, an outbox relay that crashed after
    publishing, a worker killed before its acknowledgement): pass ``dedupe=Deduplicator()`` to
    a :class:`Bridge` and an event whose envelope id this process already handled successfully
    is acknowledged without running the receivers again. The memory is per process; share a
    store (your database) when several workers must agree.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize!r}")
        self.maxsize = maxsize
        """How many event ids it remembers: one redelivered after that many others runs again.

        Size it above the events one process handles within the longest redelivery delay
        (``claim_idle``, an outbox relay's retries).
        """
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()

    def seen(self, envelope_id: str) -> bool:
        """True if ``envelope_id`` was :meth:`add`-ed and not yet forgotten."""
        return envelope_id in self._ids

    def add(self, envelope_id: str) -> None:
        """Remember ``envelope_id``; the oldest id is forgotten past ``maxsize``."""
        self._ids[envelope_id] = None
        self._ids.move_to_end(envelope_id)
        if len(self._ids) > self.maxsize:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)
