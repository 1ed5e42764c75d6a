"""Background dispatch: ``send_nowait`` and the dispatcher that owns those sends.

(Placeholder: being implemented for issue 3.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .signal import AsyncSignal


def submit(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
    """Schedule ``signal.send_robust(sender, **kwargs)`` on the current dispatcher."""
    raise RuntimeError(
        "send_nowait() needs a running dispatcher: wrap your program in "
        "`async with asignals.dispatcher():` (or use the FastAPI/Starlette lifespan)"
    )


async def submit_wait(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
    """Like :func:`submit`, but wait for room when the backlog is full."""
    submit(signal, sender, kwargs)
