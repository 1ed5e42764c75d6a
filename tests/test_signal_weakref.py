"""Weakly connected receivers: they disappear with their referent, and never silently unused."""

from __future__ import annotations

import functools
import gc
import weakref
from typing import Any

import pytest

from asignals import AsyncSignal, WeakReceiverWarning

pytestmark = pytest.mark.anyio


# -- weak references ------------------------------------------------------------------------


async def test_collected_function_disappears_without_disconnect() -> None:
    sig = AsyncSignal()

    def make() -> Any:
        def local(sender: Any, **kw: Any) -> str:
            return "local"

        return local

    fn = make()
    sig.connect(fn)
    assert len(await sig.send(None)) == 1
    del fn
    gc.collect()
    assert await sig.send(None) == []
    assert sig.receivers == []
    assert sig._entries == ()  # the dead connection was cleaned, not just skipped


async def test_bound_method_is_held_weakly() -> None:
    sig = AsyncSignal()

    class Obj:
        async def handle(self, sender: Any, **kw: Any) -> str:
            return "handled"

    obj = Obj()
    ref = weakref.ref(obj)
    sig.connect(obj.handle)
    assert [r for _, r in await sig.send(None)] == ["handled"]
    del obj
    gc.collect()
    assert ref() is None  # the signal did not keep it alive
    assert await sig.send(None) == []


async def test_weak_partial_lives_as_long_as_what_it_wraps() -> None:
    sig = AsyncSignal()

    class Obj:
        def handle(self, sender: Any, tag: str = "", **kw: Any) -> str:
            return tag

    obj = Obj()
    ref = weakref.ref(obj)
    sig.connect(functools.partial(obj.handle, tag="bound"))

    def plain(sender: Any, tag: str = "", **kw: Any) -> str:
        return tag

    sig.connect(functools.partial(plain, tag="plain"))
    gc.collect()
    assert [r for _, r in await sig.send(None)] == ["bound", "plain"]
    del obj
    gc.collect()
    assert ref() is None
    assert [r for _, r in await sig.send(None)] == ["plain"]
    del plain
    gc.collect()
    assert await sig.send(None) == []


async def test_weak_lambda_collected_before_any_send_warns() -> None:
    sig = AsyncSignal(name="lonely")
    with pytest.warns(WeakReceiverWarning, match=r"weak=False"):
        sig.connect(lambda sender, **kw: None)
        gc.collect()
    assert await sig.send(None) == []
    sig.connect(lambda sender, **kw: "kept", weak=False)
    assert [r for _, r in await sig.send(None)] == ["kept"]


async def test_receiver_collected_after_being_called_does_not_warn(
    recwarn: pytest.WarningsRecorder,
) -> None:
    sig = AsyncSignal()

    def local(sender: Any, **kw: Any) -> None:
        return None

    sig.connect(local)
    await sig.send(None)
    del local
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, WeakReceiverWarning)]


async def test_a_weak_bound_method_whose_instance_goes_first_does_not_warn(
    recwarn: pytest.WarningsRecorder,
) -> None:
    sig = AsyncSignal()

    class Subscriber:  # e.g. one per websocket connection
        def __init__(self) -> None:
            sig.connect(self.on_event)

        def on_event(self, sender: Any, **kw: Any) -> None:
            return None

    subscribers = [Subscriber() for _ in range(3)]
    del subscribers
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, WeakReceiverWarning)]
    assert sig.receivers == []
