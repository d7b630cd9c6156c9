"""The test OTLP receiver decodes what the real SDK exporters send, and its faults are real."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
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

from tests.otlp_receiver import OtlpReceiver, attributes

# The `otlp_receiver` fixture comes from tests.otlp_receiver, registered in tests/conftest.py.

RESOURCE = Resource.create({"service.name": "sel-bot-test"})
NAMES = {"invoke_agent sysinfo", "exec uname", "exec df"}


@pytest.fixture
def spans() -> Sequence[ReadableSpan]:
    """Finished SDK spans (parent, client child, failed child), captured in memory."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("sel_otel")
    with tracer.start_as_current_span("invoke_agent sysinfo"):
        with tracer.start_as_current_span("exec uname", kind=SpanKind.CLIENT):
            pass
        with tracer.start_as_current_span("exec df") as failed:
            failed.set_status(Status(StatusCode.ERROR, "disk on fire"))
    provider.shutdown()
    return memory.get_finished_spans()


@pytest.fixture
def exporter(otlp_receiver: OtlpReceiver) -> Iterator[OTLPSpanExporter]:
    """An http/protobuf span exporter aimed at the receiver, with a short timeout."""
    exporter = OTLPSpanExporter(endpoint=otlp_receiver.traces_url, timeout=1.0)
    yield exporter
    exporter.shutdown()  # type: ignore[no-untyped-call]  # unannotated in the OTLP exporter


def _post(url: str, body: bytes, timeout: float = 10.0) -> int:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/x-protobuf"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_spans_from_a_batch_span_processor_are_decoded_with_parentage_and_types(
    otlp_receiver: OtlpReceiver,
) -> None:
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(otlp_receiver.traces_url)))
    tracer = provider.get_tracer("sel_otel")
    with tracer.start_as_current_span("invoke_agent sysinfo") as parent:
        parent.set_attributes({"sel.cache.hit": True, "sel.retries": 2, "sel.tags": ["a", "b"]})
        with tracer.start_as_current_span("exec uname", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.ERROR, "no such program"))
    provider.shutdown()

    received = {s.name: s for s in otlp_receiver.wait_for_spans(count=2)}
    root, leaf = received["invoke_agent sysinfo"], received["exec uname"]
    assert root.trace_id == format(parent.get_span_context().trace_id, "032x")
    assert (root.parent_span_id, leaf.parent_span_id) == ("", root.span_id)
    assert leaf.trace_id == root.trace_id and len(root.span_id) == 16
    assert (root.kind, leaf.kind) == (SpanKind.INTERNAL, SpanKind.CLIENT)
    assert (root.status_code, leaf.status_code) == (StatusCode.UNSET, StatusCode.ERROR)
    assert root.attributes == {"sel.cache.hit": True, "sel.retries": 2, "sel.tags": ("a", "b")}
    assert root.resource["service.name"] == "sel-bot-test"


def test_a_histogram_from_a_periodic_metric_reader_arrives_as_its_otlp_metric(
    otlp_receiver: OtlpReceiver,
) -> None:
    exporter = OTLPMetricExporter(endpoint=otlp_receiver.metrics_url)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    histogram = provider.get_meter("sel_otel").create_histogram(
        "gen_ai.client.operation.duration", unit="s", explicit_bucket_boundaries_advisory=[0.01]
    )
    for seconds in (0.002, 0.05):
        histogram.record(seconds, {"sel.cache.hit": False})
    histogram.record(0.001, {"sel.cache.hit": True})
    provider.shutdown()

    (metric,) = otlp_receiver.wait_for_metrics(lambda m: m.name.startswith("gen_ai."))
    assert metric.unit == "s"
    points = {attributes(p.attributes)["sel.cache.hit"]: p for p in metric.histogram.data_points}
    assert (points[False].count, points[True].count) == (2, 1)
    assert points[False].sum == pytest.approx(0.052)
    assert list(points[False].bucket_counts) == [1, 1]


def test_unknown_paths_and_undecodable_bodies_are_refused_and_logged(
    otlp_receiver: OtlpReceiver,
) -> None:
    assert _post(otlp_receiver.url + "/v1/profiles", b"") == 404
    assert _post(otlp_receiver.traces_url, b"\xff\xff\xff") == 400
    assert otlp_receiver.spans == []
    assert otlp_receiver.requests == [("/v1/profiles", 404), ("/v1/traces", 400)]


@pytest.mark.parametrize("status", [503, 400])
def test_fail_answers_the_status_keeps_nothing_and_ok_recovers(
    otlp_receiver: OtlpReceiver,
    exporter: OTLPSpanExporter,
    spans: Sequence[ReadableSpan],
    status: int,
) -> None:
    otlp_receiver.fail(status)
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert otlp_receiver.spans == []
    assert {status for _, status in otlp_receiver.requests} == {status}

    otlp_receiver.ok()
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert {s.name for s in otlp_receiver.spans} == NAMES


def test_hang_holds_requests_until_stop_releases_them_with_503(
    otlp_receiver: OtlpReceiver,
) -> None:
    otlp_receiver.hang(60.0)
    with pytest.raises(TimeoutError):  # held: no answer within the client's own timeout
        _post(otlp_receiver.traces_url, b"", timeout=1.0)

    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(_post, otlp_receiver.traces_url, b"", 60.0)
        otlp_receiver.wait_for_requests(count=2)
        otlp_receiver.stop()
        assert held.result(timeout=30) == 503  # released, long before the 60 s hang ends
    assert otlp_receiver.spans == []


def test_stop_refuses_connections_and_start_listens_again_on_the_same_port(
    otlp_receiver: OtlpReceiver, exporter: OTLPSpanExporter, spans: Sequence[ReadableSpan]
) -> None:
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    port = otlp_receiver.port

    otlp_receiver.stop()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    with pytest.raises(urllib.error.URLError):
        _post(otlp_receiver.traces_url, b"")
    assert len(otlp_receiver.spans) == 3

    otlp_receiver.start()
    assert otlp_receiver.port == port
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(otlp_receiver.spans) == 6


def test_waiting_times_out_naming_what_arrived(
    otlp_receiver: OtlpReceiver, exporter: OTLPSpanExporter, spans: Sequence[ReadableSpan]
) -> None:
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    with pytest.raises(TimeoutError, match="exec uname"):
        otlp_receiver.wait_for_spans(lambda s: s.name == "invoke_agent nope", timeout=0.2)
