"""trio: the nursery a send opens only when a receiver suspends, wherever it suspends.

The receivers after a suspended one run in a nursery that the send opens at that suspension,
even when the receiver has entered cancel scopes of its own (``trio.sleep(1)`` waits inside
one). These tests check that the scopes still nest, close and cancel as they would in a nursery
opened before the first receiver ran.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

import anyio
import pytest
import trio

from asignals import AsyncSignal, _dispatch

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture
def opener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``late``: the nursery opens at the first suspension (the default); ``early``: before
    the first receiver runs, as on a trio whose task state the late opener does not know."""
    if request.param == "early":
        monkeypatch.setattr(_dispatch, "_late_opener", False)
    return str(request.param)


def both_openers(test: Any) -> Any:
    """Run ``test`` with the nursery opened late and early: the behaviour must not differ."""
    test = pytest.mark.parametrize("opener", ["late", "early"], indirect=True)(test)
    return pytest.mark.usefixtures("opener")(test)


def connect_all(sig: AsyncSignal, *receivers: Any) -> None:
    for fn in receivers:
        sig.connect(fn, weak=False)


def receiver(fn: Any) -> Any:
    """A distinct receiver object per call (a function connects once per signal)."""
    return functools.partial(fn)


async def failures(sig: AsyncSignal) -> tuple[BaseException, ...]:
    """Send, which must fail with an :class:`ExceptionGroup`; the failures it groups."""
    with trio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await sig.send(None)
    return info.value.exceptions


def waits_until_cancelled(cancelled: list[str], name: str) -> Any:
    """A receiver that waits for ever, adding ``name`` to ``cancelled`` when it is cancelled."""

    async def waits(sender: Any, **kw: Any) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(name)
            raise

    return waits


async def fails_soon(sender: Any, **kw: Any) -> None:
    """A receiver that fails with ``boom`` after its siblings have suspended."""
    await trio.sleep(0.01)
    raise ValueError("boom")


# -- where the first receiver suspends ------------------------------------------------------


async def first_suspension_in_move_on_after(event: trio.Event) -> str:
    with trio.move_on_after(5):
        await event.wait()
        return "woken"
    return "timed out"


async def first_suspension_in_fail_after(event: trio.Event) -> str:
    with anyio.fail_after(5):
        await event.wait()
    return "woken"


async def first_suspension_in_trio_sleep(event: trio.Event) -> str:
    await trio.sleep(0.01)  # trio.sleep waits inside a cancel scope of its own
    with trio.fail_after(5):
        await event.wait()
    return "woken"


async def first_suspension_in_own_nursery(event: trio.Event) -> str:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 0)
        with trio.fail_after(5):
            await event.wait()
    return "woken"


async def first_suspension_in_own_nurserys_exit(event: trio.Event) -> str:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(event.wait)  # the body never suspends: the nursery's exit waits
    return "woken"


async def first_suspension_in_shield(event: trio.Event) -> str:
    with trio.CancelScope(shield=True), trio.move_on_after(5):
        await event.wait()
    return "woken"


async def first_suspension_after_a_closed_scope(event: trio.Event) -> str:
    with trio.move_on_after(5):  # noqa: ASYNC100 - entered and left before the receiver suspends
        pass
    await event.wait()
    return "woken"


HELD = [
    first_suspension_in_move_on_after,
    first_suspension_in_fail_after,
    first_suspension_in_trio_sleep,
    first_suspension_in_own_nursery,
    first_suspension_in_own_nurserys_exit,
    first_suspension_in_shield,
    first_suspension_after_a_closed_scope,
]


@both_openers
@pytest.mark.parametrize("suspends", HELD)
async def test_receivers_after_a_suspended_one_run_concurrently_with_it(suspends: Any) -> None:
    """The held receiver waits for what a later one does: they must run side by side."""
    sig = AsyncSignal()
    event = trio.Event()

    async def held(sender: Any, **kw: Any) -> str:
        return await suspends(event)

    async def sets(sender: Any, **kw: Any) -> str:
        await trio.sleep(0)
        event.set()
        return "set"

    def sync(sender: Any, **kw: Any) -> str:
        return "sync"

    connect_all(sig, held, sets, sync)
    with trio.fail_after(5) as scope:
        results = await sig.send(None)
        # The send's scopes are all closed: the caller is back in its own, with its deadline.
        assert trio.current_effective_deadline() == scope.deadline
    assert [r for _, r in results] == ["woken", "set", "sync"]


@both_openers
async def test_a_receivers_own_timeout_fires_at_its_first_suspension() -> None:
    sig = AsyncSignal()
    finished: list[str] = []

    async def times_out(sender: Any, **kw: Any) -> str:
        with trio.move_on_after(0.01) as scope:
            await trio.sleep_forever()
        assert scope.cancelled_caught
        finished.append("times_out")
        return "moved on"

    async def slower(sender: Any, **kw: Any) -> str:
        await trio.sleep(0.05)
        finished.append("slower")
        return "slower"

    connect_all(sig, times_out, slower)
    with trio.fail_after(5):
        results = await sig.send(None)
    assert [r for _, r in results] == ["moved on", "slower"]
    assert finished == ["times_out", "slower"]


@both_openers
async def test_fail_after_at_the_first_suspension_fails_the_send_and_cancels_the_rest() -> None:
    sig = AsyncSignal()
    cancelled: list[str] = []

    async def times_out(sender: Any, **kw: Any) -> None:
        with anyio.fail_after(0.01):
            await trio.sleep_forever()

    waits = waits_until_cancelled(cancelled, "waits")

    connect_all(sig, times_out, waits)
    assert [type(e) for e in await failures(sig)] == [TimeoutError]
    assert cancelled == ["waits"]


# -- failures cancel the suspended receiver -------------------------------------------------


async def held_bare() -> None:
    await trio.sleep_forever()


async def held_in_scope() -> None:
    with trio.move_on_after(60):
        await trio.sleep_forever()


async def held_in_sleep() -> None:
    await trio.sleep(60)


async def held_in_own_nursery() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        await trio.sleep_forever()


@both_openers
@pytest.mark.parametrize("wait", [held_bare, held_in_scope, held_in_sleep, held_in_own_nursery])
async def test_a_siblings_failure_cancels_the_suspended_receiver(wait: Any) -> None:
    sig = AsyncSignal()
    cancelled: list[str] = []

    async def held(sender: Any, **kw: Any) -> None:
        try:
            await wait()
        except BaseException:  # trio.Cancelled, or a group of them from its own nursery
            cancelled.append("held")
            raise
        cancelled.append("held finished")  # would be a bug: it should never get here

    connect_all(sig, held, fails_soon)
    assert [str(e) for e in await failures(sig)] == ["boom"]
    assert cancelled == ["held"]


@both_openers
async def test_a_shielded_suspended_receiver_finishes_despite_a_siblings_failure() -> None:
    sig = AsyncSignal()
    finished: list[str] = []

    async def shielded(sender: Any, **kw: Any) -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(0.05)
        finished.append("shielded")

    async def fails(sender: Any, **kw: Any) -> None:
        raise ValueError("boom")

    connect_all(sig, shielded, fails)
    assert [str(e) for e in await failures(sig)] == ["boom"]
    assert finished == ["shielded"]


@both_openers
async def test_the_suspended_receivers_failure_cancels_the_others() -> None:
    sig = AsyncSignal()
    cancelled: list[str] = []

    async def fails(sender: Any, **kw: Any) -> None:
        with trio.move_on_after(60):
            await trio.sleep(0.01)
            raise ValueError("held failed")

    waits = waits_until_cancelled(cancelled, "waits")

    connect_all(sig, fails, waits)
    assert [str(e) for e in await failures(sig)] == ["held failed"]
    assert cancelled == ["waits"]


@both_openers
async def test_a_nested_send_suspended_in_scopes_nests_and_cancels() -> None:
    """The held receiver is itself a send whose held receiver is inside a scope: both
    sends open their nursery at the same suspension, the inner one inside the outer one."""
    outer, inner = AsyncSignal(), AsyncSignal()
    event = trio.Event()
    cancelled: list[str] = []

    async def inner_held(sender: Any, **kw: Any) -> str:
        with trio.move_on_after(60):
            try:
                await event.wait()
            except trio.Cancelled:
                cancelled.append("inner_held")
                raise
        return "inner woken"

    async def inner_waits(sender: Any, **kw: Any) -> str:
        try:
            await event.wait()
        except trio.Cancelled:
            cancelled.append("inner_waits")
            raise
        return "inner waited"

    async def nests(sender: Any, **kw: Any) -> list[Any]:
        with trio.move_on_after(60):
            return [r for _, r in await inner.send(None)]
        return []

    async def sets(sender: Any, **kw: Any) -> str:
        await trio.sleep(0.01)
        event.set()
        return "set"

    connect_all(inner, inner_held, inner_waits)
    connect_all(outer, nests, sets)
    with trio.fail_after(5):
        results = await outer.send(None)
    assert [r for _, r in results] == [["inner woken", "inner waited"], "set"]

    event = trio.Event()  # never set this time: the inner receivers wait until cancelled
    outer.disconnect(sets)
    outer.connect(fails_soon)
    assert [str(e) for e in await failures(outer)] == ["boom"]
    assert sorted(cancelled) == ["inner_held", "inner_waits"]


# -- cancelling the sender ------------------------------------------------------------------


@both_openers
@pytest.mark.parametrize("wait", [held_bare, held_in_scope, held_in_sleep, held_in_own_nursery])
async def test_cancelling_the_sender_cancels_every_receiver(wait: Any) -> None:
    sig = AsyncSignal()
    cancelled: list[str] = []

    def recording(name: str, waits: Any) -> Any:
        async def r(sender: Any, **kw: Any) -> None:
            try:
                await waits()
            except BaseException:
                cancelled.append(name)
                raise

        return r

    connect_all(sig, recording("held", wait), recording("task", held_in_sleep))
    with trio.fail_after(5):
        with trio.move_on_after(0.02) as scope:
            await sig.send(None)
        # The caller's scope caught its own cancellation: nothing of the send's was left over.
        assert scope.cancelled_caught
        await trio.sleep(0)
    assert sorted(cancelled) == ["held", "task"]


@both_openers
async def test_cancelling_the_sender_from_another_task() -> None:
    sig = AsyncSignal()
    started = trio.Event()
    cancelled: list[str] = []

    async def held(sender: Any, **kw: Any) -> None:
        with trio.move_on_after(60):
            started.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.append("held")
                raise

    other = waits_until_cancelled(cancelled, "other")

    connect_all(sig, held, other)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sig.send, None)
            await started.wait()
            nursery.cancel_scope.cancel()
    assert sorted(cancelled) == ["held", "other"]


# -- context variables and results ----------------------------------------------------------


@both_openers
async def test_context_variables_around_a_suspension_in_a_scope() -> None:
    """The held receiver runs in the caller's context, the later ones in a shared copy."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    sig = AsyncSignal()

    async def held(sender: Any, **kw: Any) -> str:
        seen = var.get()
        with trio.move_on_after(60):
            token = var.set("inside held")
            await trio.sleep(0.01)
            inside = var.get()
            var.reset(token)
        var.set("set by held")
        return f"{seen}/{inside}"

    async def later(sender: Any, **kw: Any) -> str:
        seen = var.get()
        await trio.sleep(0.02)
        return seen

    other: contextvars.ContextVar[str] = contextvars.ContextVar("other", default="unset")

    async def sets_other(sender: Any, **kw: Any) -> None:
        await trio.sleep(0)
        other.set("set by a task")

    connect_all(sig, held, later, sets_other)
    var.set("caller")
    results = await sig.send(None)
    assert [r for _, r in results] == ["caller/inside held", "inside held", None]
    assert var.get() == "set by held"
    assert other.get() == "set by a task"


@both_openers
async def test_results_stay_in_connection_order_whatever_finishes_first() -> None:
    sig = AsyncSignal()
    finished: list[int] = []
    # 3, 5 and 1 finish in that order, each letting the next one go (the reverse of their
    # connection order, whatever the machine's load; timers would race once it stalls).
    go = {i: trio.Event() for i in (3, 5, 1)}
    then = {3: 5, 5: 1}

    def make(i: int, waits: bool, scoped: bool) -> Any:
        async def r(sender: Any, **kw: Any) -> int:
            if not waits:
                return i
            if scoped:
                with trio.move_on_after(60):
                    await go[i].wait()
            else:
                await go[i].wait()
            finished.append(i)
            if i in then:
                go[then[i]].set()
            return i

        return r

    def sync(sender: Any, **kw: Any) -> str:
        return "sync"

    receivers = [
        make(0, False, False),
        make(1, True, True),
        sync,
        make(3, True, False),
        make(4, False, False),
        make(5, True, True),
    ]
    connect_all(sig, *receivers)
    go[3].set()
    with trio.fail_after(30):  # receivers run one after the other would never finish
        results = await sig.send(None)
    assert [r for _, r in results] == [0, 1, "sync", 3, 4, 5]
    assert [fn for fn, _ in results] == receivers
    assert finished == [3, 5, 1]


@both_openers
async def test_send_robust_keeps_the_held_receivers_failure_in_its_slot() -> None:
    sig = AsyncSignal()

    async def fails(sender: Any, **kw: Any) -> None:
        with trio.move_on_after(60):
            await trio.sleep(0.01)
            raise ValueError("held failed")

    async def fine(sender: Any, **kw: Any) -> str:
        await trio.sleep(0.02)
        return "fine"

    connect_all(sig, fails, fine)
    with trio.fail_after(5):
        results = await sig.send_robust(None)
    assert [type(r) for _, r in results] == [ValueError, str]


# -- the fast path --------------------------------------------------------------------------


async def test_receivers_that_never_suspend_run_in_the_sending_task_without_a_nursery() -> None:
    sig = AsyncSignal()
    sender_task = trio.lowlevel.current_task()

    async def looks(sender: Any, **kw: Any) -> tuple[bool, int]:
        task = trio.lowlevel.current_task()
        return task is sender_task, len(task.child_nurseries)

    connect_all(sig, *(receiver(looks) for _ in range(3)))
    results = await sig.send(None)
    assert [r for _, r in results] == [(True, 0)] * 3


@both_openers
async def test_receivers_after_a_suspension_run_in_a_nursery_of_the_sending_task() -> None:
    sig = AsyncSignal()
    sender_task = trio.lowlevel.current_task()

    async def held(sender: Any, **kw: Any) -> bool:
        await trio.sleep(0.01)
        return trio.lowlevel.current_task() is sender_task

    async def later(sender: Any, **kw: Any) -> bool:
        nursery = trio.lowlevel.current_task().parent_nursery
        return nursery is not None and nursery.parent_task is sender_task

    connect_all(sig, held, later)
    results = await sig.send(None)
    assert [r for _, r in results] == [True, True]
    assert sender_task.child_nurseries == []


async def test_a_receiver_that_leaves_the_senders_scope_runs_the_rest_after_it() -> None:
    """A receiver that exits a scope the send runs in leaves no place for the nursery.

    The send then runs the rest after it, in order, instead of opening a nursery where the
    scopes would not nest.
    """
    sig = AsyncSignal()
    order: list[str] = []
    outer = trio.CancelScope()

    async def leaves(sender: Any, **kw: Any) -> str:
        outer.__exit__(None, None, None)
        await trio.sleep(0)
        order.append("leaves")
        return "left"

    async def after(sender: Any, **kw: Any) -> str:
        order.append("after")
        return "after"

    connect_all(sig, leaves, after)
    outer.__enter__()
    results = await sig.send(None)
    assert [r for _, r in results] == ["left", "after"]
    assert order == ["leaves", "after"]


def test_a_send_outside_any_event_loop_fails_as_anyio_does() -> None:
    """With trio imported but not running (a sync caller stepping the coroutine itself, as
    SQLAlchemy's sync session adapter does), the error is AnyIO's "no event loop"."""
    sig = AsyncSignal()
    connect_all(sig, receiver(async_returns), receiver(async_returns))
    sending = sig.send(None)
    with pytest.raises(Exception) as info:
        sending.send(None)
    sending.close()
    assert type(info.value).__name__ in ("NoEventLoopError", "AsyncLibraryNotFoundError")


async def async_returns(sender: Any, **kw: Any) -> str:
    return "returned"
