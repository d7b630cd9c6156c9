"""Readiness checks (`GET /healthz`): answered, and traced by no one, neither the launcher's
client nor the service, so that each start of the embedded service adds no trace."""

from __future__ import annotations

import httpx
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sel_otel.hostexec import HostExecSettings, create_app
from sel_otel.hostexec._local import LocalHostExec

from ..otlp_receiver import OtlpReceiver
from .conftest import post_exec

TOKEN = "readiness-test-token-0123456789"


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_the_service_answers_readiness_checks_without_a_span() -> None:
    provider, exporter = _provider()
    app = create_app(HostExecSettings(token=TOKEN), tracer_provider=provider)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for _ in range(3):
            response = await client.get("/healthz")
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        response = await client.post("/exec", json={"command": "uname"})  # no token
        assert response.status == 401
    assert [span.name for span in exporter.get_finished_spans()] == ["POST /exec"]
    provider.shutdown()


async def test_the_launchers_readiness_checks_make_no_client_span() -> None:
    provider, exporter = _provider()
    # Globally, as `opentelemetry-instrument` does: every httpx client of the process.
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        async with LocalHostExec() as service:
            assert exporter.get_finished_spans() == ()
            async with httpx.AsyncClient(trust_env=False) as client:  # the instrumentation works
                assert (await client.get(f"{service.url}/healthz")).status_code == 200
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    [span] = exporter.get_finished_spans()
    assert span.kind is SpanKind.CLIENT


async def test_a_start_of_the_embedded_service_adds_no_trace_to_the_backend(
    otlp_receiver: OtlpReceiver,
) -> None:
    otel = {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url,
    }
    async with LocalHostExec(settings=otel) as service:
        assert (await post_exec(service, {"command": "uname -a"})).status_code == 200
    # The service has exported its spans before it exited.
    spans = otlp_receiver.wait_for_spans(lambda span: span.name == "exec uname")
    assert sorted(span.name for span in otlp_receiver.spans) == ["POST /exec", "exec uname"]
    assert spans[0].resource["service.name"] == "sel-host-exec"
