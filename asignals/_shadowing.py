"""Instance attributes that shadow a signal's ``send``/``send_robust``, stacked in any order.

The pytest recorder (``asignals.testing``) and a running bridge (``asignals.bridge``) each put
a wrapper on the signal *instance*, so the class and every other signal stay untouched. Both
may be on one signal: a test records a bridged signal, or starts the bridge after it started
recording. Each wrapper calls the one it shadows, and either may be taken off first: one that
is not on top stays in the chain, passing sends through, and is skipped once the one above it
goes, so nothing is left behind when both are gone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["chain", "shadow", "unshadow"]

Wrapper = Callable[..., Any]


def shadow(
    signal: object,
    name: str,
    make: Callable[[Wrapper | None], Wrapper],
    active: Callable[[], bool],
) -> Wrapper:
    """Put ``make(shadowed)`` on ``signal`` as ``name``; ``shadowed`` is None for the class's.

    ``active()`` tells whether the wrapper still does something; once it says no, the wrapper
    is skipped when the chain is relinked.
    """
    prior: Wrapper | None = vars(signal).get(name)
    wrapper = make(prior)
    wrapper.__dict__["_asignals_prior"] = prior
    wrapper.__dict__["_asignals_active"] = active
    setattr(signal, name, wrapper)
    return wrapper


def unshadow(signal: object, name: str, wrapper: Wrapper) -> None:
    """Take ``wrapper`` off if it is on top; otherwise it passes through until skipped."""
    attrs = vars(signal)
    if attrs.get(name) is not wrapper:
        return
    prior: Wrapper | None = wrapper.__dict__["_asignals_prior"]
    while prior is not None and not prior.__dict__["_asignals_active"]():
        prior = prior.__dict__["_asignals_prior"]
    if prior is None:
        del attrs[name]
    else:
        attrs[name] = prior


def chain(signal: object, name: str) -> Iterator[Wrapper]:
    """The wrappers on ``signal`` for ``name``, from the top down."""
    wrapper: Wrapper | None = vars(signal).get(name)
    while wrapper is not None:
        yield wrapper
        wrapper = wrapper.__dict__.get("_asignals_prior")
