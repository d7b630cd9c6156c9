"""Spans: the request continues the caller's trace, each command is a child `exec` span."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.instrumentation._semconv import (
    _OpenTelemetrySemanticConventionStability as Stability,
)
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sel_otel import Telemetry
from sel_otel._metric_data import metrics
from sel_otel._redact import scrub_argv
from sel_otel.hostexec import HostExecSettings, create_app

TOKEN = "tracing-test-token-0123456789"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest_asyncio.fixture
async def client(
    test_allowlist: Path, exporter: InMemorySpanExporter
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = HostExecSettings(token=TOKEN, allowlist=test_allowlist, host="127.0.0.1")
    app = create_app(settings, tracer_provider=provider)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client
    provider.shutdown()


async def _post(client: TestClient[web.Request, web.Application], command: str) -> int:
    response = await client.post(
        "/exec",
        json={"command": command},
        headers={"Authorization": f"Bearer {TOKEN}", "traceparent": TRACEPARENT},
    )
    await response.read()
    return response.status


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


async def test_request_span_continues_the_callers_trace(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> None:
    assert await _post(client, "uname -a") == 200
    spans = _by_name(exporter)
    server = spans["POST /exec"]
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.parent.is_remote
    assert server.attributes is not None
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/exec"
    assert server.attributes["http.response.status_code"] == 200


async def test_a_request_without_the_token_joins_no_callers_trace(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> None:
    response = await client.post(
        "/exec",
        json={"command": "uname -a"},
        headers={"Authorization": "Bearer not-the-token", "traceparent": TRACEPARENT},
    )
    assert response.status == 401
    server = _by_name(exporter)["POST /exec"]
    assert format(server.context.trace_id, "032x") != TRACE_ID
    assert server.parent is None


async def test_command_is_a_child_exec_span_with_exit_code_and_duration(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> None:
    assert await _post(client, "uname -a") == 200
    spans = _by_name(exporter)
    server, command = spans["POST /exec"], spans["exec uname"]
    assert command.kind is SpanKind.INTERNAL
    assert command.context.trace_id == server.context.trace_id
    assert command.parent is not None
    assert command.parent.span_id == server.context.span_id
    assert command.attributes is not None
    assert command.attributes["process.command"] == "uname"
    assert command.attributes["process.command_args"] == ("uname", "-a")
    assert command.attributes["process.exit.code"] == 0
    assert command.attributes["sel.exec.timed_out"] is False
    assert command.attributes["sel.exec.truncated"] is False
    duration = command.attributes["sel.exec.duration_ms"]
    assert isinstance(duration, float)
    span_ns = (command.end_time or 0) - (command.start_time or 0)
    assert 0 < duration * 1_000_000 <= span_ns
    assert command.status.status_code is StatusCode.UNSET


async def test_timed_out_command_marks_both_spans_as_errors(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> None:
    assert await _post(client, "sleep 30") == 504
    spans = _by_name(exporter)
    server, command = spans["POST /exec"], spans["exec sleep"]
    assert command.status.status_code is StatusCode.ERROR
    assert command.attributes is not None
    assert command.attributes["error.type"] == "timeout"
    assert command.attributes["sel.exec.timed_out"] is True
    assert command.attributes["process.exit.code"] == -9
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 504


async def test_refused_command_has_no_exec_span_and_a_refusal_reason(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> None:
    assert await _post(client, "uname -a; id") == 403
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["POST /exec"]
    assert spans[0].attributes is not None
    assert spans[0].attributes["sel.exec.refusal"] == "shell_syntax"
    assert spans[0].status.status_code is StatusCode.UNSET


async def test_request_without_traceparent_starts_a_new_trace(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> None:
    response = await client.post("/exec", json={"command": "uname -a"})  # /healthz: no span
    assert response.status == 401
    (server,) = exporter.get_finished_spans()
    assert server.name == "POST /exec"
    assert server.parent is None
    assert format(server.context.trace_id, "032x") != TRACE_ID


async def test_unknown_path_keeps_the_span_name_low_cardinality(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> None:
    response = await client.get("/no/such/path/12345")
    assert response.status == 404
    (server,) = exporter.get_finished_spans()
    assert server.name == "GET"
    assert server.attributes is not None
    assert "http.route" not in server.attributes
    assert server.attributes["http.response.status_code"] == 404


async def test_long_request_path_is_capped_on_the_span(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> None:
    response = await client.get("/" + "A" * 5000)
    assert response.status == 404
    (server,) = exporter.get_finished_spans()
    assert server.name == "GET"
    assert server.attributes is not None
    assert server.attributes["url.path"] == "/" + "A" * 255


async def test_every_command_is_logged_with_its_argv_even_when_its_trace_is_not_sampled(
    client: TestClient[web.Request, web.Application],
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sel_otel.hostexec")
    response = await client.post(
        "/exec",
        json={"command": "uname   -a"},
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00",
        },
    )
    assert response.status == 200
    assert exporter.get_finished_spans() == ()  # the caller chose not to sample
    (audit,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("exec (")]
    assert audit.startswith("exec ('uname', '-a') timeout=15s from 127.0.0.1 ")
    assert audit.endswith(f"trace_id={TRACE_ID}")


@pytest.mark.parametrize(
    ("argv", "recorded"),
    [
        (["app", "--token", "abc123"], ["app", "--token", "[REDACTED]"]),
        (
            ["curl", "-u", "admin:s3cret", "https://x"],
            ["curl", "-u", "[REDACTED]", "https://x"],
        ),
        (["grep", "-rn", "--", "a b", "/var/log"], ["grep", "-rn", "--", "a b", "/var/log"]),
        (["prog", "--password", "a's3cr3t"], ["prog", "--password", "[REDACTED]"]),
        (["prog", 'Password="s3cr3t', "z"], ["prog", "Password=[REDACTED]", "z"]),
        (["grep", "password=", "/etc/app.conf"], ["grep", "password=", "/etc/app.conf"]),
    ],
)
def test_the_exec_span_records_the_argv_scrubbed_argument_by_argument_and_in_pairs(
    argv: list[str], recorded: list[str]
) -> None:
    assert scrub_argv(argv) == recorded


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """As in a new process: no OTEL_* settings, and the instrumentations' semantic-convention
    opt-in not yet read (it is read once per process); the opt-in is restored afterwards."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    saved = (Stability._initialized, Stability._OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING)
    Stability._initialized, Stability._OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING = False, {}
    yield monkeypatch
    Stability._initialized, Stability._OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING = saved


async def _traced_post(
    client: TestClient[web.Request, web.Application], exporter: InMemorySpanExporter
) -> tuple[ReadableSpan, ReadableSpan, set[str]]:
    """POST /exec with an httpx client traced by the instrumentation, as the host_exec agent
    sends it, after the start-up every sel-otel process makes; returns the client span, the
    service's span and the names of the instrumentation's metrics."""
    Telemetry.from_env().shutdown()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    async with httpx.AsyncClient() as http:
        HTTPXClientInstrumentor.instrument_client(
            http, tracer_provider=tracer_provider, meter_provider=MeterProvider([reader])
        )
        response = await http.post(
            str(client.make_url("/exec")),
            json={"command": "uname -a"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert response.status_code == 200
    spans = _by_name(exporter)
    names = {metric.name for metric in metrics(reader.get_metrics_data())}
    return spans["POST"], spans["POST /exec"], names


async def test_the_httpx_client_span_uses_the_stable_http_names_like_the_service(
    client: TestClient[web.Request, web.Application],
    exporter: InMemorySpanExporter,
    fresh_process: pytest.MonkeyPatch,
) -> None:
    environment = dict(os.environ)
    post, server, metric_names = await _traced_post(client, exporter)
    assert post.kind is SpanKind.CLIENT and post.attributes is not None
    assert post.attributes["http.request.method"] == "POST"
    assert post.attributes["url.full"] == str(client.make_url("/exec"))
    assert post.attributes["http.response.status_code"] == 200
    assert not {"http.method", "http.url", "http.status_code"} & set(post.attributes)
    # One trace, one vocabulary: the service's span is the client span's child and shares
    # its names.
    assert server.parent is not None and server.parent.span_id == post.context.span_id
    assert server.attributes is not None
    assert {"http.request.method", "http.response.status_code"} <= set(server.attributes)
    assert "http.client.request.duration" in metric_names  # in seconds
    assert "http.client.duration" not in metric_names  # the old one, in milliseconds
    assert dict(os.environ) == environment  # chosen without writing the environment


async def test_the_users_own_semantic_convention_choice_is_kept(
    client: TestClient[web.Request, web.Application],
    exporter: InMemorySpanExporter,
    fresh_process: pytest.MonkeyPatch,
) -> None:
    fresh_process.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http/dup")
    post, _, metric_names = await _traced_post(client, exporter)
    assert post.attributes is not None
    assert post.attributes["http.method"] == post.attributes["http.request.method"] == "POST"
    assert {"http.client.duration", "http.client.request.duration"} <= metric_names
