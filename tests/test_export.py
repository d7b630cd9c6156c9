"""Telemetry leaves the process over OTLP, and exporter faults never hurt agent calls."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics.export import NumberDataPoint

from sel_otel import (
    ConfigError,
    Telemetry,
    read_stats,
)
from sel_otel._metric_data import data_points, metrics

from .conftest import CLI, cli_environment, process_runtime
from .otlp_receiver import OtlpReceiver, ReceivedSpan


@pytest.fixture
def otel_env(clean_otel_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean OTEL_* environment with fast batching, for providers built from it."""
    clean_otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    clean_otel_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    return clean_otel_env


def sdk_counter(telemetry: Telemetry, name: str, error_type: str) -> int:
    points = data_points(telemetry.stats_reader.get_metrics_data(), name)
    return sum(
        int(point.value)
        for point in points
        if isinstance(point, NumberDataPoint)
        and (point.attributes or {}).get("error.type") == error_type
    )


def metric_names(telemetry: Telemetry) -> set[str]:
    return {metric.name for metric in metrics(telemetry.stats_reader.get_metrics_data())}


def test_no_exporter_by_default(otel_env: pytest.MonkeyPatch) -> None:
    telemetry = Telemetry.from_env()
    assert telemetry.exporters == ()
    telemetry.shutdown()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", r"unsupported \['zipkin'\]"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "not supported"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "99999", "invalid OpenTelemetry setting"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "nan", "not a number of milliseconds"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "soon", "not a number of milliseconds"),
    ],
)
def test_bad_settings_are_configuration_errors(
    otel_env: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    otel_env.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        Telemetry.from_env()


def test_an_exporter_that_cannot_be_built_is_a_configuration_error(
    otel_env: pytest.MonkeyPatch,
) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    otel_env.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")  # gRPC has no zstd
    with pytest.raises(ConfigError, match="invalid OpenTelemetry setting"):
        Telemetry.from_env()


def test_a_setting_an_exporter_cannot_use_is_warned_of_not_ignored() -> None:
    done = subprocess.run(
        [*CLI, "run", "calc", "1+1"],
        env=cli_environment(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
            OTEL_EXPORTER_OTLP_COMPRESSION="gzp",
            SEL_TELEMETRY_SHUTDOWN_TIMEOUT="0.5",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "gzp" in done.stderr  # the SDK's warning: the compression falls back to none


def test_intervals_longer_than_a_thread_can_wait_export_at_shutdown(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "10000000000000")  # 317 years
    otel_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "inf")  # no periodic export
    telemetry = Telemetry.from_env()
    telemetry.tracer_provider.get_tracer("test").start_span("the span").end()
    telemetry.meter_provider.get_meter("test").create_counter("the.counter").add(1)
    telemetry.shutdown(timeout=30)  # the export threads are alive to flush
    assert [span.name for span in otlp_receiver.spans] == ["the span"]
    assert "the.counter" in {metric.name for metric in otlp_receiver.metrics}


async def test_spans_and_metrics_reach_an_otlp_http_receiver_with_the_resource(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    otel_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    telemetry = Telemetry.from_env()
    runtime = process_runtime(tmp_path, telemetry)
    for _ in range(3):
        await runtime.run("echo", "hello")
    await runtime.aclose()
    telemetry.shutdown(timeout=30)  # returns once flushed
    spans = otlp_receiver.wait_for_spans(lambda s: s.name == "invoke_agent echo", count=3)
    assert [s.attributes["sel.cache.hit"] for s in spans] == [False, True, True]
    resource = spans[0].resource
    assert resource["service.name"] == "sel-bot"
    assert resource["deployment.environment"] == "test"
    assert resource["service.version"] and len(resource["service.instance.id"]) == 36
    [metric] = otlp_receiver.wait_for_metrics(
        lambda m: m.name == "gen_ai.client.operation.duration"
    )
    assert sum(p.count for p in metric.histogram.data_points) == 3
    assert metric.unit == "s"


class GrpcTraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver on loopback, keeping the span names it was sent."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        # The generated gRPC module is unannotated.
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.names += [
            span.name
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_reach_an_otlp_grpc_receiver(
    otel_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    receiver = GrpcTraceReceiver()
    try:
        otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
        telemetry = Telemetry.from_env()
        runtime = process_runtime(tmp_path, telemetry)
        await runtime.run("echo", "over grpc")
        await runtime.aclose()
        telemetry.shutdown(timeout=30)
        assert receiver.names == ["invoke_agent echo"]
    finally:
        receiver.server.stop(grace=None)


@pytest.mark.parametrize("fault", ["absent", "hanging", "503"])
async def test_calls_succeed_whatever_the_collector_does_and_exit_stays_prompt(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path, fault: str
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    otel_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")  # exporters alone would wait 30 s
    otel_env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    otel_env.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16")
    faults: dict[str, Callable[[], object]] = {
        "absent": otlp_receiver.stop,
        "hanging": lambda: otlp_receiver.hang(30),
        "503": otlp_receiver.fail,
    }
    faults[fault]()
    telemetry = Telemetry.from_env()
    runtime = process_runtime(tmp_path, telemetry)
    results = [await runtime.run("echo", str(i % 50)) for i in range(500)]
    assert all(r.ok for r in results)
    # The queue is bounded: what does not fit is dropped, and counted; the SDK's per-span
    # self-metrics stay off (they would double the cost of every span).
    assert sdk_counter(telemetry, "otel.sdk.processor.span.processed", "queue_full") > 0
    assert "otel.sdk.span.started" not in metric_names(telemetry)
    await runtime.aclose()
    started = time.monotonic()
    telemetry.shutdown(timeout=1.0)
    assert time.monotonic() - started < 10  # the timeout and some, not the exporters' 30 s
    assert not any(s.name == "invoke_agent echo" for s in otlp_receiver.spans)


async def test_a_trace_endpoint_that_hangs_at_exit_does_not_cost_the_last_metrics(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    with OtlpReceiver() as hanging:
        hanging.hang(30)
        otel_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
        otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", hanging.traces_url)
        otel_env.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", otlp_receiver.metrics_url)
        otel_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")  # only the final flush sends
        telemetry = Telemetry.from_env()
        runtime = process_runtime(tmp_path, telemetry)
        assert (await runtime.run("echo", "x")).ok
        await runtime.aclose()
        started = time.monotonic()
        telemetry.shutdown(timeout=4.0)
        assert time.monotonic() - started < 12  # the timeout and some, not the hang's 30 s
    otlp_receiver.wait_for_metrics(lambda m: m.name == "gen_ai.client.operation.duration")


async def test_a_disabled_sdk_exports_nothing_and_the_stats_still_count(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    otel_env.setenv("OTEL_SDK_DISABLED", "true")
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    telemetry = Telemetry.from_env()
    runtime = process_runtime(tmp_path, telemetry)
    for _ in range(3):
        assert (await runtime.run("echo", "x")).ok
    [row] = read_stats(telemetry.stats_reader)
    assert (row.agent, row.calls, row.cached_calls) == ("echo", 3, 2)
    await runtime.aclose()
    telemetry.shutdown(timeout=1.0)
    assert otlp_receiver.requests == []


async def test_export_resumes_when_the_collector_comes_back(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
    otlp_receiver.stop()
    telemetry = Telemetry.from_env()
    runtime = process_runtime(tmp_path, telemetry)
    assert all([(await runtime.run("echo", "while down")).ok for _ in range(20)])
    otlp_receiver.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert (await runtime.run("echo", "after return")).ok
        try:
            await asyncio.to_thread(
                otlp_receiver.wait_for_spans,
                lambda s: s.attributes.get("sel.agent.input") == "after return",
                timeout=0.5,
            )
            break
        except TimeoutError:
            continue
    else:
        pytest.fail("no span arrived after the collector came back")
    await runtime.aclose()
    telemetry.shutdown()


def test_one_trace_follows_a_request_across_the_host_exec_process(
    otlp_receiver: OtlpReceiver,
) -> None:
    env = cli_environment(
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.url,
        OTEL_METRICS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    done = subprocess.run(
        [*CLI, "run", "host_exec", "uname", "-a"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    exec_span, *_ = otlp_receiver.wait_for_spans(lambda s: s.name == "exec uname", timeout=10)
    trace = {s.span_id: s for s in otlp_receiver.spans if s.trace_id == exec_span.trace_id}
    chain: list[ReceivedSpan] = []
    span: ReceivedSpan | None = exec_span
    while span is not None:
        chain.append(span)
        span = trace.get(span.parent_span_id)
    assert [(s.name, s.resource["service.name"]) for s in reversed(chain)] == [
        ("cli agent", "sel-bot"),
        ("invoke_agent host_exec", "sel-bot"),
        ("POST", "sel-bot"),
        ("POST /exec", "sel-host-exec"),
        ("exec uname", "sel-host-exec"),
    ]
    assert chain[-1].parent_span_id == ""


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_console_promptly_and_flushes_its_spans(
    otlp_receiver: OtlpReceiver, signum: int, status: int
) -> None:
    env = cli_environment(
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="60000",  # nothing leaves before shutdown
        OTEL_METRIC_EXPORT_INTERVAL="60000",
    )
    console = subprocess.Popen(
        [*CLI, "console"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert console.stdin is not None and console.stdout is not None
        console.stdin.write("agent:calc 20+22\n")
        console.stdin.flush()
        assert console.stdout.readline() == "20+22 = 42\n"
        console.send_signal(signum)  # standard input stays open: the read is pending
        assert console.wait(timeout=15) == status
    finally:
        console.kill()
        console.communicate()
    spans = otlp_receiver.wait_for_spans(lambda s: s.name == "invoke_agent calc")
    assert spans[0].attributes["sel.agent.input"] == "20+22"
    otlp_receiver.wait_for_metrics(lambda m: m.name == "gen_ai.client.operation.duration")


async def test_sampled_out_traces_still_count_in_the_stats(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    from sel_otel import read_stats

    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_receiver.traces_url)
    otel_env.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    otel_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    telemetry = Telemetry.from_env()
    runtime = process_runtime(tmp_path, telemetry)
    for i in range(300):
        await runtime.run("echo", str(i))
    [row] = read_stats(telemetry.stats_reader)
    await runtime.aclose()
    telemetry.shutdown(timeout=30)
    assert row.calls == 300
    exported = [s for s in otlp_receiver.spans if s.name == "invoke_agent echo"]
    assert 5 <= len(exported) <= 80  # about 30 of 300; never all of them
    assert not otlp_receiver.metrics  # only the traces endpoint was given
