"""The bridge's JSON codec and configuration checks (no server needed)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from decimal import Decimal

import pydantic
import pytest

from asignals import AsyncSignal
from asignals.bridge import Bridge, DecodeError, EncodeError, JsonCodec
from asignals.contrib.redis import RedisBridge


@dataclasses.dataclass
class Point:
    x: int
    y: int
    at: dt.datetime


class Money(pydantic.BaseModel):
    amount: Decimal
    currency: str


class Colour(enum.Enum):
    RED = "red"


class Order:
    """A sender class, as a model class would be for post_save."""


def test_codec_round_trips_builtin_and_registered_types() -> None:
    codec = JsonCodec()
    codec.register(Point)
    codec.register(Money)
    codec.register(Colour)
    value = {
        "when": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        "day": dt.date(2024, 5, 1),
        "id": uuid.UUID(int=7),
        "price": Decimal("10.10"),
        "raw": b"\x00\xff",
        "pair": (1, "a"),
        "tags": {"x"},
        "by_int": {1: "one"},
        "tricky": {"$t": "not a tag"},
        "point": Point(1, 2, dt.datetime(2024, 1, 1)),
        "money": Money(amount=Decimal("2.5"), currency="EUR"),
        "colour": Colour.RED,
        "plain": [1, 2.5, None, True, "s"],
    }
    wire = json.loads(json.dumps(codec.encode(value)))
    assert codec.decode(wire) == value


def test_codec_refuses_unregistered_types_by_name() -> None:
    codec = JsonCodec()
    with pytest.raises(EncodeError, match=r"Point.*register"):
        codec.encode({"p": Point(1, 2, dt.datetime(2024, 1, 1))})
    with pytest.raises(DecodeError, match=r"unknown type name 'os\.system'"):
        codec.decode({"$t": "os.system", "v": "rm -rf /"})
    with pytest.raises(TypeError, match="not a dataclass"):
        codec.register(Order)
    with pytest.raises(ValueError, match="not a usable type name"):
        codec.register(Point, name="=")


def test_bad_configuration_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="needs group="):
        RedisBridge(mode="shared")
    with pytest.raises(ValueError, match="mode must be"):
        RedisBridge(mode="fanout")
    with pytest.raises(ValueError, match="has no name"):
        RedisBridge().attach(AsyncSignal())
    with pytest.raises(ValueError, match="claim_idle must be a positive number"):
        RedisBridge(claim_idle=0)
    with pytest.raises(ValueError, match="max_attempts must be an int of at least 1"):
        RedisBridge(max_attempts=0)


def test_a_list_of_senders_is_refused_showing_the_mapping_form() -> None:
    """Issue 8: ``senders=[Order]`` used to fail with "'list' object has no attribute
    'items'"."""
    with pytest.raises(TypeError, match=r"senders=\{'Order': Order\}"):
        RedisBridge(senders=[Order])
    with pytest.raises(TypeError, match=r"senders= maps the name"):
        RedisBridge(senders=Order)  # type: ignore[arg-type]


def test_a_single_signal_is_accepted() -> None:
    """Issue 8: ``signals=order_placed`` used to fail with "not iterable"."""
    order_placed = AsyncSignal(name="order_placed")
    bridge = RedisBridge(signals=order_placed)
    assert bridge.signals == {"order_placed": order_placed}
    with pytest.raises(TypeError, match="a signal or a list of signals"):
        RedisBridge(signals="order_placed")
    assert isinstance(bridge, Bridge)


# -- typed signals: the spec's classes travel without codec.register (issue 9) ----------------


def typed(spec: object, name: str) -> AsyncSignal:
    """A typed signal (``AsyncSignal(spec=...)``; an attribute on cores without it)."""
    try:
        return AsyncSignal(spec=spec, name=name)  # type: ignore[call-arg]
    except TypeError:
        sig = AsyncSignal(name=name)
        sig.spec = spec  # type: ignore[attr-defined]
        return sig


def placed(
    sender: type[Order],
    *,
    point: Point,
    money: Money | None,
    colour: Colour,
    tags: list[Point],
    note: str,
) -> None:
    """A spec naming a dataclass, an optional pydantic model, an Enum and a container."""


def test_spec_classes_round_trip_without_register() -> None:
    from asignals.bridge._envelope import Registry

    sending, receiving = typed(placed, "placed"), typed(placed, "placed")
    out = Registry(JsonCodec(), "a", None, 1 << 20)
    into = Registry(JsonCodec(), "b", None, 1 << 20)
    out.add_signal(sending, None)
    into.add_signal(receiving, None)
    kwargs = {
        "point": Point(1, 2, dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),
        "money": Money(amount=Decimal("2.50"), currency="EUR"),
        "colour": Colour.RED,
        "tags": [],
        "note": "n",
    }
    data = out.dump(out.body("placed", None, kwargs))
    event = into.resolve(into.parse(data))
    assert event.kwargs == kwargs
    assert type(event.kwargs["point"]) is Point and type(event.kwargs["money"]) is Money
    none = out.dump(out.body("placed", None, {**kwargs, "money": None}))
    assert into.resolve(into.parse(none)).kwargs["money"] is None
    # Only the declared class itself: a list of them still needs codec.register.
    with pytest.raises(EncodeError, match=r"'tags'.*register"):
        out.body("placed", None, {**kwargs, "tags": [kwargs["point"]]})


def test_a_spec_typed_value_needs_the_spec_on_the_receiving_side() -> None:
    from asignals.bridge._envelope import Registry

    out = Registry(JsonCodec(), "a", None, 1 << 20)
    into = Registry(JsonCodec(), "b", None, 1 << 20)
    out.add_signal(typed(placed, "placed"), None)
    into.add_signal(AsyncSignal(name="placed"), None)  # untyped over there
    kwargs = {"point": Point(1, 2, dt.datetime(2024, 1, 1)), "colour": Colour.RED}
    data = out.dump(out.body("placed", None, kwargs))
    with pytest.raises(DecodeError, match=r"'point'.*spec declares no class"):
        into.resolve(into.parse(data))


def test_unresolvable_spec_annotations_fall_back_to_the_codec(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from asignals.bridge._envelope import Registry

    def broken(sender: object, *, point: NotDefinedYet) -> None:  # type: ignore[name-defined]  # noqa: F821
        """A forward reference nobody defines."""

    registry = Registry(JsonCodec(), "a", None, 1 << 20)
    registry.add_signal(typed(broken, "broken"), None)
    with pytest.raises(EncodeError, match="register"):
        registry.body("broken", None, {"point": Point(1, 2, dt.datetime(2024, 1, 1))})
    assert "cannot read the type hints" in caplog.text
