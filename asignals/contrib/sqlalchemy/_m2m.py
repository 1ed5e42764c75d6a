"""Many-to-many changes of a SQLAlchemy flush, phrased as Django's ``m2m_changed`` sends.

SQLAlchemy keeps no record of ``add()``/``remove()`` calls, only each collection's history
(added / unchanged / deleted). That history is read once, in ``before_flush``, and turned into
Django's actions: removed members become ``remove`` (or ``clear`` when the collection ends up
empty, as after ``collection.clear()``), new members become ``add``.

A link changed through a ``back_populates``/``backref`` pair shows up in the histories of both
sides when both collections are loaded; Django sends one signal per change, so the change is
reported once, from the *forward* side. The forward side is the relationship whose column in the
association table comes first (Django's through tables list the source column first); the other
side gets ``reverse=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Mapper, RelationshipProperty
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.schema import Table

__all__: list[str] = []

_RELATIONS: dict[Mapper[Any], tuple[RelationshipProperty[Any], ...]] = {}
_REVERSE: dict[RelationshipProperty[Any], bool] = {}


@dataclass(eq=False, slots=True)
class M2MChange:
    """One ``m2m_changed`` pair (``pre_<action>`` then ``post_<action>``) to send."""

    relationship: RelationshipProperty[Any]
    instance: object
    action: str  # "add", "remove" or "clear"
    objects: tuple[object, ...]

    @property
    def through(self) -> Table:
        return secondary_table(self.relationship)

    def kwargs(self, phase: str, using: Any) -> dict[str, Any]:
        """The keyword arguments of the ``pre``/``post`` send, Django's names and meanings."""
        return {
            "instance": self.instance,
            "action": f"{phase}_{self.action}",
            "reverse": is_reverse(self.relationship),
            "model": self.relationship.mapper.class_,
            "pk_set": None if self.action == "clear" else pk_set(self.objects),
            "objects": self.objects,
            "using": using,
        }


def m2m_relationships(mapper: Mapper[Any]) -> tuple[RelationshipProperty[Any], ...]:
    """The writable many-to-many relationships of ``mapper`` (cached per mapper)."""
    rels = _RELATIONS.get(mapper)
    if rels is None:
        rels = tuple(
            r for r in mapper.relationships if isinstance(r.secondary, Table) and not r.viewonly
        )
        _RELATIONS[mapper] = rels
    return rels


def secondary_table(rel: RelationshipProperty[Any]) -> Table:
    """The association table of the many-to-many relationship ``rel``."""
    secondary = rel.secondary
    assert isinstance(secondary, Table)
    return cast(Table, secondary)  # the Table of the default column collection


def is_reverse(rel: RelationshipProperty[Any]) -> bool:
    """Whether ``rel`` is the reverse side: its parent column is not the table's first FK."""
    known = _REVERSE.get(rel)
    if known is None:
        fk_columns: list[ColumnElement[Any]] = [
            c for c in secondary_table(rel).columns if c.foreign_keys
        ]
        mine = [fk_columns.index(col) for _, col in rel.synchronize_pairs if col in fk_columns]
        known = bool(mine) and min(mine) > 0
        _REVERSE[rel] = known
    return known


def pk_of(obj: object) -> Any:
    """The primary key of ``obj`` (a scalar, or a tuple when composite); None when unknown."""
    state = instance_state(obj)
    values = state.mapper.primary_key_from_instance(obj)
    if any(v is None for v in values):
        return None
    return values[0] if len(values) == 1 else tuple(values)


def pk_set(objects: tuple[object, ...]) -> set[Any]:
    """Primary keys of ``objects`` that exist yet (pending rows get theirs at INSERT)."""
    keys = (pk_of(o) for o in objects)
    return {k for k in keys if k is not None}


def collect(states: list[InstanceState[Any]], wants: Callable[[object], bool]) -> list[M2MChange]:
    """The m2m changes carried by ``states``; ``wants(through_table)`` filters by receivers."""
    changes: list[M2MChange] = []
    forward_links: set[tuple[Table, int, int, str]] = set()
    reverse_changes: list[M2MChange] = []
    for state in states:
        obj = state.obj()
        if obj is None:
            continue
        for rel in m2m_relationships(state.mapper):
            if not wants(rel.secondary):
                continue
            history = state.attrs[rel.key].history
            if not history.added and not history.deleted:
                continue
            found: list[M2MChange] = []
            if history.deleted:
                emptied = not history.added and not history.unchanged
                action = "clear" if emptied else "remove"
                found.append(M2MChange(rel, obj, action, tuple(history.deleted)))
            if history.added:
                found.append(M2MChange(rel, obj, "add", tuple(history.added)))
            if is_reverse(rel):
                reverse_changes.extend(found)
            else:
                for change in found:
                    kind = "add" if change.action == "add" else "remove"
                    for other in change.objects:
                        forward_links.add((change.through, id(obj), id(other), kind))
                changes.extend(found)
    for change in reverse_changes:
        kind = "add" if change.action == "add" else "remove"
        own = id(change.instance)
        left = tuple(
            o for o in change.objects if (change.through, id(o), own, kind) not in forward_links
        )
        if left:
            if len(left) != len(change.objects) and change.action == "clear":
                change.action = "remove"
            change.objects = left
            changes.append(change)
    return changes
