"""History entries as OpenTelemetry log records: exported over OTLP to a real receiver, each
with the trace and span ids of its call's span, and only when OTEL_LOGS_EXPORTER asks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from sel_otel import ConfigError
from sel_otel._history import History
from sel_otel._history_logs import LogRecordSink, log_sink_from_env
from tests.otlp_receiver import OtlpReceiver
from tests.test_history import record

RESOURCE = Resource.create({"service.name": "history-test", "service.instance.id": "i-1"})


@pytest.fixture
def exporting_to(
    otlp_receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The variables that send logs to the receiver (the SDK exporter reads the endpoint from
    the process environment)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    yield {"OTEL_LOGS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url}


async def test_log_records_arrive_with_the_trace_ids_of_their_spans(
    otlp_receiver: OtlpReceiver, exporting_to: dict[str, str]
) -> None:
    sink = log_sink_from_env(exporting_to, RESOURCE)
    assert isinstance(sink, LogRecordSink)
    tracer_provider = TracerProvider(resource=RESOURCE)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_receiver.traces_url))
    )
    tracer = tracer_provider.get_tracer("test")
    history = History([sink], instance="i-1")
    history.open()

    ok = tracer.start_span("invoke_agent calc")
    record(history, 1, agent="calc", span=ok, attributes={"sel.cache.hit": True})
    ok.end()
    failed = tracer.start_span("invoke_agent clock")
    record(history, 2, agent="clock", span=failed, attributes={"error.type": "timeout"})
    failed.end()
    refused = tracer.start_span("discord.command /sel_agent")
    history.record_refusal("host_exec", "rm -rf /", "666", "discord", "forbidden", refused)
    refused.end()
    await history.aclose()
    tracer_provider.shutdown()

    spans = {span.name: span for span in otlp_receiver.wait_for_spans(count=3)}
    logs = {
        log.attributes["gen_ai.agent.name"]: log for log in otlp_receiver.wait_for_logs(count=3)
    }
    for agent, span_name in [
        ("calc", "invoke_agent calc"),
        ("clock", "invoke_agent clock"),
        ("host_exec", "discord.command /sel_agent"),
    ]:
        log, span = logs[agent], spans[span_name]
        assert (log.trace_id, log.span_id) == (span.trace_id, span.span_id)
        assert log.event_name == "sel.agent.execution"
        assert log.resource["service.instance.id"] == "i-1"
    assert logs["calc"].attributes["sel.outcome"] == "ok"
    assert logs["calc"].attributes["sel.cache.hit"] is True
    assert logs["calc"].severity_text == "INFO"
    assert logs["clock"].attributes["error.type"] == "timeout"
    assert logs["clock"].severity_text == "WARN"
    refusal = logs["host_exec"]
    assert refusal.attributes["sel.outcome"] == "refused"
    assert refusal.attributes["sel.user.id"] == "666"
    assert refusal.attributes["sel.frontend"] == "discord"
    assert refusal.body == "host_exec refused: forbidden by 666 (discord)"


async def test_an_untraced_entry_is_a_record_without_trace_context(
    otlp_receiver: OtlpReceiver, exporting_to: dict[str, str]
) -> None:
    sink = log_sink_from_env(exporting_to, RESOURCE)
    assert sink is not None
    history = History([sink], instance="i-1")
    history.open()
    record(history, 1)  # trace.INVALID_SPAN
    await history.aclose()
    (log,) = otlp_receiver.wait_for_logs()
    assert (log.trace_id, log.span_id) == ("", "")
    assert log.attributes["sel.agent.input"] == "input 1"


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},  # traces and metrics only
        {"OTEL_LOGS_EXPORTER": "none"},
        {"OTEL_LOGS_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_no_records_unless_a_logs_exporter_is_asked_for(env: dict[str, str]) -> None:
    assert log_sink_from_env(env, RESOURCE) is None


def test_an_unknown_logs_exporter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OTEL_LOGS_EXPORTER"):
        log_sink_from_env({"OTEL_LOGS_EXPORTER": "loki"}, RESOURCE)


def test_the_console_exporter_writes_records_to_standard_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = log_sink_from_env({"OTEL_LOGS_EXPORTER": "console"}, RESOURCE)
    assert sink is not None
    history = History([sink], instance="i-1")
    history.open()
    record(history, 1, agent="calc")
    history.close()
    captured = capsys.readouterr()
    assert "sel.agent.execution" in captured.err and "calc ok" in captured.err
    assert captured.out == ""
