"""The keyword names a send never passes to receivers as they are.

``signal`` and ``sender`` are what every receiver gets; the rest are per-call dispatch options.
The core, the pytest recorder and the bridge's envelope all refuse or strip these names, so
they live here once.
"""

from __future__ import annotations

from typing import Final

#: The per-call dispatch options of ``send``/``send_robust``.
OPTIONS: Final = frozenset({"concurrent", "timeout", "max_concurrency"})

#: What every receiver is given by keyword, whatever the send's own arguments.
GIVEN: Final = frozenset({"signal", "sender"})

#: Keywords with a meaning of their own in ``send(sender, **kwargs)``.
RESERVED: Final = GIVEN | OPTIONS

__all__ = ["GIVEN", "OPTIONS", "RESERVED"]
