"""One ``instrument()`` call: its options, tracer and metrics, and the instrumented send."""

from __future__ import annotations

import logging
import weakref
from contextvars import ContextVar, Token
from typing import Any, Final, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from ._core import ASYNC, INLINE, AsyncSignal, Row, failed, prepare, run
from ._metrics import Metrics
from ._timing import Async, Sync, Timing

logger = logging.getLogger("asignals.opentelemetry")

Results = list[tuple[Any, Any]]

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


async def _inline(
    signal: AsyncSignal[..., Any],
    sender: Any,
    timings: list[Timing],
    named: dict[str, Any],
    robust: bool,
) -> Results:
    """Receivers one after the other in the sending task: the loop of ``AsyncSignal._send``.

    The core runs sync receivers, and a last async one (nothing after it could run
    concurrently), without its dispatch machinery (no task group on trio, no driver), so an
    instrumented send of them does the same: it behaves as the uninstrumented one and costs
    less. A failure goes through the core's own :func:`failed` (``send`` raises its group,
    ``send_robust`` logs and returns it).
    """
    results: Results = []
    for timing in timings:
        try:
            value = timing(**named)
            if value is not None and hasattr(type(value), "__await__"):  # pyright: ignore[reportUnknownArgumentType] - type() of an Any
                value = await value
        except Exception as exc:
            value = failed(signal, timing.entry, sender, exc, robust)
        results.append((timing.fn, value))
    return results


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
        key = id(signal)
        info = SignalInfo(signal)
        infos = self._infos
        self._infos[key] = (weakref.ref(signal, lambda _ref: infos.pop(key, None)), info)
        return info

    # -- the send ------------------------------------------------------------------------

    async def send(
        self,
        signal: AsyncSignal[..., Any],
        method: str,
        args: tuple[Any, ...],
        named: dict[str, Any],
        robust: bool,
        background: bool,
    ) -> Results:
        """Run the send through the core's dispatch with timed receivers, inside its span."""
        prepared = prepare(signal, method, args, named)
        if prepared is None:
            return []
        sender, rows, options = prepared
        found = self._infos.get(id(signal))
        info = found[1] if found is not None and found[0]() is signal else self._info(signal)
        timings: list[Timing] = []
        timed: list[Row] = []
        others = 0  # receivers that are not plain sync ones
        last = INLINE  # the mode of the last live receiver
        for get, mode, entry in rows:
            fn = get()
            if fn is not None:
                timing = Async(fn, entry) if mode == ASYNC else Sync(fn, entry)
                timings.append(timing)
                timed.append((timing.get, mode, entry))
                last = mode
                if mode != INLINE:
                    others += 1
        # Run here, as AsyncSignal._send does, sync receivers and a last async one.
        inline = options is None and (others == 0 or (others == 1 and last == ASYNC))
        span: Span | None = None
        token: Token[Context] | None = None
        try:
            span = self.tracer.start_span(
                info.span_name,
                attributes={
                    "asignals.signal": info.name,
                    "asignals.sender": sender_name(sender),
                    "asignals.receivers": len(timings),
                    "asignals.robust": robust,
                    "asignals.background": background,
                },
            )
            # Current while the receivers run: their own sends, and the bridge's trace
            # headers, are this send's children.
            token = otel_context.attach(trace.set_span_in_context(span))
        except Exception:
            self.failed("starting a send span")
        try:
            if inline:
                results = await _inline(signal, sender, timings, named, robust)
            elif options is None:
                results = await run(signal, tuple(timed), 0, [], named, robust)
            else:
                results = await run(signal, tuple(timed), 0, [], named, robust, *options)
        except BaseException as exc:
            if token is not None:
                otel_context.detach(token)
            self._record(
                info, span, timings, background, exc if isinstance(exc, Exception) else None
            )
            raise
        if token is not None:
            otel_context.detach(token)
        if not inline:
            for index, (timing, value) in enumerate(results):
                if timing.cancelled and timing.error is None and isinstance(value, Exception):
                    # A timeout: the core cancelled the receiver and put the error in its slot.
                    timing.error = value
                results[index] = (timing.fn, value)
        self._record(info, span, timings, background, None)
        return results

    def _record(
        self,
        info: SignalInfo,
        span: Span | None,
        timings: list[Timing],
        background: bool,
        raised: Exception | None,
    ) -> None:
        """After the send: the metrics, the receiver spans, the send span's outcome.

        ``raised`` is what the send raised; when no receiver's own error explains it (a
        ``timeout`` raises in the core, around the receiver), it is the send span's error.
        """
        failures = 0
        for timing in timings:
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
            key = (info.name, background)
            sends[key] = sends.get(key, 0) + 1
            record = metrics.duration.record
            receivers = info.receivers
            for timing in timings:
                if timing.end:
                    name = timing.entry.name
                    attributes = receivers.get(name) or info.receiver_attributes(name)
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
                    self._receiver_spans(info, span, timings)
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

    def _receiver_spans(self, info: SignalInfo, span: Span, timings: list[Timing]) -> None:
        threshold = 0 if self.all_receivers else self.min_receiver_ns
        start_span = self.tracer.start_span
        parent: Context | None = None
        for timing in timings:
            if not timing.end or (timing.end - timing.start < threshold and timing.error is None):
                continue
            if parent is None:
                parent = trace.set_span_in_context(span)
            name = timing.entry.name
            child = start_span(
                name,
                context=parent,
                kind=SpanKind.INTERNAL,
                attributes=info.receiver_attributes(name),
                start_time=timing.start,
            )
            if timing.error is not None:
                child.record_exception(timing.error)
                child.set_status(Status(StatusCode.ERROR, f"{name} raised"))
            child.end(end_time=timing.end)
