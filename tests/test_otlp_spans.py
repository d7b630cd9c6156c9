"""The OTLP span encoding writes the request the SDK's encoder builds, for every kind of span."""

from __future__ import annotations

import gc
import socket
import threading
import tracemalloc
from collections.abc import Iterator

import pytest
import requests
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from sel_otel._otlp_exporter import EnvironmentOnceSession, FastOTLPSpanExporter
from sel_otel._otlp_spans import SpanEncoder
from sel_otel._span_fields import FIELDS_READABLE

from .conftest import free_port


@pytest.fixture
def finished() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "svc", "count": 3, "ratio": 0.5, "tags": ("a",)}),
        span_limits=SpanLimits(max_attributes=12, max_events=2, max_links=1),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def assert_encodes_as_the_sdk(spans: tuple[ReadableSpan, ...]) -> None:
    encoder = SpanEncoder()
    expected = encode_spans(spans)
    for _ in range(2):  # the second time from what the encoder remembers
        written = encoder.encode(spans)
        assert ExportTraceServiceRequest.FromString(written) == expected
        assert written == expected.SerializePartialToString()


def test_spans_of_every_shape_encode_as_the_sdk_encodes_them(
    finished: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = finished
    tracer = provider.get_tracer(
        "sel_otel", "1.0", schema_url="https://schema", attributes={"a": 1}
    )
    other = provider.get_tracer("other")
    values: dict[str, AttributeValue] = {
        "text": "é ✓", "empty": "", "yes": True, "no": False, "negative": -5, "zero": 0,
        "large": 2**62, "float": 0.25, "texts": ("x", ""), "ints": (1, -2), "bools": (True,),
        "floats": (1.5,), "none": (),
    }  # fmt: skip
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes=values) as root:
        root.add_event("event", {"key": "value"})
        root.add_event("", {})
        root.add_event("over the limit")
        root.set_attribute("over", "the limit")
        link = Link(root.get_span_context(), {"linked": 1})
        with other.start_as_current_span("child", kind=SpanKind.CLIENT, links=[link, link]) as c:
            c.set_status(Status(StatusCode.ERROR, "it failed"))
            c.record_exception(ValueError("bad"))
        remote = SpanContext(
            0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1),
            trace_state=TraceState([("vendor", "1"), ("other", "2")]),
        )  # fmt: skip
        tracer.start_span(
            "remote child", set_span_in_context(NonRecordingSpan(remote)), SpanKind.CONSUMER
        ).end()
        ok = tracer.start_span("ok", kind=SpanKind.PRODUCER)
        ok.set_status(Status(StatusCode.OK))
        ok.end()
        unnamed = tracer.start_span("")
        unnamed.set_status(Status(StatusCode.ERROR))
        unnamed.end()
    assert_encodes_as_the_sdk(exporter.get_finished_spans())


def test_spans_from_two_resources_are_grouped_as_the_sdk_groups_them(
    finished: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = finished
    second = TracerProvider(resource=Resource.create({"service.name": "second"}))
    second.add_span_processor(SimpleSpanProcessor(exporter))
    for name in ("a", "b"):
        provider.get_tracer("one").start_span(name).end()
        second.get_tracer("two").start_span(name).end()
        provider.get_tracer("three").start_span(name).end()
    assert_encodes_as_the_sdk(exporter.get_finished_spans())
    second.shutdown()


class RenamedSpan(ReadableSpan):
    """A span of another class, whose fields are read through its properties."""

    @property
    def name(self) -> str:
        return f"renamed {self._name}"


def test_a_span_of_another_class_encodes_through_its_properties(
    finished: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = finished
    with provider.get_tracer("t").start_as_current_span("a", attributes={"k": "v"}) as span:
        span.add_event("event", {"n": 1})
    [plain] = exporter.get_finished_spans()
    renamed = RenamedSpan(
        name=plain.name,
        context=plain.context,
        parent=plain.parent,
        resource=plain.resource,
        attributes=plain.attributes,
        events=plain.events,
        links=plain.links,
        kind=plain.kind,
        status=plain.status,
        start_time=plain.start_time,
        end_time=plain.end_time,
        instrumentation_scope=plain.instrumentation_scope,
    )
    assert_encodes_as_the_sdk((plain, renamed))
    assert (
        ExportTraceServiceRequest.FromString(SpanEncoder().encode([renamed]))
        .resource_spans[0]
        .scope_spans[0]
        .spans[0]
        .name
        == "renamed a"
    )


def test_the_installed_sdk_spans_are_read_where_it_keeps_their_fields() -> None:
    assert FIELDS_READABLE  # else every batch goes to the SDK's encoder, eight times slower


@pytest.mark.parametrize(
    "value", [2**64, "\udc80 not UTF-8"], ids=["int over 64 bits", "surrogate"]
)
def test_a_value_protobuf_cannot_hold_is_left_to_the_sdk(
    finished: tuple[TracerProvider, InMemorySpanExporter], value: object
) -> None:
    provider, exporter = finished
    provider.get_tracer("t").start_span("span", attributes={"odd": value, "k": "v"}).end()  # type: ignore[dict-item]
    [span] = exporter.get_finished_spans()
    assert SpanEncoder().encode([span]) == encode_spans([span]).SerializePartialToString()


def test_the_exporter_session_reads_the_environment_once_and_keeps_its_proxies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "local.example")
    exporter = FastOTLPSpanExporter(endpoint="http://collector.example:4318/v1/traces")
    session = exporter._client._transport._session  # type: ignore[attr-defined]
    assert isinstance(session, EnvironmentOnceSession)
    url = "http://collector.example:4318/v1/traces"
    first = session.merge_environment_settings(url, {}, None, True, None)
    assert first["proxies"]["http"] == "http://proxy.example:3128"
    first["proxies"].clear()  # a caller's change stays its own
    monkeypatch.setenv("HTTP_PROXY", "http://other.example:3128")
    again = session.merge_environment_settings(url, {}, None, True, None)
    assert again["proxies"]["http"] == "http://proxy.example:3128"
    bypassed = session.merge_environment_settings("http://local.example/", {}, None, True, None)
    assert "http" not in bypassed["proxies"]
    exporter.shutdown()  # type: ignore[no-untyped-call]


def test_the_exporter_session_tells_a_refused_connection_not_a_broken_one() -> None:
    told: list[str] = []
    session = EnvironmentOnceSession()
    session.on_connection_error = lambda: told.append("cannot connect")
    with pytest.raises(requests.ConnectionError):
        session.post(f"http://127.0.0.1:{free_port()}/v1/traces", data=b"x", timeout=10)
    assert told == ["cannot connect"]
    # A connection that opens, then breaks (a stale pooled one): the SDK retries it at once.
    with socket.create_server(("127.0.0.1", 0)) as server:
        closer = threading.Thread(target=lambda: server.accept()[0].close(), daemon=True)
        closer.start()
        with pytest.raises(requests.ConnectionError):
            session.post(f"http://127.0.0.1:{server.getsockname()[1]}/", data=b"x", timeout=10)
        closer.join(10)
    assert told == ["cannot connect"]
    session.close()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"service.name": "svc", "host.name": "h"}, {"service.name": "svc", "host.name": "h"}),
        ({"service.name": "svc", "host.name": "h"}, {"host.name": "h", "service.name": "svc"}),
        ({"service.name": "svc", "flag": 1}, {"service.name": "svc", "flag": True}),
    ],
    ids=["equal", "equal in another order", "equal with another hash"],
)
def test_spans_of_equal_resource_objects_are_grouped_as_the_sdk_groups_them(
    first: dict[str, AttributeValue], second: dict[str, AttributeValue]
) -> None:
    exporter = InMemorySpanExporter()
    providers = [TracerProvider(resource=Resource(attributes)) for attributes in (first, second)]
    for provider in providers:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    for name in ("a", "b"):
        for provider in providers:
            provider.get_tracer("t").start_span(name).end()
    spans = exporter.get_finished_spans()
    assert spans[0].resource is not spans[1].resource
    assert_encodes_as_the_sdk(spans)
    for provider in providers:
        provider.shutdown()


@pytest.mark.parametrize("how", ["span limits", "environment"])
def test_counts_of_dropped_events_and_links_are_kept_when_none_may_be_recorded(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "environment":
        monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "0")
        monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "0")
        limits = SpanLimits()
    else:
        limits = SpanLimits(max_events=0, max_links=0)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("linked") as linked:
        pass
    link = Link(linked.get_span_context())
    with tracer.start_as_current_span("events", links=[link, link]) as span:
        span.add_event("one")
        span.record_exception(ValueError("two"))
    tracer.start_span("links only", links=[link]).end()
    spans = exporter.get_finished_spans()
    assert [(s.dropped_events, s.dropped_links) for s in spans] == [(0, 0), (2, 2), (0, 1)]
    assert_encodes_as_the_sdk(spans)
    provider.shutdown()


@pytest.mark.parametrize("size", [4096, 1000], ids=["longer than remembered", "remembered"])
def test_the_memory_the_encoder_keeps_stays_bounded_whatever_the_values(
    finished: tuple[TracerProvider, InMemorySpanExporter], size: int
) -> None:
    """Distinct values (stack traces, inputs) in span, event and link attributes and span
    names: what the encoder keeps between batches stays within a few MB."""
    provider, exporter = finished
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("linked") as linked:
        pass
    encoder = SpanEncoder()
    tracemalloc.start()
    try:
        for batch in range(40):
            for i in range(100):
                value = f"{batch:04d} {i:04d} ".ljust(size, "x")
                link = Link(linked.get_span_context(), {"note": value})
                with tracer.start_as_current_span(value, links=[link]) as span:
                    span.set_attribute("input", value)
                    span.add_event("exception", {"exception.stacktrace": value})
                    span.add_event("exception", {"exception.stacktrace": value + "y"})
            spans = exporter.get_finished_spans()
            exporter.clear()
            written = encoder.encode(spans)
            assert ExportTraceServiceRequest.FromString(written) == encode_spans(spans)
        del spans
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0]  # allocated since it started, and still held
    finally:
        tracemalloc.stop()
    # 40 batches of 100 spans with 5 distinct values each: 20 to 80 MB of them.
    assert kept < 8 * 2**20
