"""Model signals from real Tortoise ORM saves and deletes, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from tortoise import Tortoise, fields
from tortoise.models import Model
from tortoise.transactions import in_transaction

from asignals.contrib import tortoise as adapter
from asignals.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from asignals.testing import SignalRecorder

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Tortoise runs on asyncio only


class Author(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)
    email = fields.CharField(max_length=80, null=True)
    books: fields.ReverseRelation[Book]

    class Meta:
        table = "asig_author"


class Book(Model):
    id = fields.IntField(primary_key=True)
    title = fields.CharField(max_length=50)
    author: fields.ForeignKeyRelation[Author] = fields.ForeignKeyField(
        "models.Author", related_name="books", on_delete=fields.CASCADE
    )
    tags: fields.ManyToManyRelation[Tag] = fields.ManyToManyField(
        "models.Tag", related_name="books", through="asig_book_tag"
    )

    class Meta:
        table = "asig_book"


class Tag(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)
    books: fields.ManyToManyRelation[Book]

    class Meta:
        table = "asig_tag"


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'tortoise.db'}"
    else:  # a database of its own per test, so runs never see each other's rows
        dsn = request.getfixturevalue("postgres_dsn")
        base = dsn.replace("postgresql://", "asyncpg://", 1).rsplit("/", 1)[0]
        url = f"{base}/asig_{uuid.uuid4().hex[:12]}"
    # One connection name per backend: Tortoise caches SQL per (connection name, table).
    name = request.param
    config = {
        "connections": {name: url},
        "apps": {"models": {"models": [__name__], "default_connection": name}},
    }
    await Tortoise.init(config=config, _create_db=True)
    await Tortoise.generate_schemas()
    adapter.install()
    try:
        yield request.param
    finally:
        adapter.uninstall()
        if request.param == "postgres":
            await Tortoise._drop_databases()
        else:
            await Tortoise.close_connections()


async def test_create_and_update(db: str, signal_recorder: SignalRecorder) -> None:
    signal_recorder.watch(pre_save, post_save)
    author = await Author.create(name="Ann")
    author.name = "Anna"
    await author.save(update_fields=["name"])
    assert [
        (c.signal, c.kwargs.get("created"), c.kwargs["update_fields"])
        for c in signal_recorder.sends
    ] == [
        (pre_save, None, None),
        (post_save, True, None),
        (pre_save, None, frozenset({"name"})),
        (post_save, False, frozenset({"name"})),
    ]
    assert all(c.sender is Author and c.kwargs["instance"] is author for c in signal_recorder.sends)
    assert signal_recorder.sends[1].kwargs["raw"] is False
    assert signal_recorder.sends[1].kwargs["using"].connection_name == db


async def test_sync_and_async_receivers_change_the_instance_before_write(
    db: str, connect: Any
) -> None:
    async def fill_email(sender: Any, instance: Author, **kwargs: Any) -> None:
        await anyio.sleep(0.01)
        instance.email = f"{instance.name.lower()}@example.org"

    def shout(sender: Any, instance: Author, **kwargs: Any) -> None:
        instance.name = instance.name.upper()

    connect(pre_save, shout, Author)
    connect(pre_save, fill_email, Author)
    await Author.create(name="Bea")
    stored = await Author.get(name="BEA")
    assert stored.email == "bea@example.org"


async def test_many_objects(db: str, signal_recorder: SignalRecorder) -> None:
    signal_recorder.watch(post_save)
    async with in_transaction():
        for i in range(50):
            await Author.create(name=f"n{i}")
    assert {c.sender for c in signal_recorder.sends} == {Author}
    assert [c.kwargs["instance"].name for c in signal_recorder.sends] == [
        f"n{i}" for i in range(50)
    ]
    assert await Author.all().count() == 50


async def test_delete_and_error_in_pre_delete(
    db: str, signal_recorder: SignalRecorder, connect: Any
) -> None:
    author = await Author.create(name="Cy")
    await Book.create(title="t", author=author)
    signal_recorder.watch(pre_delete, post_delete)
    keep = await Author.create(name="keep")

    def refuse(sender: Any, instance: Author, **kwargs: Any) -> None:
        if instance.name == "keep":
            raise PermissionError("kept")

    connect(pre_delete, refuse, Author)
    with pytest.raises(ExceptionGroup) as caught:
        await keep.delete()
    assert caught.group_contains(PermissionError)
    await author.delete()
    assert [(c.signal, c.kwargs["instance"].name) for c in signal_recorder.sends] == [
        (pre_delete, "keep"),
        (pre_delete, "Cy"),
        (post_delete, "Cy"),
    ]
    assert await Author.filter(name="keep").exists()
    assert await Book.all().count() == 0  # removed by the database's ON DELETE CASCADE


async def test_failing_pre_save_in_transaction_rolls_back(db: str, connect: Any) -> None:
    def refuse(sender: Any, instance: Author, **kwargs: Any) -> None:
        if instance.name == "bad":
            raise ValueError("bad")

    connect(pre_save, refuse, Author)
    with pytest.raises(ExceptionGroup):
        async with in_transaction():
            await Author.create(name="good")
            await Author.create(name="bad")
    assert await Author.all().count() == 0


async def test_m2m_add_remove_clear(db: str, signal_recorder: SignalRecorder) -> None:
    author = await Author.create(name="M")
    book = await Book.create(title="b", author=author)
    t1, t2 = await Tag.create(name="x"), await Tag.create(name="y")
    signal_recorder.watch(m2m_changed)
    await book.tags.add(t1, t2)
    await book.tags.remove(t1)
    await t1.books.add(book)  # the reverse side
    await book.tags.clear()
    seen = [
        (c.kwargs["action"], c.kwargs["pk_set"], c.kwargs["reverse"], c.kwargs["model"])
        for c in signal_recorder.sends
    ]
    assert seen == [
        ("pre_add", {t1.pk, t2.pk}, False, Tag),
        ("post_add", {t1.pk, t2.pk}, False, Tag),
        ("pre_remove", {t1.pk}, False, Tag),
        ("post_remove", {t1.pk}, False, Tag),
        ("pre_add", {book.pk}, True, Book),
        ("post_add", {book.pk}, True, Book),
        ("pre_clear", None, False, Tag),
        ("post_clear", None, False, Tag),
    ]
    assert all(c.sender == "asig_book_tag" for c in signal_recorder.sends)
    assert await book.tags.all().count() == 0


async def test_receivers_for_one_model_do_not_fire_for_another(
    db: str, signal_recorder: SignalRecorder, connect: Any
) -> None:
    got: list[Any] = []

    def on_book(sender: Any, instance: Any, **kwargs: Any) -> None:
        got.append(instance)

    connect(post_save, on_book, Book)
    signal_recorder.watch(post_save)
    author = await Author.create(name="not a book")
    await Tag.create(name="nor this")
    assert got == []
    book = await Book.create(title="a book", author=author)
    assert got == [book]
    assert [c.sender for c in signal_recorder.sends] == [Author, Tag, Book]


async def test_uninstall_stops_signals(db: str, signal_recorder: SignalRecorder) -> None:
    signal_recorder.watch(post_save, m2m_changed)
    assert adapter.uninstall(Author) is True
    await Author.create(name="quiet")
    assert signal_recorder.sends == []
    adapter.install(Author)
    await Author.create(name="loud")
    assert [c.kwargs["instance"].name for c in signal_recorder.sends] == ["loud"]


def test_install_rejects_non_models() -> None:
    with pytest.raises(TypeError, match="got 'Author'"):
        adapter.install("Author")  # type: ignore[arg-type]
