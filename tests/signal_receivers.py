"""Receivers and a sender class shared by the core test modules."""

from __future__ import annotations

from typing import Any


def sync_receiver(sender: Any, **kwargs: Any) -> str:
    return "sync"


async def async_receiver(sender: Any, **kwargs: Any) -> str:
    return "async"


class Sender:
    pass
