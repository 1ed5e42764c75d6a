"""One ``instrument()`` call: its options, tracer and metrics, and the instrumented send."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, Final, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from ._core import AsyncSignal, Row, drop_caches
from ._metrics import Metrics
from ._timing import Sending, Timing, current, wrapped

logger = logging.getLogger("asignals.opentelemetry")

Results = list[tuple[Any, Any]]
Send = Callable[..., Coroutine[Any, Any, Results]]

_UNNAMED: Final = "unnamed"


def sender_name(sender: object) -> str:
    """What ``asignals.sender`` says: a class by name, a value as itself, an object by type.

    Never the object's ``repr``: it may hold personal data, and it would make every send's
    attributes unique.
    """
    if sender is None:
        return "None"
    cls = type(sender)
    if cls is str:
        return str(sender)
    if cls is int:
        return str(sender)
    if isinstance(sender, type):
        return sender.__name__
    return cls.__name__


class SignalInfo:
    """What every span and data point of one signal shares, computed once."""

    __slots__ = ("name", "receivers", "span_name")

    def __init__(self, signal: AsyncSignal[..., Any]) -> None:
        self.name = signal.name or _UNNAMED
        self.span_name = f"send {self.name}"
        self.receivers: dict[str, dict[str, str]] = {}

    def receiver_attributes(self, receiver: str) -> dict[str, str]:
        found = self.receivers.get(receiver)
        if found is None:
            found = {"asignals.signal": self.name, "asignals.receiver": receiver}
            self.receivers[receiver] = found
        return found


class DeliveryMark:
    """The span of the remote delivery running in this context, and its receivers' failures."""

    __slots__ = ("failures", "span")

    def __init__(self) -> None:
        self.span: Span | None = None
        self.failures = 0


#: Set by the bridge hook around the local send of a remote event.
delivering: ContextVar[DeliveryMark | None] = ContextVar("asignals_otel_delivering", default=None)


class Session:
    """The running instrumentation. Every telemetry call it makes is guarded: a failing
    exporter, processor or sampler is logged once and never fails a send."""

    def __init__(
        self,
        tracer: Tracer,
        metrics: Metrics,
        signals: frozenset[AsyncSignal[..., Any]] | None,
        receivers: str,
        min_receiver_ns: int,
    ) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.signals = signals
        self.all_receivers = receivers == "all"
        self.receiver_spans = receivers != "none"
        self.min_receiver_ns = min_receiver_ns
        self._infos: dict[int, tuple[weakref.ref[AsyncSignal[..., Any]], SignalInfo]] = {}
        # The signals whose caches hold timers: dropped on uninstrument().
        self._wrapped: weakref.WeakSet[AsyncSignal[..., Any]] = weakref.WeakSet()
        self._failed = False

    # -- guards --------------------------------------------------------------------------

    def failed(self, what: str) -> None:
        """A telemetry call raised: log it (with the traceback the first time), carry on."""
        if self._failed:
            logger.debug("asignals.contrib.opentelemetry: %s failed", what, exc_info=True)
            return
        self._failed = True
        logger.warning(
            "asignals.contrib.opentelemetry: %s failed; the send went on without it "
            "(logged once, then at DEBUG)",
            what,
            exc_info=True,
        )

    # -- signals -------------------------------------------------------------------------

    def traces(self, signal: AsyncSignal[..., Any]) -> bool:
        selected = self.signals
        return selected is None or signal in selected

    def info(self, signal: AsyncSignal[..., Any]) -> SignalInfo:
        """What the spans and data points of ``signal`` share (cached while it lives)."""
        found = self._infos.get(id(signal))
        if found is not None and found[0]() is signal:
            return found[1]
        return self._info(signal)

    def _info(self, signal: AsyncSignal[..., Any]) -> SignalInfo:
        # The signal's first send since instrument(): its caches may hold rows filled before,
        # without timers. Dropped before the info is stored, so that a send from
        # another thread that finds the info finds the caches dropped too.
        drop_caches(signal)
        key = id(signal)
        info = SignalInfo(signal)
        infos = self._infos
        self._infos[key] = (weakref.ref(signal, lambda _ref: infos.pop(key, None)), info)
        return info

    # -- the rows -----------------------------------------------------------------------

    def rows(self, signal: AsyncSignal[..., Any], rows: tuple[Row, ...]) -> tuple[Row, ...]:
        """The core's row hook: a traced signal's receivers behind timers, others as they are."""
        if not self.traces(signal):
            return rows
        self._wrapped.add(signal)
        return wrapped(self, self.info(signal), rows)

    def close(self) -> None:
        """After uninstrument(): no cache may keep the timers (the core's hook is off by now)."""
        for signal in list(self._wrapped):
            drop_caches(signal)

    # -- the send ------------------------------------------------------------------------

    async def send(
        self,
        signal: AsyncSignal[..., Any],
        original: Send,
        args: tuple[Any, ...],
        named: dict[str, Any],
        robust: bool,
        background: bool,
    ) -> Results:
        """The core's own send, its receivers timed (see ``_timing``), inside the send's span."""
        found = self._infos.get(id(signal))
        info = found[1] if found is not None and found[0]() is signal else self._info(signal)
        sending = Sending()
        sending.info = info
        sending.args = args
        sending.named = named
        sending.robust = robust
        sending.background = background
        sending.begun = False
        sending.span = sending.context = sending.token = None
        token = current.set(sending)
        try:
            results = await original(signal, *args, **named)
        except BaseException as exc:
            current.reset(token)
            if sending.begun:
                self._record(sending, exc if isinstance(exc, Exception) else None)
            raise
        current.reset(token)
        if not sending.begun:
            return results  # it reached no receiver: nothing to record
        for index, (timing, value) in enumerate(results):
            if isinstance(timing, Timing):
                results[index] = (timing.fn, value)
                if timing.cancelled and timing.error is None and isinstance(value, Exception):
                    # A timeout: the core cancelled the receiver and put the error in its slot.
                    timing.error = value
        self._record(sending, None)
        return results

    def begin(self, sending: Sending) -> None:
        """Start the send's span and make it current, as the core calls the first receiver.

        The core calls it in the sending task, in the caller's context, before any receiver
        runs or any task of the send starts (but see ``_timing._enter``): the receivers' own
        sends, and the bridge's trace headers, are this send's children. By then the core has
        checked the call, so its sender is the one positional argument or ``sender=``.
        """
        sending.begun = True
        info = sending.info
        args = sending.args
        try:
            span = self.tracer.start_span(
                info.span_name,
                attributes={
                    "asignals.signal": info.name,
                    "asignals.sender": sender_name(args[0] if args else sending.named["sender"]),
                    "asignals.robust": sending.robust,
                    "asignals.background": sending.background,
                },
            )
            sending.span = span
            sending.context = context = trace.set_span_in_context(span)
            sending.token = otel_context.attach(context)
        except Exception:
            self.failed("starting a send span")

    def _record(self, sending: Sending, raised: Exception | None) -> None:
        """After the send: the metrics, the receiver spans, the send span's outcome.

        ``raised`` is what the send raised; when no receiver's own error explains it (a
        ``timeout`` raises in the core, around the receiver), it is the send span's error.
        """
        if sending.token is not None:
            otel_context.detach(sending.token)
        info = sending.info
        span = sending.span
        timings = sending
        called = failures = 0
        for timing in timings:
            if timing.start:  # 0: fetched by the core but not called (see _timing.Timing)
                called += 1
                if timing.error is not None:
                    failures += 1
        unexplained = raised if failures == 0 else None
        if unexplained is not None:
            failures = (
                len(cast("BaseExceptionGroup[BaseException]", unexplained).exceptions)
                if isinstance(unexplained, BaseExceptionGroup)
                else 1
            )
        try:
            metrics = self.metrics
            sends = metrics.sends
            key = (info.name, sending.background)
            sends[key] = sends.get(key, 0) + 1
            record = metrics.duration.record
            for timing in timings:
                if timing.end:
                    attributes = timing.timer.attributes
                    record((timing.end - timing.start) / 1e9, attributes)
                    if timing.error is not None:
                        metrics.failures.add(1, attributes)
        except Exception:
            self.failed("recording send metrics")
        if span is None:
            return
        try:
            if span.is_recording():
                if self.receiver_spans:
                    self._receiver_spans(sending)
                span.set_attribute("asignals.receivers", called)
                span.set_attribute("asignals.failures", failures)
                if failures:
                    if unexplained is not None:
                        span.record_exception(unexplained)
                    for timing in timings:
                        if timing.error is not None:
                            span.record_exception(timing.error)
                    span.set_status(
                        Status(StatusCode.ERROR, f"{failures} receiver(s) of {info.name} raised")
                    )
                    self._fail_delivery(span, failures)
            span.end()
        except Exception:
            self.failed("ending a send span")

    @staticmethod
    def _fail_delivery(span: Span, failures: int) -> None:
        """A failing local send of a remote event puts its delivery span in error too."""
        delivery = delivering.get()
        if delivery is None or delivery.span is None:
            return
        parent = getattr(span, "parent", None)  # the SDK's spans know their parent
        if parent is not None and parent.span_id == delivery.span.get_span_context().span_id:
            delivery.failures += failures

    def _receiver_spans(self, sending: Sending) -> None:
        threshold = 0 if self.all_receivers else self.min_receiver_ns
        start_span = self.tracer.start_span
        parent = sending.context  # the send's span, set in it
        for timing in sending:
            if not timing.end or (timing.end - timing.start < threshold and timing.error is None):
                continue
            timer = timing.timer
            child = start_span(
                timer.name,
                context=parent,
                kind=SpanKind.INTERNAL,
                attributes=timer.attributes,
                start_time=timing.start,
            )
            if timing.error is not None:
                child.record_exception(timing.error)
                child.set_status(Status(StatusCode.ERROR, f"{timer.name} raised"))
            child.end(end_time=timing.end)
