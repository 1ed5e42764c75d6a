"""User code against the built-in lifecycle signals: typed like the adapters send them."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, assert_type

from asignals import receiver
from asignals.signals import (
    got_request_exception,
    m2m_changed,
    post_bulk,
    post_delete,
    post_save,
    pre_bulk,
    pre_delete,
    pre_save,
    request_finished,
    request_started,
)

Results = list[tuple[Callable[..., Any], Any]]


class Order:
    pass


@receiver(post_save, sender=Order)
async def on_saved(sender: type[Any], *, instance: Any, created: bool, **kwargs: object) -> None:
    return None


@receiver(pre_save)
def django_style(sender: Any, instance: Any, **kwargs: Any) -> None:
    return None


@receiver(request_started)  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue,reportArgumentType,reportUntypedFunctionDecorator]
def on_request(sender: Any, *, scope: dict[str, Any], **kwargs: object) -> None:
    return None  # (the scope is a MutableMapping, not necessarily a dict)


@receiver(m2m_changed)  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue,reportArgumentType,reportUntypedFunctionDecorator]
def on_m2m(sender: Any, *, created: bool, **kwargs: object) -> None:
    return None  # m2m_changed sends no created=


async def sends(order: Order) -> None:
    await post_save.send(
        Order, instance=order, created=True, raw=False, using=None, update_fields=None
    )
    await post_save.send(Order, instance=order)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    await pre_save.send(  # type: ignore[call-arg]
        Order,
        instance=order,
        raw=False,
        using=None,
        update_fields=None,
        ceated=True,  # pyright: ignore[reportCallIssue]
    )


# -- deletes, bulk statements, the rest of the request signals ---------------------------------


@receiver(pre_delete, sender=Order)
def before_delete(sender: type[Any], *, instance: Any, origin: Any, **kwargs: object) -> None:
    return None


@receiver(pre_delete)  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue,reportArgumentType,reportUntypedFunctionDecorator]
def on_delete_created(sender: Any, *, created: bool, **kwargs: object) -> None:
    return None  # pre_delete sends no created=


@receiver(post_delete, sender=Order)
async def after_delete(sender: type[Any], *, instance: Any, using: Any, **kwargs: object) -> None:
    return None


@receiver(pre_bulk)
def before_bulk(
    sender: type[Any], *, kind: str, pk_set: frozenset[Any] | None, **kwargs: object
) -> None:
    return None


@receiver(post_bulk)  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue,reportArgumentType,reportUntypedFunctionDecorator]
def on_bulk_kind(sender: type[Any], *, kind: int, **kwargs: object) -> None:
    return None  # kind is the statement's kind as a str ("insert", "update", "delete")


@receiver(request_finished)
def on_finished(sender: Any, *, scope: MutableMapping[str, Any], **kwargs: object) -> None:
    return None


@receiver(got_request_exception)
async def on_exception(sender: Any, *, exception: BaseException, **kwargs: object) -> None:
    return None


@receiver(got_request_exception)  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue,reportArgumentType,reportUntypedFunctionDecorator]
def on_value_error(sender: Any, *, exception: ValueError, **kwargs: object) -> None:
    return None  # any BaseException is sent, not only ValueError


async def more_sends(order: Order, scope: MutableMapping[str, Any]) -> None:
    deleted = await pre_delete.send(Order, instance=order, using=None, origin=order)
    assert_type(deleted, Results)
    robust = await post_delete.send_robust(Order, instance=order, using=None, origin=order)
    assert_type(robust, list[tuple[Callable[..., Any], Any | Exception]])
    await post_delete.send(Order, instance=order, using=None)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    await pre_bulk.send(Order, kind="update", statement=None, pk_set=frozenset({1}), using=None)
    await pre_bulk.send(Order, kind="update", statement=None, pk_set={1}, using=None)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await post_bulk.send(Order, kind="delete", statement=None, pk_set=None, using=None)
    await post_bulk.send(Order, kind="delete", statement=None, using=None)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    assert_type(await request_finished.send(object(), scope=scope), Results)
    await request_finished.send(object())  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    await got_request_exception.send(object(), scope=scope, exception=RuntimeError("boom"))
    await got_request_exception.send(object(), scope=scope, exception="boom")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
