"""Django's dispatcher tests, run against asignals through the ``django_signal`` wrapper.

Origin: ``tests/dispatch/tests.py`` of Django 5.2.19 (the release the ``benchmark`` extra installs
on Python 3.11), Copyright (c) Django Software Foundation and individual contributors, BSD
3-Clause License (the text is in LICENSE-django beside this file). Each upstream test is here
under its own name and checks what it checks, rewritten for pytest (functions instead of
``SimpleTestCase`` methods, a ``sender`` fixture instead of ``self`` as the sender, no
``override_settings(DEBUG=True)``: asignals checks receivers always).

Where asignals differs from Django on purpose, the upstream test is kept as Django wrote it
and marked ``xfail(strict=True)`` with the reason and the page that documents it, so that a
difference that goes away fails the suite; a test next to it checks what asignals does instead.
Every test runs on asyncio, uvloop and trio (the wrapper's sync sends run on that loop).
"""

from __future__ import annotations

import gc
import logging
import re
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import django_signal
import pytest
from django_signal import Signal, receiver

from asignals import WeakReceiverWarning

# Django passes everything by keyword, so its receivers may name their first parameter as they
# like (upstream: ``def receiver_1_arg(val, **kwargs)``). asignals refuses a receiver whose
# first parameter is not ``sender`` (it catches blinker's positional ``def on(obj, **kw)`` at
# connect instead of at the first send), so these take ``sender`` first; the upstream shape is
# test_receiver_first_parameter_not_sender.
FIRST_PARAMETER = (
    "asignals differs on purpose: a receiver whose first parameter is not 'sender' is refused "
    "at connect with a TypeError (API.md, Core; docs/coming-from/django.md, Differences)"
)


def receiver_1_arg(sender: Any, val: Any, **kwargs: Any) -> Any:
    return val


class Callable:
    def __call__(self, sender: Any, val: Any, **kwargs: Any) -> Any:
        return val

    def a(self, sender: Any, val: Any, **kwargs: Any) -> Any:
        return val


a_signal = Signal()
b_signal = Signal()
c_signal = Signal()
d_signal = Signal(use_caching=True)


class Sender:
    """Stands for the upstream TestCase instance, the sender of every send there."""


@pytest.fixture(autouse=True)
def backend(anyio_backend: tuple[str, dict[str, Any]]) -> Iterator[None]:
    django_signal.BACKEND = anyio_backend
    yield
    django_signal.BACKEND = ("asyncio", {})


@pytest.fixture
def sender() -> Sender:
    return Sender()


def assert_clean(signal: Signal) -> None:
    """Upstream's assertTestIsClean: nothing is left connected."""
    assert not signal.has_listeners()
    assert signal.receivers == []


# -- DispatcherTests ---------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    raises=TypeError,
    reason="asignals differs on purpose: a receiver without **kwargs is refused with a "
    "TypeError (API.md, Core), always, not a ValueError only under DEBUG=True "
    "(docs/coming-from/django.md, Differences)",
)
def test_cannot_connect_no_kwargs() -> None:
    def receiver_no_kwargs(sender: Any) -> None:
        pass

    msg = "Signal receivers must accept keyword arguments (**kwargs)."
    with pytest.raises(ValueError, match=re.escape(msg)):
        a_signal.connect(receiver_no_kwargs)
    assert_clean(a_signal)


def test_cannot_connect_no_kwargs_type_error() -> None:
    """What asignals does instead: a TypeError naming the receiver, without DEBUG."""

    def receiver_no_kwargs(sender: Any) -> None:
        pass

    with pytest.raises(TypeError, match=r"receiver_no_kwargs must accept keyword arguments"):
        a_signal.connect(receiver_no_kwargs)
    assert_clean(a_signal)


def test_cannot_connect_non_callable() -> None:
    with pytest.raises(TypeError, match=re.escape("Signal receivers must be callable.")):
        a_signal.connect(object())  # type: ignore[arg-type]
    assert_clean(a_signal)


def test_send(sender: Sender) -> None:
    a_signal.connect(receiver_1_arg, sender=sender)
    result = a_signal.send(sender=sender, val="test")
    assert result == [(receiver_1_arg, "test")]
    a_signal.disconnect(receiver_1_arg, sender=sender)
    assert_clean(a_signal)


def test_send_no_receivers(sender: Sender) -> None:
    assert a_signal.send(sender=sender, val="test") == []


def test_send_connected_no_sender(sender: Sender) -> None:
    a_signal.connect(receiver_1_arg)
    result = a_signal.send(sender=sender, val="test")
    assert result == [(receiver_1_arg, "test")]
    a_signal.disconnect(receiver_1_arg)
    assert_clean(a_signal)


def test_send_different_no_sender(sender: Sender) -> None:
    a_signal.connect(receiver_1_arg, sender=object)
    assert a_signal.send(sender=sender, val="test") == []
    a_signal.disconnect(receiver_1_arg, sender=object)
    assert_clean(a_signal)


def test_garbage_collected(sender: Sender) -> None:
    a = Callable()
    a_signal.connect(a.a, sender=sender)
    del a
    gc.collect()
    assert a_signal.send(sender=sender, val="test") == []
    assert_clean(a_signal)


def test_cached_garbaged_collected() -> None:
    """The per-sender receiver cache does not keep a sender alive."""

    class sender:
        pass

    wref = weakref.ref(sender)
    d_signal.connect(receiver_1_arg)
    d_signal.send(sender, val="garbage")
    del sender
    gc.collect()
    try:
        assert wref() is None
    finally:
        # Disconnect after the reference check: upstream's disconnect flushes the cache.
        d_signal.disconnect(receiver_1_arg)


def test_multiple_registration(sender: Sender) -> None:
    a = Callable()
    for _ in range(6):
        a_signal.connect(a)
    result = a_signal.send(sender=sender, val="test")
    assert len(result) == 1
    assert len(a_signal.receivers) == 1
    del a
    del result
    gc.collect()
    assert_clean(a_signal)


def test_uid_registration() -> None:
    def uid_based_receiver_1(**kwargs: Any) -> None:
        pass

    def uid_based_receiver_2(**kwargs: Any) -> None:
        pass

    a_signal.connect(uid_based_receiver_1, dispatch_uid="uid")
    a_signal.connect(uid_based_receiver_2, dispatch_uid="uid")
    assert len(a_signal.receivers) == 1
    a_signal.disconnect(dispatch_uid="uid")
    assert_clean(a_signal)


def test_send_robust_success(sender: Sender) -> None:
    a_signal.connect(receiver_1_arg)
    result = a_signal.send_robust(sender=sender, val="test")
    assert result == [(receiver_1_arg, "test")]
    a_signal.disconnect(receiver_1_arg)
    assert_clean(a_signal)


def test_send_robust_no_receivers(sender: Sender) -> None:
    assert a_signal.send_robust(sender=sender, val="test") == []


def test_send_robust_ignored_sender(sender: Sender) -> None:
    a_signal.connect(receiver_1_arg)
    result = a_signal.send_robust(sender=sender, val="test")
    assert result == [(receiver_1_arg, "test")]
    a_signal.disconnect(receiver_1_arg)
    assert_clean(a_signal)


def _fails(sender: Any, val: Any, **kwargs: Any) -> None:
    raise ValueError("this")


def _assert_returned_error(result: list[tuple[Any, Any]]) -> None:
    err = result[0][1]
    assert isinstance(err, ValueError)
    assert err.args == ("this",)
    assert isinstance(err.__traceback__, TracebackType)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="asignals differs on purpose: send_robust logs on the 'asignals' logger, not "
    "'django.dispatch', and names the receiver by module and qualname (API.md, Core: "
    "send_robust)",
)
def test_send_robust_fail(sender: Sender, caplog: pytest.LogCaptureFixture) -> None:
    a_signal.connect(_fails)
    try:
        with caplog.at_level(logging.ERROR, logger="django.dispatch"):
            result = a_signal.send_robust(sender=sender, val="test")
        _assert_returned_error(result)
        records = [r for r in caplog.records if r.name == "django.dispatch"]
        assert records, "no ERROR logged on django.dispatch"
        assert records[0].getMessage() == "Error calling _fails in Signal.send_robust() (this)"
    finally:
        a_signal.disconnect(_fails)
    assert_clean(a_signal)


def test_send_robust_fail_logged_by_asignals(
    sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    """What asignals does instead: the same result, the failure logged on 'asignals'."""
    a_signal.connect(_fails)
    try:
        with caplog.at_level(logging.ERROR, logger="asignals"):
            result = a_signal.send_robust(sender=sender, val="test")
        _assert_returned_error(result)
        (record,) = [r for r in caplog.records if r.name == "asignals"]
        assert record.getMessage().startswith(f"Error calling {__name__}._fails in ")
        assert record.exc_info is not None
        assert record.exc_info[1] is result[0][1]
    finally:
        a_signal.disconnect(_fails)
    assert_clean(a_signal)


def test_disconnection() -> None:
    receiver_1 = Callable()
    receiver_2 = Callable()
    receiver_3 = Callable()
    a_signal.connect(receiver_1)
    a_signal.connect(receiver_2)
    a_signal.connect(receiver_3)
    a_signal.disconnect(receiver_1)
    # Django drops it silently; asignals also warns that a weak receiver died unused (API.md).
    with pytest.warns(WeakReceiverWarning, match="Callable instance"):
        del receiver_2
        gc.collect()
    a_signal.disconnect(receiver_3)
    assert_clean(a_signal)


def test_values_returned_by_disconnection() -> None:
    receiver_1 = Callable()
    receiver_2 = Callable()
    a_signal.connect(receiver_1)
    assert a_signal.disconnect(receiver_1) is True
    assert a_signal.disconnect(receiver_2) is False
    assert_clean(a_signal)


def test_has_listeners() -> None:
    assert not a_signal.has_listeners()
    assert not a_signal.has_listeners(sender=object())
    receiver_1 = Callable()
    a_signal.connect(receiver_1)
    assert a_signal.has_listeners()
    assert a_signal.has_listeners(sender=object())
    a_signal.disconnect(receiver_1)
    assert not a_signal.has_listeners()
    assert not a_signal.has_listeners(sender=object())


# -- ReceiverTestCase --------------------------------------------------------------------


def test_receiver_single_signal(sender: Sender) -> None:
    state: list[Any] = [False]

    @receiver(a_signal)
    def f(sender: Any, val: Any, **kwargs: Any) -> None:
        state[0] = val

    a_signal.send(sender=sender, val=True)
    assert state[0] is True


def test_receiver_signal_list(sender: Sender) -> None:
    state: list[Any] = []

    @receiver([a_signal, b_signal, c_signal])
    def f(sender: Any, val: Any, **kwargs: Any) -> None:
        state.append(val)

    a_signal.send(sender=sender, val="a")
    c_signal.send(sender=sender, val="c")
    b_signal.send(sender=sender, val="b")
    assert sorted(state) == ["a", "b", "c"]


# -- Not upstream ------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, raises=TypeError, reason=FIRST_PARAMETER)
def test_receiver_first_parameter_not_sender(sender: Sender) -> None:
    """Upstream's receiver shape: Django binds ``val`` by keyword, whatever its position."""

    def receiver_val_first(val: Any, **kwargs: Any) -> Any:
        return val

    a_signal.connect(receiver_val_first)
    try:
        assert a_signal.send(sender=sender, val="test") == [(receiver_val_first, "test")]
    finally:
        a_signal.disconnect(receiver_val_first)


def test_keyword_only_receiver(sender: Sender) -> None:
    """Django's own ``setting_changed`` receivers (django/test/signals.py) take no sender."""

    def clear_cache_handlers(*, setting: str, **kwargs: Any) -> str:
        return setting

    a_signal.connect(clear_cache_handlers)
    try:
        result = a_signal.send(sender=sender, setting="CACHES")
        assert result == [(clear_cache_handlers, "CACHES")]
    finally:
        a_signal.disconnect(clear_cache_handlers)
    assert_clean(a_signal)
