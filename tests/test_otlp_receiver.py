"""The test OTLP receiver decodes what the real SDK exporters send, and its faults are real."""

from __future__ import annotations

import gzip
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.otlp_receiver import MAX_HANG, OtlpReceiver, ReceivedSpan

# The `otlp_receiver` fixture comes from tests.otlp_receiver, registered in tests/conftest.py.

RESOURCE = Resource.create(
    {"service.name": "sel-bot-test", "deployment.environment": "test"},
)


def _make_spans() -> Sequence[ReadableSpan]:
    """Finished SDK spans (parent, child, failed child), captured in memory."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("sel_otel")
    with tracer.start_as_current_span(
        "invoke_agent sysinfo",
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "sysinfo",
            "sel.cache.hit": False,
            "sel.agent.duration_ms": 1.5,
            "sel.tags": ["a", "b"],
            "sel.retries": 2,
        },
    ):
        with tracer.start_as_current_span("exec uname", kind=SpanKind.CLIENT):
            pass
        with tracer.start_as_current_span("exec df", record_exception=False) as failed:
            failed.record_exception(RuntimeError("disk on fire"))
            failed.set_status(Status(StatusCode.ERROR, "disk on fire"))
            failed.set_attribute("error.type", "RuntimeError")
    provider.shutdown()
    return memory.get_finished_spans()


@pytest.fixture
def spans() -> Sequence[ReadableSpan]:
    return _make_spans()


@pytest.fixture
def exporter(otlp_receiver: OtlpReceiver) -> Iterator[OTLPSpanExporter]:
    """An http/protobuf span exporter aimed at the receiver, with a short timeout."""
    exporter = OTLPSpanExporter(endpoint=otlp_receiver.traces_url, timeout=1.0)
    yield exporter
    exporter.shutdown()


def _by_name(spans: Sequence[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans}


# -- decoding what the SDK sends -------------------------------------------------------------


def test_spans_from_a_batch_span_processor_are_decoded_with_parentage(
    otlp_receiver: OtlpReceiver,
) -> None:
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_receiver.traces_url, timeout=2.0))
    )
    tracer = provider.get_tracer("sel_otel", "0.1.0")
    with tracer.start_as_current_span(
        "invoke_agent sysinfo",
        attributes={"gen_ai.agent.name": "sysinfo", "sel.cache.hit": True},
    ) as parent:
        with tracer.start_as_current_span("exec uname", kind=SpanKind.CLIENT):
            pass
        parent.set_status(Status(StatusCode.OK))
    assert provider.force_flush(5_000)
    provider.shutdown()

    received = _by_name(otlp_receiver.wait_for_spans(count=2))
    root, child = received["invoke_agent sysinfo"], received["exec uname"]
    assert root.parent_span_id == ""
    assert child.parent_span_id == root.span_id
    assert child.trace_id == root.trace_id
    assert len(root.trace_id) == 32 and len(root.span_id) == 16
    assert root.trace_id == format(parent.get_span_context().trace_id, "032x")
    assert root.kind is SpanKind.INTERNAL and child.kind is SpanKind.CLIENT
    assert root.attributes == {"gen_ai.agent.name": "sysinfo", "sel.cache.hit": True}
    assert root.status_code is StatusCode.OK
    assert root.resource["service.name"] == "sel-bot-test"
    assert root.resource["deployment.environment"] == "test"
    assert root.scope_name == "sel_otel"
    assert root.end_time_unix_nano >= root.start_time_unix_nano > 0


def test_attribute_types_error_status_and_exception_events_survive_decoding(
    otlp_receiver: OtlpReceiver, exporter: OTLPSpanExporter, spans: Sequence[ReadableSpan]
) -> None:
    assert exporter.export(spans) is SpanExportResult.SUCCESS

    received = _by_name(otlp_receiver.wait_for_spans(count=3))
    root, failed = received["invoke_agent sysinfo"], received["exec df"]
    assert root.attributes["sel.cache.hit"] is False
    assert root.attributes["sel.agent.duration_ms"] == 1.5
    assert root.attributes["sel.retries"] == 2
    assert root.attributes["sel.tags"] == ("a", "b")
    assert failed.status_code is StatusCode.ERROR
    assert failed.status_message == "disk on fire"
    assert failed.attributes["error.type"] == "RuntimeError"
    assert [name for name, _ in failed.events] == ["exception"]
    assert failed.events[0][1]["exception.type"] == "RuntimeError"
    assert root.status_code is StatusCode.UNSET


def test_gzip_compressed_exports_are_decoded(
    otlp_receiver: OtlpReceiver, spans: Sequence[ReadableSpan]
) -> None:
    exporter = OTLPSpanExporter(
        endpoint=otlp_receiver.traces_url, timeout=1.0, compression=Compression.Gzip
    )
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    assert {s.name for s in otlp_receiver.spans} == {
        "invoke_agent sysinfo",
        "exec uname",
        "exec df",
    }
    assert [(r.path, r.status, r.content_encoding) for r in otlp_receiver.requests] == [
        ("/v1/traces", 200, "gzip")
    ]


def test_histogram_from_a_periodic_metric_reader_is_decoded(otlp_receiver: OtlpReceiver) -> None:
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=otlp_receiver.metrics_url, timeout=2.0),
        export_interval_millis=60_000,
    )
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    histogram = provider.get_meter("sel_otel").create_histogram(
        "gen_ai.client.operation.duration",
        unit="s",
        explicit_bucket_boundaries_advisory=[0.001, 0.01, 0.1],
    )
    for seconds in (0.0005, 0.002, 0.05):
        histogram.record(seconds, {"gen_ai.agent.name": "sysinfo", "sel.cache.hit": False})
    histogram.record(0.0001, {"gen_ai.agent.name": "sysinfo", "sel.cache.hit": True})
    assert provider.force_flush(5_000)
    provider.shutdown()

    # force_flush and shutdown each export the (cumulative) histogram: read the last one.
    metric = otlp_receiver.wait_for_metrics(lambda m: m.name == "gen_ai.client.operation.duration")[
        -1
    ]
    assert metric.type == "histogram"
    assert metric.unit == "s"
    assert metric.resource["service.name"] == "sel-bot-test"
    assert metric.scope_name == "sel_otel"
    points = {p.attributes["sel.cache.hit"]: p for p in metric.points}
    miss, hit = points[False], points[True]
    assert miss.attributes["gen_ai.agent.name"] == "sysinfo"
    assert miss.count == 3 and hit.count == 1
    assert miss.sum == pytest.approx(0.0525)
    assert miss.explicit_bounds == (0.001, 0.01, 0.1)
    assert miss.bucket_counts == (1, 1, 1, 0)
    assert "gen_ai.client.operation.duration" in otlp_receiver.metric_names()


def test_logs_are_accepted_and_counted(otlp_receiver: OtlpReceiver) -> None:
    message = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[LogRecord()] * 2)])]
    )
    status = _post(otlp_receiver.logs_url, message.SerializeToString())
    assert status == 200
    assert otlp_receiver.log_records == 2


# -- what a collector would refuse -----------------------------------------------------------


def _post(
    url: str, body: bytes, content_type: str = "application/x-protobuf", encoding: str = ""
) -> int:
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_unknown_paths_wrong_content_types_and_garbage_are_refused(
    otlp_receiver: OtlpReceiver,
) -> None:
    assert _post(otlp_receiver.url + "/v1/profiles", b"") == 404
    assert _post(otlp_receiver.traces_url, b"{}", content_type="application/json") == 415
    assert _post(otlp_receiver.traces_url, b"\xff\xff\xff") == 400
    assert _post(otlp_receiver.traces_url, b"not gzip", encoding="gzip") == 400
    assert _post(otlp_receiver.traces_url, gzip.compress(b""), encoding="gzip") == 200
    assert otlp_receiver.spans == []
    assert [r.status for r in otlp_receiver.requests] == [404, 415, 400, 400, 200]


# -- fault modes -----------------------------------------------------------------------------


def test_error_mode_answers_503_stores_nothing_and_recovers(
    otlp_receiver: OtlpReceiver, exporter: OTLPSpanExporter, spans: Sequence[ReadableSpan]
) -> None:
    otlp_receiver.fail()
    started = time.monotonic()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 3.0
    assert otlp_receiver.spans == []
    assert otlp_receiver.requests and {r.status for r in otlp_receiver.requests} == {503}

    otlp_receiver.ok()
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(otlp_receiver.spans) == 3


def test_error_mode_with_a_client_error_is_not_retried(
    otlp_receiver: OtlpReceiver, exporter: OTLPSpanExporter, spans: Sequence[ReadableSpan]
) -> None:
    otlp_receiver.fail(400)
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert [(r.status, r.mode) for r in otlp_receiver.requests] == [(400, "error")]


def test_hang_mode_holds_the_request_until_the_exporter_gives_up(
    otlp_receiver: OtlpReceiver, spans: Sequence[ReadableSpan]
) -> None:
    exporter = OTLPSpanExporter(endpoint=otlp_receiver.traces_url, timeout=0.5)
    otlp_receiver.hang(10.0)
    started = time.monotonic()
    try:
        assert exporter.export(spans) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 3.0  # the exporter's timeout, not the 10 s hang
    assert otlp_receiver.requests[0].mode == "hang"
    assert otlp_receiver.spans == []

    stopped = time.monotonic()
    otlp_receiver.stop()  # releases the held request instead of waiting 10 s
    assert time.monotonic() - stopped < 2.0


def test_stop_refuses_connections_and_start_listens_again_on_the_same_port(
    otlp_receiver: OtlpReceiver, exporter: OTLPSpanExporter, spans: Sequence[ReadableSpan]
) -> None:
    assert exporter.export(spans) is SpanExportResult.SUCCESS  # opens a keep-alive connection
    port = otlp_receiver.port

    otlp_receiver.stop()
    assert not otlp_receiver.running
    started = time.monotonic()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 3.0
    assert len(otlp_receiver.spans) == 3  # the keep-alive connection died with the receiver

    otlp_receiver.start()
    assert otlp_receiver.port == port
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(otlp_receiver.spans) == 6


def test_wait_for_spans_times_out_naming_what_arrived(
    otlp_receiver: OtlpReceiver, exporter: OTLPSpanExporter, spans: Sequence[ReadableSpan]
) -> None:
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    with pytest.raises(TimeoutError, match="exec uname"):
        otlp_receiver.wait_for_spans(lambda s: s.name == "invoke_agent nope", timeout=0.2)


async def test_wait_for_spans_async_does_not_block_the_event_loop(
    otlp_receiver: OtlpReceiver, exporter: OTLPSpanExporter, spans: Sequence[ReadableSpan]
) -> None:
    import asyncio

    waiting = asyncio.ensure_future(
        otlp_receiver.wait_for_spans_async(lambda s: s.name == "exec df", timeout=5.0)
    )
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
    (span,) = await waiting
    assert span.status_code is StatusCode.ERROR


def test_fault_settings_are_validated(otlp_receiver: OtlpReceiver) -> None:
    with pytest.raises(ValueError, match="hang seconds"):
        otlp_receiver.hang(MAX_HANG + 1)
    with pytest.raises(ValueError, match="error status"):
        otlp_receiver.fail(200)
    with pytest.raises(ValueError, match="unknown mode"):
        otlp_receiver.set_mode("slow")  # type: ignore[arg-type]
    assert otlp_receiver.mode == "ok"
