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
