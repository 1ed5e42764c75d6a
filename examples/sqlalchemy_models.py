"""Model signals from SQLAlchemy 2 AsyncSession flushes (runs on SQLite, no server needed).

python examples/sqlalchemy_models.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import Column, ForeignKey, String, Table, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from asignals import receiver
from asignals.contrib import sqlalchemy as signals_for_sqlalchemy
from asignals.signals import m2m_changed, post_bulk, post_delete, post_save, pre_save


class Base(DeclarativeBase):
    pass


article_tags = Table(
    "article_tags",
    Base.metadata,
    Column("article_id", ForeignKey("article.id"), primary_key=True),
    Column("tag_id", ForeignKey("tag.id"), primary_key=True),
)


class Article(Base):
    __tablename__ = "article"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    slug: Mapped[str] = mapped_column(String(100), default="")
    tags: Mapped[list[Tag]] = relationship(secondary=article_tags, lazy="selectin")


class Tag(Base):
    __tablename__ = "tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))


@receiver(pre_save, sender=Article)
async def make_slug(sender: type[Article], instance: Article, created: bool, **kwargs: Any) -> None:
    # Runs inside the flush, before the INSERT/UPDATE: changes here are written.
    await asyncio.sleep(0)  # any async I/O would do
    instance.slug = instance.title.lower().replace(" ", "-")


@receiver(post_save, sender=Article)
def saved(
    sender: type[Article], instance: Article, created: bool, update_fields: Any, **kw: Any
) -> None:
    fields = sorted(update_fields) if update_fields else None
    print(f"post_save   {sender.__name__} id={instance.id} created={created} fields={fields}")


@receiver(post_delete, sender=Article)
def deleted(sender: type[Article], instance: Article, **kwargs: Any) -> None:
    print(f"post_delete {sender.__name__} id={instance.id}")


@receiver(m2m_changed, sender=article_tags)
def tags_changed(sender: Any, instance: Article, action: str, pk_set: Any, **kwargs: Any) -> None:
    # pre_* actions run before the flush, when rows created in it have no key yet: use post_*.
    if action.startswith("post_"):
        print(
            f"m2m_changed {action} on article {instance.id}: {sorted(pk_set) if pk_set else pk_set}"
        )


@receiver(post_bulk, sender=Article)
def bulk(sender: type[Article], kind: str, pk_set: Any, **kwargs: Any) -> None:
    print(f"post_bulk   {kind} {sender.__name__} rows={sorted(pk_set) if pk_set else pk_set}")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_async_engine(f"sqlite+aiosqlite:///{Path(tmp) / 'example.db'}")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        Session = async_sessionmaker(engine, expire_on_commit=False)
        signals_for_sqlalchemy.install(Session)  # one call: every session of this factory

        async with Session() as session:
            python, asyncio_tag = Tag(name="python"), Tag(name="asyncio")
            article = Article(title="Hello Signals", tags=[python])
            session.add_all([article, asyncio_tag])
            await session.commit()
            print(f"stored slug: {article.slug!r}")

            article.title = "Hello Async Signals"
            article.tags.append(asyncio_tag)
            await session.commit()

            await session.execute(
                update(Article).where(Article.id == article.id).values(title="Bulk")
            )
            await session.delete(article)
            await session.commit()
            assert await session.scalar(select(Article)) is None

        signals_for_sqlalchemy.uninstall(Session)
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
