"""Model signals from Tortoise ORM (runs on SQLite, no server needed).

python examples/tortoise_models.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from tortoise import Tortoise, fields
from tortoise.models import Model

from asignals import receiver
from asignals.contrib import tortoise as signals_for_tortoise
from asignals.signals import m2m_changed, post_delete, post_save, pre_save


class Event(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)
    slug = fields.CharField(max_length=100, default="")
    teams: fields.ManyToManyRelation[Team] = fields.ManyToManyField(
        "models.Team", related_name="events", through="event_team"
    )


class Team(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)


@receiver(pre_save, sender=Event)
def make_slug(sender: type[Event], instance: Event, **kwargs: Any) -> None:
    # A plain function works too; changes made here are written by this save().
    instance.slug = instance.name.lower().replace(" ", "-")


@receiver(post_save, sender=Event)
async def saved(
    sender: type[Event], instance: Event, created: bool, update_fields: Any, **kw: Any
) -> None:
    await asyncio.sleep(0)  # async receivers are awaited inside save()
    fields_ = sorted(update_fields) if update_fields else None
    print(f"post_save   {sender.__name__} id={instance.id} created={created} fields={fields_}")


@receiver(post_delete, sender=Event)
def deleted(sender: type[Event], instance: Event, **kwargs: Any) -> None:
    print(f"post_delete {sender.__name__} id={instance.id}")


@receiver(m2m_changed, sender="event_team")  # Tortoise's through table name
def teams_changed(
    sender: str, instance: Any, action: str, pk_set: Any, reverse: bool, **kw: Any
) -> None:
    print(
        f"m2m_changed {action} on {type(instance).__name__} {instance.id}: {pk_set}",
        f"reverse={reverse}",
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await Tortoise.init(
            db_url=f"sqlite://{Path(tmp) / 'example.db'}", modules={"models": [__name__]}
        )
        await Tortoise.generate_schemas()
        signals_for_tortoise.install()  # after init: every model Tortoise knows

        event = await Event.create(name="Signals Meetup")
        print(f"stored slug: {event.slug!r}")
        event.name = "Async Signals Meetup"
        await event.save(update_fields=["name", "slug"])
        team = await Team.create(name="Core")
        await event.teams.add(team)
        await event.teams.clear()
        await event.delete()

        signals_for_tortoise.uninstall()
        await Tortoise.close_connections()


if __name__ == "__main__":
    asyncio.run(main())
