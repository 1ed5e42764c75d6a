"""User code against the built-in lifecycle signals: typed like the adapters send them."""

from __future__ import annotations

from typing import Any

from asignals import receiver
from asignals.signals import m2m_changed, post_save, pre_save, request_started


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
