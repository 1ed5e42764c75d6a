"""The bridge's tracing hooks: trace context out in the envelope headers, back in on delivery.

The headers are the envelope's own (never the user's kwargs). What goes in them is what the
global propagator writes, by default W3C ``traceparent``/``tracestate`` and ``baggage``; what is
read back is only those fields, as strings of a bounded length. A header that is missing,
malformed or hostile leaves the delivery without a remote parent: it starts a trace of its own.
"""

from __future__ import annotations

import re
from contextvars import Token
from types import TracebackType
from typing import Final, cast

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._metrics import Metrics
from ._session import DeliveryMark, Session, delivering

_REASON: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")

#: Longer values are dropped unread: W3C baggage allows 8192 bytes, a traceparent is 55.
MAX_HEADER_CHARS: Final = 8192


class Hooks:
    """What ``asignals.bridge._hooks.hooks`` is set to while instrumented."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def on_publish(self, signal_name: str, headers: dict[str, str]) -> None:
        """An event leaves: count it and write the current trace context into its headers."""
        try:
            Metrics.count(self._session.metrics.published, (signal_name,))
            propagate.inject(headers)
        except Exception:
            self._session.failed("writing trace headers")

    def on_deliver(self, signal_name: str, headers: dict[str, str], attempt: int) -> _Delivery:
        """An event arrives: the CONSUMER span its local send runs in, as a context manager."""
        return _Delivery(self._session, signal_name, headers, attempt)

    def on_dead_letter(self, signal_name: str, reason: str) -> None:
        """An event was dead-lettered: count it, by signal and reason.

        A reason that is not a short keyword (``max_attempts``, ``undecodable``), such as the
        message an outbox gives, counts as ``other``: a data point per message would grow
        without bound.
        """
        try:
            key = reason if _REASON.fullmatch(reason) else "other"
            Metrics.count(self._session.metrics.dead_lettered, (signal_name, key))
        except Exception:
            self._session.failed("counting a dead letter")


def remote_context(headers: object) -> Context:
    """The trace context the headers carry, or an empty one if they carry none we can trust."""
    empty = Context()
    if not isinstance(headers, dict):
        return empty
    try:
        fields = propagate.get_global_textmap().fields
        carrier: dict[str, str] = {}
        for key, value in cast("dict[object, object]", headers).items():
            if (
                isinstance(key, str)
                and isinstance(value, str)
                and len(value) <= MAX_HEADER_CHARS
                and key.lower() in fields
            ):
                carrier[key.lower()] = value
        if not carrier:
            return empty
        return propagate.extract(carrier, context=empty)
    except Exception:
        return empty


class _Delivery:
    """The span of one remote delivery, current while the bridge sends the event locally."""

    __slots__ = ("_attempt", "_delivering", "_headers", "_mark", "_session", "_signal", "_token")

    def __init__(
        self, session: Session, signal_name: str, headers: dict[str, str], attempt: int
    ) -> None:
        self._session = session
        self._signal = signal_name
        self._headers = headers
        self._attempt = attempt
        self._mark = DeliveryMark()
        self._token: Token[Context] | None = None
        self._delivering: Token[DeliveryMark | None] | None = None

    def __enter__(self) -> None:
        session = self._session
        try:
            metrics = session.metrics
            Metrics.count(metrics.delivered, (self._signal,))
            if self._attempt > 1:
                Metrics.count(metrics.redelivered, (self._signal,))
            parent = remote_context(self._headers)
            self._mark.span = span = session.tracer.start_span(
                f"deliver {self._signal}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={"asignals.signal": self._signal, "asignals.attempt": self._attempt},
            )
            self._token = otel_context.attach(trace.set_span_in_context(span, parent))
            self._delivering = delivering.set(self._mark)
        except Exception:
            session.failed("starting a delivery span")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._delivering is not None:
            delivering.reset(self._delivering)
        if self._token is not None:
            otel_context.detach(self._token)
        span = self._mark.span
        if span is None:
            return
        try:
            if isinstance(exc, Exception):
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"delivering {self._signal} failed"))
            elif self._mark.failures:
                failures = self._mark.failures
                span.set_status(
                    Status(StatusCode.ERROR, f"{failures} receiver(s) of {self._signal} raised")
                )
            span.end()
        except Exception:
            self._session.failed("ending a delivery span")
