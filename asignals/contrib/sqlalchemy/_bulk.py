"""``pre_bulk``/``post_bulk`` for SQLAlchemy's ORM-enabled ``insert``/``update``/``delete``.

Those statements write rows without loading objects, so SQLAlchemy fires no per-object event
(nor does Django for ``QuerySet.update``). They all pass through the session's
``do_orm_execute`` hook, which may run the statement itself and return its result; that is
where the bulk signals are sent. The affected primary keys are found without changing what
the caller gets back:

- from the parameters when every row carries its primary key (ORM bulk INSERT with explicit
  keys, bulk UPDATE by primary key);
- for ``update``/``delete`` with a WHERE clause (or none), by selecting the matching keys of
  the statement's class first (single-table inheritance's discriminator included), in the same
  transaction. Not RETURNING: adding it would change what the caller's result holds (rows,
  ``rowcount``) and clash with a RETURNING of their own, so the keys are those the SELECT saw;
  under READ COMMITTED a row a concurrent transaction commits between the two can differ;
- for ``insert`` with a ``RETURNING`` that includes the keys (or the entity), from its rows
  (the result is buffered and handed back intact);
- otherwise ``pk_set`` is ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.engine import Result
from sqlalchemy.orm import Mapper, ORMExecuteState

from ... import AsyncSignal, signals

__all__: list[str] = []

Send = tuple[AsyncSignal, Any, dict[str, Any]]


def execute(
    state: ORMExecuteState,
    using: Any,
    run: Callable[[Coroutine[Any, Any, None]], None],
    deliver: Callable[[list[Send]], None],
    wants: Callable[[AsyncSignal, type[Any]], bool],
) -> Result[Any] | None:
    """Run ``state``'s statement between ``pre_bulk`` and ``post_bulk``; None to not handle it."""
    mapper = state.bind_mapper
    if mapper is None:
        return None
    model = mapper.class_
    want_pre = wants(signals.pre_bulk, model)
    want_post = wants(signals.post_bulk, model)
    if not (want_pre or want_post):
        return None
    kind = "insert" if state.is_insert else "update" if state.is_update else "delete"
    keys = _pk_keys(mapper)
    pks = _pks_from_parameters(keys, state.parameters, kind)
    if pks is None and kind != "insert":
        pks = _select_pks(state, mapper, keys)
    common = {"kind": kind, "statement": state.statement, "using": using}
    if want_pre:
        run(_send(signals.pre_bulk, model, {**common, "pk_set": pks}))
    result: Result[Any] = state.invoke_statement()
    returning = getattr(state.statement, "returning_column_descriptions", None)
    if pks is None and kind == "insert" and returning:
        pks, result = _pks_from_returning(mapper, keys, result)
    if want_post:
        deliver([(signals.post_bulk, model, {**common, "pk_set": pks})])
    return result


async def _send(signal: AsyncSignal, sender: Any, kwargs: dict[str, Any]) -> None:
    await signal.send(sender, **kwargs)


def _pk_keys(mapper: Mapper[Any]) -> list[str]:
    return [mapper.get_property_by_column(column).key for column in mapper.primary_key]


def _key(values: list[Any] | tuple[Any, ...]) -> Any:
    return values[0] if len(values) == 1 else tuple(values)


def _pks_from_parameters(keys: list[str], parameters: Any, kind: str) -> frozenset[Any] | None:
    if isinstance(parameters, dict) and kind == "insert":
        parameters = [parameters]
    if not isinstance(parameters, list) or not parameters:
        return None  # for update/delete only a list (bulk by primary key) names the rows
    found: set[Any] = set()
    for row in cast("list[object]", parameters):
        if not isinstance(row, dict):
            return None
        values = cast("dict[str, object]", row)
        if any(values.get(k) is None for k in keys):
            return None
        found.add(_key([values[k] for k in keys]))
    return frozenset(found)


def _select_pks(state: ORMExecuteState, mapper: Mapper[Any], keys: list[str]) -> frozenset[Any]:
    # The attributes of the statement's own class, not ``mapper.attrs[k].class_attribute``:
    # for a single-table-inheritance subclass that is the base class's column, and the select
    # would lose the discriminator filter (``type IN (...)``) SQLAlchemy adds to the statement.
    query = select(*(getattr(mapper.class_, k) for k in keys))
    where = getattr(state.statement, "whereclause", None)
    if where is not None:
        query = query.where(where)
    params = state.parameters if isinstance(state.parameters, dict) else None
    rows = state.session.execute(query, params).all()
    return frozenset(_key(tuple(row)) for row in rows)


def _pks_from_returning(
    mapper: Mapper[Any], keys: list[str], result: Result[Any]
) -> tuple[frozenset[Any] | None, Result[Any]]:
    frozen = result.freeze()
    probe = frozen()
    columns = list(probe.keys())
    rows = probe.all()
    pks: frozenset[Any] | None = None
    if all(k in columns for k in keys):
        positions = [columns.index(k) for k in keys]
        pks = frozenset(_key([row[i] for i in positions]) for row in rows)
    elif rows and isinstance(rows[0][0], mapper.class_):
        pks = frozenset(_key(mapper.primary_key_from_instance(row[0])) for row in rows)
    return pks, frozen()
