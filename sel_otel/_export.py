"""Exporter guards: telemetry export may fail, but never loudly, endlessly or at exit.

A guarded exporter delegates to an SDK exporter and:
- turns exceptions into a failed export (the batch is dropped; the SDK counts it when its
  self-metrics are on);
- logs the first failure and the recovery once each, instead of a warning per retry;
- can be aborted, which stops the SDK exporter's retry back-off, so shutdown stays bounded
  when the collector is down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

logger = logging.getLogger(__name__)


class _Guard:
    """Failure reporting and abort shared by the span, metric and log guards."""

    def __init__(
        self, inner: SpanExporter | MetricExporter | LogRecordExporter, signal: str
    ) -> None:
        self.inner = inner
        self.signal = signal
        self.failing = False
        self._lock = threading.Lock()
        self._stopped = False

    def _report(self, ok: bool, error: BaseException | None = None) -> None:
        if ok and self.failing:
            self.failing = False
            logger.warning("%s export recovered", self.signal)
        elif not ok and not self.failing:
            self.failing = True
            reason = f": {type(error).__name__}: {error}" if error else ""
            logger.warning(
                "%s export failing%s; dropping %s until the endpoint answers",
                self.signal,
                reason,
                self.signal,
            )

    def abort(self) -> None:
        """Stop the inner exporter now (ends its retries); later exports are dropped."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self.inner.shutdown()
        except Exception:
            logger.exception("stopping the %s exporter failed", self.signal)


class GuardedSpanExporter(_Guard, SpanExporter):
    """A span exporter that fails quietly and can be aborted."""

    inner: SpanExporter

    def __init__(self, inner: SpanExporter) -> None:
        super().__init__(inner, "traces")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopped:
            return SpanExportResult.FAILURE
        try:
            result = self.inner.export(spans)
        except Exception as exc:
            self._report(False, exc)
            return SpanExportResult.FAILURE
        self._report(result is SpanExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self.abort()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class GuardedMetricExporter(_Guard, MetricExporter):
    """A metric exporter that fails quietly and can be aborted."""

    inner: MetricExporter

    def __init__(self, inner: MetricExporter) -> None:
        _Guard.__init__(self, inner, "metrics")
        MetricExporter.__init__(
            self,
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self._stopped:
            return MetricExportResult.FAILURE
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:
            self._report(False, exc)
            return MetricExportResult.FAILURE
        self._report(result is MetricExportResult.SUCCESS)
        return result

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.abort()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class GuardedLogExporter(_Guard, LogRecordExporter):
    """A log record exporter that fails quietly and can be aborted."""

    inner: LogRecordExporter

    def __init__(self, inner: LogRecordExporter) -> None:
        super().__init__(inner, "logs")

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if self._stopped:
            return LogRecordExportResult.FAILURE
        try:
            result = self.inner.export(batch)
        except Exception as exc:
            self._report(False, exc)
            return LogRecordExportResult.FAILURE
        self._report(result is LogRecordExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self.abort()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
