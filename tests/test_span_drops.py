"""Spans at full speed all reach a healthy collector; under overload, errors are kept and
what is dropped is counted, by outcome."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.trace import StatusCode

from sel_otel import AgentRuntime, Telemetry
from sel_otel import _semconv as names
from sel_otel._metric_data import data_points

from .conftest import free_port, process_runtime
from .otlp_receiver import OtlpReceiver
from .waiting import wait_until

AGENTS = {
    "echo": "DESCRIPTION = 'echo'\ndef run(q):\n    return q\n",
    "fails": "DESCRIPTION = 'fails'\ndef run(q):\n    raise RuntimeError('no')\n",
}


@pytest.fixture
def otel_env(clean_otel_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean OTEL_* environment: the span processor's defaults, no metric export."""
    clean_otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
    return clean_otel_env


def make_runtime(agents: Path, telemetry: Telemetry) -> AgentRuntime:
    return process_runtime(agents, telemetry, AGENTS, cache_entries=100_000)


def processed(telemetry: Telemetry) -> Counter[tuple[str, str | None]]:
    """The span processor's counts above zero by (outcome, error.type): None for spans
    handed to the exporter."""
    counts: Counter[tuple[str, str | None]] = Counter()
    data = telemetry.stats_reader.get_metrics_data()
    for point in data_points(data, names.PROCESSOR_SPANS_PROCESSED):
        assert isinstance(point, NumberDataPoint)
        attributes = point.attributes or {}
        error_type = attributes.get(names.ERROR_TYPE)
        key = (
            str(attributes.get(names.SEL_SPAN_OUTCOME)),
            None if error_type is None else str(error_type),
        )
        counts[key] += int(point.value)
    return +counts


def agent_spans(receiver: OtlpReceiver) -> list[str]:
    """The outcome of each agent span received: error, cache_hit or ok."""
    outcomes = []
    for span in receiver.spans:
        if span.name.startswith(names.INVOKE_AGENT):
            if span.status_code is StatusCode.ERROR:
                outcomes.append(names.OUTCOME_ERROR)
            elif span.attributes[names.SEL_CACHE_HIT]:
                outcomes.append(names.OUTCOME_CACHE_HIT)
            else:
                outcomes.append(names.OUTCOME_OK)
    return outcomes


async def test_every_span_a_burst_at_full_speed_leaves_reaches_a_healthy_collector(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    telemetry = Telemetry.from_env()
    runtime = make_runtime(tmp_path, telemetry)
    # As many calls as the default queue holds, made as fast as the runtime goes: none may be
    # lost, however far the export thread falls behind on a loaded machine. Whether export
    # keeps up with a sustained rate is a figure of bench/bench_runtime.py, not a test.
    calls = 16_000
    for i in range(calls):
        await runtime.run("echo", str(i % 100))
    await runtime.aclose()
    assert processed(telemetry)[(names.OUTCOME_CACHE_HIT, names.SPAN_DROPPED_QUEUE_FULL)] == 0
    telemetry.shutdown(timeout=60)
    assert Counter(agent_spans(otlp_receiver)) == {
        names.OUTCOME_OK: 100,
        names.OUTCOME_CACHE_HIT: calls - 100,
    }


async def test_a_full_queue_drops_cache_hits_first_then_successes_never_errors_first(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    otel_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")
    otel_env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    otel_env.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64")
    otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # only full batches leave by themselves
    telemetry = Telemetry.from_env()
    runtime = make_runtime(tmp_path, telemetry)
    otlp_receiver.hang(60)
    for i in range(64):  # one full batch: its export is held by the collector
        await runtime.run("echo", f"first {i}")
    otlp_receiver.wait_for_requests(lambda request: request[0] == "/v1/traces")
    # Overload, 150 spans for 64 places: a success, 99 cache hits (the queue is full at the
    # 63rd), 20 errors and 29 successes, each of which takes the place of a cache hit.
    results = [await runtime.run("echo", "hit") for _ in range(100)]
    results += [await runtime.run("fails", str(i)) for i in range(20)]
    results += [await runtime.run("echo", f"miss {i}") for i in range(29)]
    assert sum(r.cached for r in results) == 99 and sum(not r.ok for r in results) == 20
    kept_hits = 64 - (1 + 20 + 29)
    assert processed(telemetry) == {
        (names.OUTCOME_OK, None): 64,  # the batch held by the collector
        (names.OUTCOME_CACHE_HIT, names.SPAN_DROPPED_QUEUE_FULL): 99 - kept_hits,
    }
    otlp_receiver.stop()  # the held export is answered 503, and retried once this is up
    otlp_receiver.ok()
    otlp_receiver.start()
    await runtime.aclose()
    telemetry.shutdown(timeout=60)
    assert Counter(agent_spans(otlp_receiver)) == {
        names.OUTCOME_OK: 64 + 1 + 29,
        names.OUTCOME_ERROR: 20,
        names.OUTCOME_CACHE_HIT: kept_hits,
    }


async def test_when_only_errors_are_queued_a_new_error_is_dropped_and_counted(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    otel_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")
    otel_env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")
    otel_env.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8")
    otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    telemetry = Telemetry.from_env()
    runtime = make_runtime(tmp_path, telemetry)
    otlp_receiver.hang(60)
    for i in range(8):
        await runtime.run("echo", str(i))
    otlp_receiver.wait_for_requests(lambda request: request[0] == "/v1/traces")
    for i in range(10):
        await runtime.run("fails", str(i))
    await runtime.run("echo", "late")  # a success finds no room among errors
    counts = processed(telemetry)
    assert counts[(names.OUTCOME_ERROR, names.SPAN_DROPPED_QUEUE_FULL)] == 2
    assert counts[(names.OUTCOME_OK, names.SPAN_DROPPED_QUEUE_FULL)] == 1
    otlp_receiver.stop()
    otlp_receiver.ok()
    otlp_receiver.start()
    await runtime.aclose()
    telemetry.shutdown(timeout=60)
    assert Counter(agent_spans(otlp_receiver)) == {names.OUTCOME_OK: 8, names.OUTCOME_ERROR: 8}


async def test_while_exports_fail_only_one_batch_of_successes_waits_and_every_error(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    otel_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")
    otel_env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    otel_env.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16")
    otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    telemetry = Telemetry.from_env()
    runtime = make_runtime(tmp_path, telemetry)
    otlp_receiver.fail(400)  # refused for good: not retried
    for i in range(16):  # a batch that the collector refuses
        await runtime.run("echo", f"refused {i}")
    await wait_until(
        lambda: any(exporter.failing for exporter in telemetry.exporters), "the export to fail"
    )
    otlp_receiver.hang(60)
    for i in range(16):  # the next batch: its export is held
        await runtime.run("echo", f"held {i}")
    otlp_receiver.wait_for_requests(lambda r: r == ("/v1/traces", 503))
    # The last export failed: one batch of successes may wait, and errors up to the bound.
    for i in range(30):
        await runtime.run("echo", f"waiting {i}")
    for i in range(10):
        await runtime.run("fails", str(i))
    for i in range(5):
        await runtime.run("echo", f"late {i}")
    counts = processed(telemetry)
    assert counts[(names.OUTCOME_OK, names.SPAN_DROPPED_QUEUE_FULL)] == 30 - 16 + 5
    assert counts[(names.OUTCOME_ERROR, names.SPAN_DROPPED_QUEUE_FULL)] == 0
    otlp_receiver.stop()  # the held export is answered 503 and retried once this is up
    otlp_receiver.ok()
    otlp_receiver.start()
    await wait_until(
        lambda: not any(exporter.failing for exporter in telemetry.exporters),
        "the export to recover",
        deadline_s=60,
    )
    await runtime.aclose()
    telemetry.shutdown(timeout=60)
    assert Counter(agent_spans(otlp_receiver)) == {
        names.OUTCOME_OK: 16 + 16,  # the held batch, and the one that waited
        names.OUTCOME_ERROR: 10,
    }


async def test_from_a_collectors_first_refused_connection_one_batch_of_successes_waits(
    otel_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    otel_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")  # the export retries all along
    otel_env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    otel_env.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16")
    otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    telemetry = Telemetry.from_env()
    runtime = make_runtime(tmp_path, telemetry)
    for i in range(16):  # a batch, whose export cannot connect
        await runtime.run("echo", f"refused {i}")
    await wait_until(lambda: "retrying" in caplog.text, "the export to be retried")
    assert not any(exporter.failing for exporter in telemetry.exporters)  # not given up yet
    for i in range(30):
        await runtime.run("echo", f"waiting {i}")
    for i in range(10):
        await runtime.run("fails", str(i))
    counts = processed(telemetry)
    # Not a queue of 64 held for the export's retries: one batch of successes, every error.
    assert counts[(names.OUTCOME_OK, names.SPAN_DROPPED_QUEUE_FULL)] == 30 - 16
    assert counts[(names.OUTCOME_ERROR, names.SPAN_DROPPED_QUEUE_FULL)] == 0
    await runtime.aclose()
    for exporter in telemetry.exporters:
        exporter.abort()  # its retries end now: the collector is not coming
    telemetry.shutdown(timeout=5)
