"""`ExportingStatsReader`: the stats reader, which also exports what it collects.

A MeterProvider aggregates every record once per reader. With the stats reader and a
periodic exporting reader beside it, each record is aggregated twice; one reader serving
both halves the cost of a record. That needs the exporter to want what the stats want:
cumulative temporality and the histograms' explicit buckets (the OTLP default). An exporter
that asks for deltas or exponential histograms gets a periodic reader of its own instead
(`shares_stats_reader`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricExporter,
)
from opentelemetry.sdk.metrics.view import DefaultAggregation, ExplicitBucketHistogramAggregation

logger = logging.getLogger(__name__)


def shares_stats_reader(exporter: MetricExporter, cumulative: dict[type, Any]) -> bool:
    """Whether `exporter` wants the stats reader's temporality (cumulative for every kind of
    instrument in `cumulative`) and default aggregations (explicit buckets as advised)."""
    temporality = getattr(exporter, "_preferred_temporality", None) or {}
    aggregation = getattr(exporter, "_preferred_aggregation", None) or {}
    if any(temporality.get(kind, value) != value for kind, value in cumulative.items()):
        return False
    return all(
        type(agg) is DefaultAggregation
        or (
            type(agg) is ExplicitBucketHistogramAggregation
            and getattr(agg, "_boundaries", None) is None
        )
        for agg in aggregation.values()
    )


class ExportingStatsReader(InMemoryMetricReader):
    """A cumulative in-memory reader (read by the stats with `get_metrics_data`) that also
    passes what it collects to `exporters`, every `interval` seconds, from a daemon thread,
    at `force_flush` and once more at `shutdown`."""

    def __init__(
        self,
        exporters: Sequence[MetricExporter],
        *,
        interval: float,
        timeout: float,
        preferred_temporality: dict[type, AggregationTemporality],
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("the metric export interval and timeout must be positive")
        super().__init__(preferred_temporality=preferred_temporality)
        self.exporters = tuple(exporters)
        self._interval = interval
        self._timeout = timeout
        self._stop = threading.Event()
        self._export_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if self.exporters:
            self._thread = threading.Thread(target=self._run, name="sel-metric-export", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._export()

    def _export(self, wait: float = -1) -> None:
        """Collect now and hand the result to every exporter; failures are logged. Gives up
        after `wait` seconds (-1: no limit) when another export is still running."""
        if not self._export_lock.acquire(timeout=wait):
            return
        try:
            data = self.get_metrics_data()
            if data is None:
                return
            with suppress_instrumentation():
                for exporter in self.exporters:
                    try:
                        exporter.export(data, timeout_millis=self._timeout * 1000)
                    except Exception:
                        logger.exception("exporting metrics failed")
        finally:
            self._export_lock.release()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        if self.exporters:
            self._export()
        return all([exporter.force_flush(timeout_millis) for exporter in self.exporters])

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop the thread, export one last time, then stop the exporters."""
        deadline = time.monotonic() + timeout_millis / 1000
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), 0.0))
            self._export(wait=max(deadline - time.monotonic(), 0.0))
        for exporter in self.exporters:
            exporter.shutdown(timeout_millis=max(deadline - time.monotonic(), 0.0) * 1000)
