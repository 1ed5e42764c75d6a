"""Model signals from real SQLAlchemy ``AsyncSession`` flushes, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import anyio
import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    String,
    Table,
    create_engine,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import MissingGreenlet, PendingRollbackError
from sqlalchemy.ext.asyncio import (
    AsyncAttrs,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from asignals import AsyncSignal
from asignals.contrib import sqlalchemy as adapter
from asignals.signals import (
    m2m_changed,
    post_bulk,
    post_delete,
    post_save,
    pre_bulk,
    pre_delete,
    pre_save,
)
from asignals.testing import SentSignal, SignalRecorder


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLAlchemy's asyncio extension runs on asyncio only


# -- models: a fresh set of tables per test, so PostgreSQL runs never collide -------------------


def make_models(suffix: str) -> SimpleNamespace:
    class Base(AsyncAttrs, DeclarativeBase):
        pass

    book_tags = Table(
        f"book_tags_{suffix}",
        Base.metadata,
        Column("book_id", ForeignKey(f"book_{suffix}.id", ondelete="CASCADE"), primary_key=True),
        Column("tag_id", ForeignKey(f"tag_{suffix}.id", ondelete="CASCADE"), primary_key=True),
    )

    class Author(Base):
        __tablename__ = f"author_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
        email: Mapped[str | None] = mapped_column(String(80), default=None)
        books: Mapped[list[Book]] = relationship(
            back_populates="author", cascade="all, delete-orphan", lazy="selectin"
        )

    class Book(Base):
        __tablename__ = f"book_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(50))
        author_id: Mapped[int | None] = mapped_column(ForeignKey(f"author_{suffix}.id"))
        author: Mapped[Author | None] = relationship(back_populates="books", lazy="selectin")
        tags: Mapped[list[Tag]] = relationship(
            secondary=book_tags, back_populates="books", lazy="selectin"
        )

    class Tag(Base):
        __tablename__ = f"tag_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
        books: Mapped[list[Book]] = relationship(
            secondary=book_tags, back_populates="tags", lazy="selectin"
        )

    class Employee(Base):
        __tablename__ = f"employee_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
        kind: Mapped[str] = mapped_column(String(20))
        __mapper_args__: ClassVar[dict[str, Any]] = {
            "polymorphic_on": "kind",
            "polymorphic_identity": "employee",
        }

    class Manager(Employee):
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "manager"}

    return SimpleNamespace(
        Base=Base,
        Author=Author,
        Book=Book,
        Tag=Tag,
        book_tags=book_tags,
        Employee=Employee,
        Manager=Manager,
    )


@dataclass
class DB:
    maker: async_sessionmaker[AsyncSession]
    m: SimpleNamespace


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DB]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    models = make_models(uuid.uuid4().hex[:10])
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(models.Base.metadata.create_all)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    adapter.install(maker)
    try:
        yield DB(maker, models)
    finally:
        adapter.uninstall(maker)
        async with engine.begin() as conn:
            await conn.run_sync(models.Base.metadata.drop_all)
        await engine.dispose()


def from_sender(recorder: SignalRecorder, signal: AsyncSignal, sender: Any) -> list[SentSignal]:
    """The recorded sends of ``signal`` whose sender is ``sender``, oldest first."""
    return [s for s in recorder.of(signal) if s.sender is sender]


async def count(db: DB, model: Any) -> int:
    async with db.maker() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


# -- saves ------------------------------------------------------------------------------------

pytestmark = pytest.mark.anyio


async def test_create_sends_pre_and_post_save(db: DB, signal_recorder: SignalRecorder) -> None:
    signal_recorder.watch(pre_save, post_save)
    async with db.maker() as s:
        author = db.m.Author(name="Ann")
        s.add(author)
        await s.commit()
    assert [c.signal for c in signal_recorder.sends] == [pre_save, post_save]
    pre, post = signal_recorder.sends
    assert pre.sender is db.m.Author and post.sender is db.m.Author
    assert pre.kwargs["instance"] is author and pre.kwargs["created"] is True
    assert post.kwargs["created"] is True and post.kwargs["update_fields"] is None
    assert post.kwargs["raw"] is False
    assert isinstance(post.kwargs["using"], AsyncSession)
    assert isinstance(author.id, int)


async def test_async_pre_save_receiver_changes_instance_before_write(db: DB, connect: Any) -> None:
    async def fill_email(sender: Any, instance: Any, **kwargs: Any) -> None:
        await anyio.sleep(0.01)  # real awaiting inside the flush
        if instance.email is None:
            instance.email = f"{instance.name.lower()}@example.org"

    connect(pre_save, fill_email, db.m.Author)
    async with db.maker() as s:
        s.add(db.m.Author(name="Bea"))
        await s.commit()
    async with db.maker() as s:
        stored = await s.scalar(select(db.m.Author.email))
    assert stored == "bea@example.org"


async def test_post_save_receiver_queries_the_same_transaction(db: DB, connect: Any) -> None:
    seen: list[int] = []

    async def count_rows(sender: Any, instance: Any, using: AsyncSession, **kw: Any) -> None:
        seen.append(int(await using.scalar(select(func.count(db.m.Author.id))) or 0))

    connect(post_save, count_rows, db.m.Author)
    async with db.maker() as s, s.begin():
        s.add_all([db.m.Author(name="A"), db.m.Author(name="B")])
    assert seen == [2, 2]  # both rows visible from inside the flush, before COMMIT


async def test_update_reports_changed_columns(db: DB, signal_recorder: SignalRecorder) -> None:
    async with db.maker() as s:
        author, other = db.m.Author(name="Cy"), db.m.Author(name="Di")
        book = db.m.Book(title="T", author=author)
        s.add_all([author, other, book])
        await s.commit()
        signal_recorder.watch(pre_save, post_save)
        author.name = "Cyd"
        book.author = other
        book.title = "T2"
        await s.commit()
    by_instance = {id(c.kwargs["instance"]): c for c in signal_recorder.of(post_save)}
    assert len(signal_recorder.of(pre_save)) == 2 and len(by_instance) == 2
    assert by_instance[id(author)].kwargs["update_fields"] == frozenset({"name"})
    assert by_instance[id(author)].kwargs["created"] is False
    assert by_instance[id(book)].kwargs["update_fields"] == frozenset({"title", "author_id"})
    assert other not in [
        c.kwargs["instance"] for c in signal_recorder.sends
    ]  # unchanged: no signal


async def test_many_objects_in_one_flush(db: DB, signal_recorder: SignalRecorder) -> None:
    signal_recorder.watch(pre_save, post_save)
    authors = [db.m.Author(name=f"n{i}") for i in range(300)]
    async with db.maker() as s:
        s.add_all(authors)
        await s.commit()
    assert [c.kwargs["instance"] for c in signal_recorder.of(pre_save)] == authors
    posts = signal_recorder.of(post_save)
    assert [c.kwargs["instance"] for c in posts] == authors
    assert all(c.kwargs["created"] for c in posts)
    assert len({c.kwargs["instance"].id for c in posts}) == 300
    assert await count(db, db.m.Author) == 300


async def test_objects_added_by_a_pre_save_receiver_get_their_own_signals(
    db: DB, signal_recorder: SignalRecorder, connect: Any
) -> None:
    def add_first_book(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
        if created:
            instance.books.append(db.m.Book(title=f"{instance.name}'s first"))

    connect(pre_save, add_first_book, db.m.Author)
    signal_recorder.watch(post_save)
    async with db.maker() as s:
        s.add(db.m.Author(name="Eve"))
        await s.commit()
    books = from_sender(signal_recorder, post_save, db.m.Book)
    assert [c.kwargs["instance"].title for c in books] == ["Eve's first"]
    assert await count(db, db.m.Book) == 1


# -- deletes ----------------------------------------------------------------------------------


async def test_delete_cascade_and_orphan(db: DB, signal_recorder: SignalRecorder) -> None:
    async with db.maker() as s:
        author = db.m.Author(name="Fay", books=[db.m.Book(title=t) for t in "abc"])
        s.add(author)
        await s.commit()
        a, b, c = author.books
        signal_recorder.watch(pre_save, pre_delete, post_delete)
        author.books.remove(a)  # delete-orphan
        await s.commit()
        assert [(x.signal, x.kwargs["instance"]) for x in signal_recorder.sends] == [
            (pre_delete, a),
            (post_delete, a),
        ]
        signal_recorder.clear()
        await s.delete(author)  # cascades to b and c
        await s.commit()
    pre = {c.kwargs["instance"] for c in signal_recorder.of(pre_delete)}
    post = {c.kwargs["instance"] for c in signal_recorder.of(post_delete)}
    assert pre == post == {author, b, c}
    assert not signal_recorder.of(pre_save)
    assert {c.sender for c in signal_recorder.of(post_delete)} == {db.m.Author, db.m.Book}
    assert await count(db, db.m.Book) == 0 and await count(db, db.m.Author) == 0


# -- many-to-many -----------------------------------------------------------------------------


async def test_m2m_add_remove_clear(db: DB, signal_recorder: SignalRecorder) -> None:
    async with db.maker() as s:
        t1, t2, t3 = (db.m.Tag(name=n) for n in ("x", "y", "z"))
        s.add_all([t1, t2, t3])
        await s.commit()
        signal_recorder.watch(m2m_changed)
        book = db.m.Book(title="M", tags=[t1, t2])
        s.add(book)
        await s.commit()
        book.tags.remove(t1)
        await s.commit()
        await s.refresh(t3, ["books"])
        t3.books.append(book)  # through the reverse side; both sides are loaded
        await s.commit()
        book.tags.clear()
        await s.commit()
    actions = [(c.kwargs["action"], c.kwargs["pk_set"]) for c in signal_recorder.sends]
    assert actions == [
        ("pre_add", {t1.id, t2.id}),
        ("post_add", {t1.id, t2.id}),
        ("pre_remove", {t1.id}),
        ("post_remove", {t1.id}),
        ("pre_add", {t3.id}),
        ("post_add", {t3.id}),
        ("pre_clear", None),
        ("post_clear", None),
    ]
    for call in signal_recorder.sends:
        assert call.sender is db.m.book_tags
        assert call.kwargs["instance"] is book
        assert call.kwargs["model"] is db.m.Tag
        assert call.kwargs["reverse"] is False
    async with db.maker() as s:
        assert await s.scalar(select(func.count()).select_from(db.m.book_tags)) == 0


async def test_m2m_reverse_side_when_the_forward_side_is_not_loaded(
    db: DB, signal_recorder: SignalRecorder
) -> None:
    async with db.maker() as s:
        s.add_all([db.m.Book(title="R"), db.m.Tag(name="r")])
        await s.commit()
    async with db.maker() as s:
        tag = await s.scalar(select(db.m.Tag))
        book_id = await s.scalar(select(db.m.Book.id))
        signal_recorder.watch(m2m_changed)
        book = await s.get(db.m.Book, book_id, options=[])
        s.expire(book, ["tags"])  # the forward collection is not loaded
        tag.books.append(book)
        await s.commit()
    assert [(c.kwargs["action"], c.kwargs["reverse"]) for c in signal_recorder.sends] == [
        ("pre_add", True),
        ("post_add", True),
    ]
    assert (
        signal_recorder.sends[1].kwargs["instance"] is tag
        and signal_recorder.sends[1].kwargs["model"] is db.m.Book
    )
    assert signal_recorder.sends[1].kwargs["pk_set"] == {book_id}


# -- errors and transactions ------------------------------------------------------------------


async def test_failing_pre_save_rolls_back_the_transaction(
    db: DB, signal_recorder: SignalRecorder, connect: Any
) -> None:
    async def refuse(sender: Any, instance: Any, **kwargs: Any) -> None:
        await anyio.sleep(0)
        if instance.name == "bad":
            raise ValueError("no bad names")

    connect(pre_save, refuse, db.m.Author)
    signal_recorder.watch(post_save)
    async with db.maker() as s:
        s.add(db.m.Author(name="good"))
        await s.flush()  # written inside the transaction
        s.add(db.m.Author(name="bad"))
        with pytest.raises(ExceptionGroup) as caught:
            await s.commit()
        assert caught.group_contains(ValueError, match="no bad names")
        with pytest.raises(PendingRollbackError, match="rolled back"):
            await s.execute(select(db.m.Author))  # SQLAlchemy's own failed-flush state
        await s.rollback()
        assert not s.new  # the session is usable again
    assert await count(db, db.m.Author) == 0  # the earlier flush was rolled back too
    assert [c.kwargs["instance"].name for c in signal_recorder.sends] == [
        "good"
    ]  # the "bad" never saved


async def test_failing_pre_delete_keeps_the_row(db: DB, connect: Any) -> None:
    def refuse(sender: Any, **kwargs: Any) -> None:
        raise PermissionError("keep it")

    async with db.maker() as s:
        s.add(db.m.Author(name="kept"))
        await s.commit()
    connect(pre_delete, refuse, db.m.Author)
    async with db.maker() as s:
        author = await s.scalar(select(db.m.Author))
        await s.delete(author)
        with pytest.raises(ExceptionGroup):
            await s.commit()
    assert await count(db, db.m.Author) == 1


async def test_post_save_deferred_until_commit_and_dropped_on_rollback(
    db: DB, signal_recorder: SignalRecorder
) -> None:
    adapter.install(db.maker, defer_post_until_commit=True)
    signal_recorder.watch(post_save, post_delete)
    async with db.maker() as s:
        s.add(db.m.Author(name="later"))
        await s.flush()
        assert signal_recorder.sends == []  # flushed, not committed
        await s.commit()
        assert [c.kwargs["instance"].name for c in signal_recorder.sends] == ["later"]

        signal_recorder.clear()
        s.add(db.m.Author(name="never"))
        await s.flush()
        await s.rollback()
        assert signal_recorder.sends == []

        nested = await s.begin_nested()
        s.add(db.m.Author(name="savepoint-dropped"))
        await s.flush()
        await nested.rollback()
        async with s.begin_nested():
            s.add(db.m.Author(name="savepoint-kept"))
        assert signal_recorder.sends == []
        await s.commit()
    assert [c.kwargs["instance"].name for c in signal_recorder.sends] == ["savepoint-kept"]
    assert await count(db, db.m.Author) == 2


async def test_deferred_receiver_error_is_raised_after_commit(db: DB, connect: Any) -> None:
    def boom(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("after commit")

    adapter.install(db.maker, defer_post_until_commit=True)
    connect(post_save, boom, db.m.Author)
    async with db.maker() as s:
        s.add(db.m.Author(name="committed"))
        with pytest.raises(ExceptionGroup) as caught:
            await s.commit()
        assert caught.group_contains(RuntimeError, match="after commit")
        s.add(db.m.Author(name="again"))  # the session carries on
    assert await count(db, db.m.Author) == 1


async def test_deferred_receivers_query_and_load_through_using(db: DB, connect: Any) -> None:
    # expire_on_commit=True (SQLAlchemy's default): the receivers run once the transaction is
    # closed, so the committed instance is expired and must be loaded through the session.
    maker = async_sessionmaker(db.maker.kw["bind"], expire_on_commit=True)
    adapter.install(maker, defer_post_until_commit=True)
    seen: list[tuple[int, str, str]] = []

    async def reindex(sender: Any, instance: Any, using: AsyncSession, **kwargs: Any) -> None:
        rows = int(await using.scalar(select(func.count()).select_from(db.m.Author)) or 0)
        name = await instance.awaitable_attrs.name  # lazy load of an expired attribute
        await using.refresh(instance, ["books"])
        seen.append((rows, name, ",".join(b.title for b in instance.books)))

    def boom(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("after commit")

    connect(post_save, reindex, db.m.Author)
    connect(post_save, boom, db.m.Tag)
    try:
        async with maker() as s:
            s.add(db.m.Author(name="Kay", books=[db.m.Book(title="k1")]))
            await s.commit()
            assert seen == [(1, "Kay", "k1")]
            s.add_all([db.m.Author(name="Mo"), db.m.Tag(name="t")])
            with pytest.raises(ExceptionGroup) as caught:
                await s.commit()  # a deferred receiver's error still comes out of commit()
            assert caught.group_contains(RuntimeError, match="after commit")
            assert seen[1] == (2, "Mo", "")  # the other send was made, and could query
            await s.rollback()
            s.add(db.m.Author(name="dropped"))
            await s.flush()
            await s.rollback()
        async with maker.begin() as s:
            s.add(db.m.Author(name="Lu"))
    finally:
        adapter.uninstall(maker)
    assert [name for _, name, _ in seen] == ["Kay", "Mo", "Lu"]
    assert await count(db, db.m.Author) == 3


async def test_flush_outside_await_names_missing_greenlet(db: DB, connect: Any) -> None:
    async def slow(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(0.01)

    async with db.maker() as s:
        author = db.m.Author(name="a", books=[db.m.Book(title="t")])
        s.add(author)
        await s.commit()
        connect(pre_save, slow, db.m.Author)
        s.expire(author, ["books"])
        author.name = "b"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(MissingGreenlet) as error:
                author.books  # noqa: B018 - a lazy load that autoflushes, outside await
            gc.collect()
        message = str(error.value)
        assert "outside `await`" in message and "awaitable_attrs" in message
        assert "selectinload" in message and "plain (sync) Session" not in message
        assert not [w for w in caught if "never awaited" in str(w.message)]
        await s.rollback()
        assert await author.awaitable_attrs.name == "a"  # the fix the message names works
        author.name = "b"
        assert [b.title for b in await author.awaitable_attrs.books] == ["t"]
        await s.commit()
    async with db.maker() as s:
        assert await s.scalar(select(db.m.Author.name)) == "b"


# -- senders ----------------------------------------------------------------------------------


async def test_receivers_for_one_model_do_not_fire_for_another(
    db: DB, signal_recorder: SignalRecorder, connect: Any
) -> None:
    got: list[Any] = []

    def on_book(sender: Any, instance: Any, **kwargs: Any) -> None:
        got.append(instance)

    connect(post_save, on_book, db.m.Book)
    signal_recorder.watch(post_save)
    async with db.maker() as s:
        s.add(db.m.Author(name="not a book"))
        s.add(db.m.Tag(name="nor this"))
        await s.commit()
        assert got == []
        s.add(db.m.Book(title="a book"))
        await s.commit()
    assert [type(i) for i in got] == [db.m.Book]
    assert [c.sender for c in signal_recorder.sends] == [db.m.Author, db.m.Tag, db.m.Book]


async def test_sender_is_the_instance_own_class_under_inheritance(
    db: DB, signal_recorder: SignalRecorder
) -> None:
    signal_recorder.watch(post_save)
    async with db.maker() as s:
        s.add_all([db.m.Employee(name="e"), db.m.Manager(name="m")])
        await s.commit()
    base = from_sender(signal_recorder, post_save, db.m.Employee)
    sub = from_sender(signal_recorder, post_save, db.m.Manager)
    assert [c.kwargs["instance"].name for c in base] == ["e"]
    assert [c.kwargs["instance"].name for c in sub] == ["m"]


async def test_sessions_outside_the_installed_factory_send_nothing(
    db: DB, signal_recorder: SignalRecorder
) -> None:
    other = async_sessionmaker(db.maker.kw["bind"], expire_on_commit=False)
    signal_recorder.watch(pre_save, post_save)
    async with other() as s:
        s.add(db.m.Author(name="quiet"))
        await s.commit()
    assert signal_recorder.sends == []


# -- bulk statements --------------------------------------------------------------------------


async def test_bulk_statements_send_bulk_signals(db: DB, signal_recorder: SignalRecorder) -> None:
    A = db.m.Author
    signal_recorder.watch(pre_bulk, post_bulk, post_save)
    async with db.maker() as s:
        await s.execute(insert(A), [{"id": i, "name": f"b{i}"} for i in (101, 102, 103)])
        ids = (await s.scalars(insert(A).returning(A.id), [{"name": "r1"}, {"name": "r2"}])).all()
        await s.execute(update(A).where(A.name.in_(["b101", "b102"])).values(email="x@y"))
        await s.execute(update(A), [{"id": 103, "name": "b103!"}])
        await s.execute(delete(A).where(A.id == 101))
        await s.commit()
    assert not signal_recorder.of(post_save)  # no per-object events for bulk statements
    post = [(c.sender, c.kwargs["kind"], c.kwargs["pk_set"]) for c in signal_recorder.of(post_bulk)]
    assert post == [
        (A, "insert", frozenset({101, 102, 103})),
        (A, "insert", frozenset(ids)),
        (A, "update", frozenset({101, 102})),
        (A, "update", frozenset({103})),
        (A, "delete", frozenset({101})),
    ]
    assert len(ids) == 2  # the caller's RETURNING rows are intact
    assert [c.kwargs["kind"] for c in signal_recorder.of(pre_bulk)] == [k for _, k, _ in post]
    async with db.maker() as s:
        assert await s.scalar(select(A.name).where(A.id == 103)) == "b103!"
    assert await count(db, A) == 4


async def test_bulk_pk_set_of_a_single_table_inheritance_subclass(
    db: DB, signal_recorder: SignalRecorder
) -> None:
    E, M = db.m.Employee, db.m.Manager
    async with db.maker() as s:
        s.add_all([E(id=1, name="e"), M(id=2, name="m"), M(id=3, name="n"), E(id=4, name="n")])
        await s.commit()
        signal_recorder.watch(pre_bulk, post_bulk)
        await s.execute(update(M).values(name="boss"))
        await s.execute(update(M).where(M.id > 2).values(name="chief"))
        await s.execute(delete(M).where(M.name == "chief"))
        await s.execute(delete(M))
        await s.commit()
        rows = (await s.execute(select(E.id, E.name).order_by(E.id))).all()
    post = from_sender(signal_recorder, post_bulk, M)
    assert [(c.kwargs["kind"], c.kwargs["pk_set"]) for c in post] == [
        ("update", frozenset({2, 3})),
        ("update", frozenset({3})),
        ("delete", frozenset({3})),
        ("delete", frozenset({2})),
    ]
    assert [c.kwargs["pk_set"] for c in from_sender(signal_recorder, pre_bulk, M)] == [
        c.kwargs["pk_set"] for c in post
    ]
    assert len(signal_recorder.of(post_bulk)) == 4  # bulk statements on Manager only
    assert [tuple(r) for r in rows] == [(1, "e"), (4, "n")]  # the base class's rows untouched


async def test_bulk_insert_without_keys_reports_none(
    db: DB, signal_recorder: SignalRecorder
) -> None:
    signal_recorder.watch(post_bulk)
    async with db.maker() as s:
        await s.execute(insert(db.m.Tag), [{"name": "p"}, {"name": "q"}])
        await s.commit()
    assert [c.kwargs["pk_set"] for c in signal_recorder.sends] == [None]
    assert await count(db, db.m.Tag) == 2


# -- installing -------------------------------------------------------------------------------


def test_install_rejects_what_it_cannot_scope() -> None:
    with pytest.raises(TypeError, match="got 42"):
        adapter.install(42)
    with pytest.raises(TypeError, match="defer_post_until_commit"):
        adapter.install(None, defer_post_until_commit="yes")
    assert adapter.uninstall(object()) is False
    assert not adapter.installed(42)


# -- plain (sync) Session: SQLite through the stdlib driver (no sync PostgreSQL driver here) -----


@dataclass
class SyncDB:
    maker: sessionmaker[Session]
    m: SimpleNamespace


@pytest.fixture
def sync_db(tmp_path: Path) -> Iterator[SyncDB]:
    models = make_models("sync")
    engine = create_engine(f"sqlite+pysqlite:///{tmp_path / 'sync.db'}")
    models.Base.metadata.create_all(engine)
    maker = sessionmaker(engine, expire_on_commit=False)
    adapter.install(maker)
    try:
        yield SyncDB(maker, models)
    finally:
        adapter.uninstall(maker)
        engine.dispose()


def sync_count(db: SyncDB, model: Any) -> int:
    with db.maker() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_plain_session_runs_sync_receivers(
    sync_db: SyncDB, signal_recorder: SignalRecorder, connect: Any
) -> None:
    A, M = sync_db.m.Author, sync_db.m.Manager

    def fill_email(sender: Any, instance: Any, **kwargs: Any) -> None:
        instance.email = f"{instance.name.lower()}@example.org"

    async def first_book(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
        if created:  # async, alone on its signal, and never suspends: runs in place
            instance.books.append(sync_db.m.Book(title="first"))

    connect(pre_save, fill_email, A)
    connect(pre_save, first_book, A)
    signal_recorder.watch(post_save, post_delete, post_bulk)
    with sync_db.maker() as s:
        author = A(name="Syd")
        s.add_all([author, M(id=7, name="m")])
        s.commit()
        s.execute(update(M).values(name="boss"))
        s.delete(author)
        s.commit()
    assert sorted((str(c.signal.name), c.sender.__name__) for c in signal_recorder.sends) == [
        ("post_bulk", "Manager"),
        ("post_delete", "Author"),
        ("post_delete", "Book"),
        ("post_save", "Author"),
        ("post_save", "Book"),
        ("post_save", "Manager"),
    ]
    assert all(isinstance(c.kwargs["using"], Session) for c in signal_recorder.sends)
    assert author.email == "syd@example.org"
    assert signal_recorder.of(post_bulk)[0].kwargs["pk_set"] == frozenset({7})
    assert sync_count(sync_db, A) == 0 and sync_count(sync_db, M) == 1


def test_plain_session_deferred_receivers_query_and_lazy_load(
    sync_db: SyncDB, connect: Any
) -> None:
    maker = sessionmaker(sync_db.maker.kw["bind"])  # expire_on_commit=True
    adapter.install(maker, defer_post_until_commit=True)
    seen: list[tuple[int, str]] = []

    def audit(sender: Any, instance: Any, using: Session, **kwargs: Any) -> None:
        rows = int(using.scalar(select(func.count()).select_from(sync_db.m.Author)) or 0)
        seen.append((rows, instance.name))  # expired by the commit: a plain lazy load

    connect(post_save, audit, sync_db.m.Author)
    try:
        with maker() as s:
            s.add(sync_db.m.Author(name="Ola"))
            s.flush()
            assert seen == []
            s.commit()
            s.add(sync_db.m.Author(name="gone"))
            s.flush()
            s.rollback()
    finally:
        adapter.uninstall(maker)
    assert seen == [(1, "Ola")]


def _sleep_zero() -> Any:
    async def pause(sender: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0)  # suspends, even without a loop

    return pause


async def _returns(sender: Any, **kwargs: Any) -> None:
    return None


async def _returns_too(sender: Any, **kwargs: Any) -> None:
    return None


async def _sleeps(sender: Any, **kwargs: Any) -> None:
    await anyio.sleep(0.01)


@pytest.mark.parametrize(
    ("signal", "receivers"),
    [
        pytest.param(pre_save, [_sleep_zero()], id="pre_save-suspends"),
        pytest.param(pre_save, [_sleeps], id="pre_save-awaits-io"),
        pytest.param(post_save, [_sleep_zero()], id="post_save-suspends"),
        pytest.param(post_save, [_returns, _returns_too], id="post_save-two-async"),
        pytest.param(post_save, [_sleeps, _sleep_zero()], id="post_save-two-suspend"),
    ],
)
def test_plain_session_async_receiver_needing_a_loop_fails_clearly(
    sync_db: SyncDB, connect: Any, signal: AsyncSignal, receivers: list[Any]
) -> None:
    for fn in receivers:
        connect(signal, fn, sync_db.m.Author)
    with sync_db.maker() as s:
        s.add(sync_db.m.Tag(name="first"))
        s.flush()  # no receiver for Tag: an earlier flush of the same transaction
        s.add(sync_db.m.Author(name="Una"))
        with pytest.raises(RuntimeError, match="need an AsyncSession"):
            s.commit()
        s.rollback()
        assert not s.new
    assert sync_count(sync_db, sync_db.m.Author) == 0  # the transaction was rolled back
    assert sync_count(sync_db, sync_db.m.Tag) == 0
