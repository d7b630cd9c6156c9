"""Telemetry written by the console exporters goes to standard error, never among the replies;
a running process keeps its start-up heap out of garbage collections."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from sel_otel import SelApp, Settings, Telemetry, stats_reader

from .test_cli import sel_otel


def test_the_console_exporters_write_to_standard_error(
    clean_otel_env: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    clean_otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    clean_otel_env.setenv("OTEL_METRICS_EXPORTER", "console")
    telemetry = Telemetry.from_env()
    try:
        telemetry.tracer_provider.get_tracer("test").start_span("a span").end()
        meter: metrics.Meter = telemetry.meter_provider.get_meter("test")
        meter.create_counter("test.calls").add(1)
    finally:
        telemetry.shutdown()
    out, err = capfd.readouterr()
    assert out == ""
    assert '"name": "a span"' in err
    assert '"name": "test.calls"' in err


def test_the_console_frontend_keeps_telemetry_out_of_its_replies() -> None:
    done = sel_otel(
        "console",
        stdin="agent:calc 1+1\n",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="console",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1+1 = 2\n"
    assert '"name": "invoke_agent calc"' in done.stderr
    assert '"name": "gen_ai.client.operation.duration"' in done.stderr


def test_a_cli_run_keeps_telemetry_out_of_its_output() -> None:
    done = sel_otel("run", "calc", "6*7", OTEL_TRACES_EXPORTER="console")
    assert (done.returncode, done.stdout) == (0, "`6*7` = 42\n")
    assert '"name": "cli agent"' in done.stderr


def bare_app(tmp_path: Path) -> SelApp:
    """An app with no agents, no history and telemetry of its own, exporting nothing."""
    settings = Settings(agents_dir=tmp_path, data_dir=tmp_path / "data", history=False)
    reader = stats_reader()
    telemetry = Telemetry(TracerProvider(), MeterProvider(metric_readers=[reader]), reader)
    return SelApp(settings, telemetry)


async def test_a_running_app_leaves_its_start_up_heap_out_of_garbage_collections(
    tmp_path: Path,
) -> None:
    async with bare_app(tmp_path) as app:
        assert not any(obj is app.runtime for obj in gc.get_objects())  # what collections walk
    assert any(obj is app.runtime for obj in gc.get_objects())  # given back when it stops


async def test_apps_sharing_a_process_keep_the_heap_frozen_until_the_last_one_stops(
    tmp_path: Path,
) -> None:
    async with bare_app(tmp_path) as first:
        async with bare_app(tmp_path):
            pass
        # The second app's stop leaves the first one's heap frozen.
        assert not any(obj is first.runtime for obj in gc.get_objects())
    assert gc.get_freeze_count() == 0
