"""The stats reader exports the metrics too, and the stats stay exact while it does."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from sel_otel import Telemetry, read_stats
from sel_otel import _semconv as names

from .conftest import process_runtime
from .otlp_receiver import OtlpReceiver


@pytest.fixture
def otel_env(clean_otel_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    clean_otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    clean_otel_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "50")
    return clean_otel_env


def exported_calls(metric: Metric) -> int:
    return sum(point.count for point in metric.histogram.data_points)


def durations(receiver: OtlpReceiver) -> list[Metric]:
    return [m for m in receiver.metrics if m.name == names.AGENT_DURATION]


def wait_for_exported_calls(receiver: OtlpReceiver, preference: str, calls: int) -> None:
    """Until the exports hold `calls` calls: the last export (cumulative) or all (delta)."""

    def holds(_: Metric) -> bool:
        exported = [m for m in receiver.metrics if m.name == names.AGENT_DURATION]
        if preference == "delta":
            return sum(map(exported_calls, exported)) == calls
        return bool(exported) and exported_calls(exported[-1]) == calls

    receiver.wait_for_metrics(holds)


@pytest.mark.parametrize("preference", ["cumulative", "delta"])
async def test_the_stats_stay_exact_while_metrics_are_exported(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path, preference: str
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    otel_env.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", preference)
    telemetry = Telemetry.from_env()
    runtime = process_runtime(tmp_path, telemetry)
    done = 0
    for calls in (30, 50):
        while done < calls:
            await runtime.run("echo", "x")
            done += 1
        wait_for_exported_calls(otlp_receiver, preference, calls)
        # Exported, and the stats read from the same figures are still whole.
        [row] = read_stats(telemetry.stats_reader)
        assert (row.calls, row.cached_calls) == (calls, calls - 1)
    await runtime.aclose()
    telemetry.shutdown(timeout=30)
    temporalities = {
        m.histogram.aggregation_temporality
        for m in otlp_receiver.metrics
        if m.name == names.AGENT_DURATION
    }
    expected = {
        "cumulative": AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
        "delta": AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA,
    }
    assert temporalities == {expected[preference]}
