"""`PrioritySpanProcessor`: ended spans exported in batches from a thread of its own; when the
queue is full, the least useful spans are dropped first.

It batches as the SDK's BatchSpanProcessor does (a bounded queue, a batch size, a schedule
delay: `BatchSettings`, read from the `OTEL_BSP_*` variables), with two differences:

- A full queue drops cache hits first, then other successful spans, and error spans last:
  only when it holds nothing else. The collector's tail sampling keeps every error trace; the
  process must not lose the error spans before the collector sees them. Batches are taken
  in the same order, errors first.
- While exports fail (a collector down), the queue keeps one batch of spans other than
  errors, and errors up to its bound: what cannot be sent is dropped as it ends, instead of
  being held (and its memory) for an export that is not coming. Exports fail from the last
  one that failed, or from the moment the exporter says it cannot connect
  (`exports_failing`), while it retries, until one succeeds.
- Dropped spans are counted without a cost per span: plain integers, read by an observable
  counter when the metrics are collected. The counter is the SDK's own,
  `otel.sdk.processor.span.processed` (with `error.type` `queue_full` for the spans dropped),
  plus `sel.span.outcome` (`error`, `ok`, `cache_hit`): what was dropped.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from . import _semconv as names
from ._span_fields import stored_attributes

logger = logging.getLogger(__name__)

#: Outcomes in the order they are kept: errors first, cache hits dropped first.
OUTCOMES = (names.OUTCOME_ERROR, names.OUTCOME_OK, names.OUTCOME_CACHE_HIT)
_ERROR, _OK, _HIT = range(3)
#: Seconds `shutdown` waits for the worker to export what is queued.
_SHUTDOWN_WAIT = 30.0
_NONE: Mapping[str, object] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How spans are batched: at most `max_queue_size` waiting, exported `max_export_batch_size`
    at a time, at least every `schedule_delay_millis` while any wait.

    The defaults suit the rate a runtime sustains (tens of thousands of cached calls a second
    on one core): the queue holds about half a second of them, so an export that is slow for
    a moment (a busy machine, a collector that pauses) loses nothing; a batch is sent as soon
    as one is full, and a span waits a second at most when calls are few.
    """

    max_queue_size: int = 16_384
    max_export_batch_size: int = 1_024
    schedule_delay_millis: float = 1_000.0

    def __post_init__(self) -> None:
        if self.max_queue_size <= 0 or self.max_export_batch_size <= 0:
            raise ValueError("the span queue and batch sizes must be positive")
        if self.schedule_delay_millis <= 0:
            raise ValueError("the span schedule delay must be positive")
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("the span batch size must not exceed the queue size")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BatchSettings:
        """The defaults, overridden by `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
        and `OTEL_BSP_SCHEDULE_DELAY` (milliseconds); raises ValueError for a bad value."""
        default = cls()
        return cls(
            max_queue_size=_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", default.max_queue_size),
            max_export_batch_size=_number(
                env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default.max_export_batch_size
            ),
            schedule_delay_millis=_number(
                env, "OTEL_BSP_SCHEDULE_DELAY", default.schedule_delay_millis
            ),
        )


def _number(env: Mapping[str, str], name: str, default: float) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return int(default)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None


class PrioritySpanProcessor(SpanProcessor):
    """Exports ended spans in batches on a daemon thread; see the module doc.

    `name` tells this processor's counts apart from another's (`otel.component.name`).
    `dropped` and `processed` are the counts so far, by outcome.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        settings: BatchSettings | None = None,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        name: str = "batching_span_processor/0",
    ) -> None:
        self.exporter = exporter
        self.settings = settings or BatchSettings()
        self._max_queue = self.settings.max_queue_size
        self._batch = self.settings.max_export_batch_size
        #: Places for spans other than errors: the queue, or one batch while exports fail.
        self._room = self._max_queue
        self._queues: tuple[deque[ReadableSpan], ...] = (deque(), deque(), deque())
        self._queued = 0
        self._dropped = [0, 0, 0]
        self._processed = [0, 0, 0]
        self._closed = 0  # spans ended after shutdown
        self._lock = threading.Lock()
        self._export_lock = threading.Lock()
        self._wake = threading.Event()
        self._shutdown = False
        self._component = {
            names.OTEL_COMPONENT_TYPE: names.BATCHING_SPAN_PROCESSOR,
            names.OTEL_COMPONENT_NAME: name,
        }
        if meter_provider is not None:
            meter = meter_provider.get_meter(names.SCOPE_NAME)
            meter.create_observable_counter(
                names.PROCESSOR_SPANS_PROCESSED,
                callbacks=[self._observe],
                unit=names.SPAN_UNIT,
                description="Spans handed to the exporter, or dropped (error.type)",
            )
        self._worker = threading.Thread(
            target=self._work, name=f"sel-span-export-{name}", daemon=True
        )
        self._worker.start()

    @property
    def dropped(self) -> dict[str, int]:
        """Spans dropped on a full queue, by outcome."""
        return dict(zip(OUTCOMES, self._dropped, strict=True))

    @property
    def processed(self) -> dict[str, int]:
        """Spans handed to the exporter, by outcome."""
        return dict(zip(OUTCOMES, self._processed, strict=True))

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        span_context = span.context
        if span_context is None or not span_context.trace_flags.sampled:
            return
        if span.status.status_code is StatusCode.ERROR:
            outcome = _ERROR
        elif (stored_attributes(span) or _NONE).get(names.SEL_CACHE_HIT) is True:
            outcome = _HIT
        else:
            outcome = _OK
        with self._lock:
            if self._shutdown:
                self._closed += 1
                return
            if self._queued < (self._max_queue if outcome == _ERROR else self._room):
                self._queued += 1
            else:
                # Make room by dropping the oldest span less useful than this one, or drop it.
                for victim in (_HIT, _OK):
                    if victim > outcome and self._queues[victim]:
                        self._queues[victim].popleft()
                        self._dropped[victim] += 1
                        break
                else:
                    self._dropped[outcome] += 1
                    return
            self._queues[outcome].append(span)
            if self._queued >= self._batch and not self._wake.is_set():
                self._wake.set()

    def exports_failing(self) -> None:
        """Called by the exporter, from the export in progress, when it cannot reach its
        destination: from now on, as after a failed export, one batch of spans other than
        errors waits, not a full queue (held in memory, each full garbage collection walking
        them all, for an export that is not coming)."""
        self._room = self._batch

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every span queued now, from the calling thread."""
        if self._shutdown:
            return False
        self._export(drain=True)
        return True

    def shutdown(self) -> None:
        """Export what is queued, stop the worker, then the exporter."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        self._wake.set()
        self._worker.join(_SHUTDOWN_WAIT)
        self.exporter.shutdown()

    def _work(self) -> None:
        delay = min(self.settings.schedule_delay_millis / 1000.0, threading.TIMEOUT_MAX)
        while not self._shutdown:
            woken = self._wake.wait(delay)
            self._wake.clear()
            # Woken by a full batch: export full batches. The delay passed: export what waits.
            self._export(drain=not woken or self._shutdown)
        self._export(drain=True)

    def _export(self, drain: bool) -> None:
        """Export batches while a full one waits; with `drain`, until the queue is empty."""
        with self._export_lock:
            while True:
                with self._lock:
                    if not self._queued or (not drain and self._queued < self._batch):
                        return
                    batch = self._take()
                try:
                    with suppress_instrumentation():  # the export's own HTTP call untraced
                        result = self.exporter.export(batch)
                except Exception:
                    logger.exception("exporting %d spans failed", len(batch))
                    result = SpanExportResult.FAILURE
                failed = result is SpanExportResult.FAILURE
                self._room = self._batch if failed else self._max_queue

    def _take(self) -> list[ReadableSpan]:
        """Up to one batch of queued spans, errors first (the lock held)."""
        batch: list[ReadableSpan] = []
        room = self._batch
        for outcome, queue in enumerate(self._queues):
            count = min(room, len(queue))
            if count == len(queue):
                batch += queue
                queue.clear()
            else:
                pop = queue.popleft
                batch += [pop() for _ in range(count)]
            self._processed[outcome] += count
            room -= count
            if not room:
                break
        self._queued -= len(batch)
        return batch

    def _observe(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        with self._lock:
            processed, dropped = list(self._processed), list(self._dropped)
            closed = self._closed
        for outcome, count in zip(OUTCOMES, processed, strict=True):
            yield metrics.Observation(count, {**self._component, names.SEL_SPAN_OUTCOME: outcome})
        for outcome, count in zip(OUTCOMES, dropped, strict=True):
            if count:
                yield metrics.Observation(
                    count,
                    {
                        **self._component,
                        names.SEL_SPAN_OUTCOME: outcome,
                        names.ERROR_TYPE: names.SPAN_DROPPED_QUEUE_FULL,
                    },
                )
        if closed:
            yield metrics.Observation(
                closed, {**self._component, names.ERROR_TYPE: names.SPAN_DROPPED_SHUTDOWN}
            )
