"""The collector's trace debug log, read back as spans (`parse_trace_log`): what the load
stack's trace test relies on, checked here without Docker on a log in rotel's format."""

from __future__ import annotations

from sel_otel._loadtest_stack import ReceivedSpan, parse_trace_log

LOG = """\
\x1b[2m2026-11-26T09:35:03Z\x1b[0m \x1b[32m INFO\x1b[0m Starting Rotel. grpc_endpoint="0.0.0.0:4317"
ResourceSpans #0
Resource SchemaURL:
Resource attributes:
     -> service.instance.id: Str(sel-0)
     -> service.name: Str(sel-bot)
     -> service.version: Str(0.1.0)
ScopeSpans #0
ScopeSpans SchemaURL:
InstrumentationScope sel_otel 0.1.0
Span #0
    Trace ID       : 09f3c1568a9fe19cedc4764c05e4d24e
    Parent ID      : cf0c0efa5b4e2dca
    ID             : 993bd477c320df21
    Name           : invoke_agent host_exec
    Kind           : SPAN_KIND_INTERNAL
Start time: 1795685712339733031
End time: 1795685712342389152
    Status code    : STATUS_CODE_UNSET
    Status message :
Attributes:
     -> service.name: Str(not the resource)
     -> server.port: Int(6379)
Events:
SpanEvent #0
     -> Name: exception
Span #1
    Trace ID       : 09f3c1568a9fe19cedc4764c05e4d24e
    Parent ID      :
    ID             : cf0c0efa5b4e2dca
    Name           : serve agent
    Kind           : SPAN_KIND_INTERNAL
ResourceSpans #0
Resource SchemaURL:
Resource attributes:
     -> telemetry.sdk.language: Str(python)
     -> service.name: Str(sel-host-exec)
ScopeSpans #0
InstrumentationScope sel_otel.hostexec 0.1.0
Span #0
    Trace ID       : 09f3c1568a9fe19cedc4764c05e4d24e
    Parent ID      : f4cde9c5074be652
    ID             : 02ea02e969ede45c
    Name           : POST /exec
    Kind           : SPAN_KIND_SERVER
Attributes:
     -> http.route: Str(/exec)
"""

BOT = {"service.instance.id": "sel-0", "service.name": "sel-bot", "service.version": "0.1.0"}
TRACE = "09f3c1568a9fe19cedc4764c05e4d24e"


def test_each_span_is_read_with_its_ids_kind_and_its_own_resource() -> None:
    assert parse_trace_log(LOG) == [
        ReceivedSpan(
            TRACE,
            "993bd477c320df21",
            "cf0c0efa5b4e2dca",
            "invoke_agent host_exec",
            "SPAN_KIND_INTERNAL",
            BOT,
        ),
        ReceivedSpan(TRACE, "cf0c0efa5b4e2dca", "", "serve agent", "SPAN_KIND_INTERNAL", BOT),
        ReceivedSpan(
            TRACE,
            "02ea02e969ede45c",
            "f4cde9c5074be652",
            "POST /exec",
            "SPAN_KIND_SERVER",
            {"telemetry.sdk.language": "python", "service.name": "sel-host-exec"},
        ),
    ]


def test_a_span_cut_short_by_the_end_of_the_log_is_left_out() -> None:
    cut = LOG[: LOG.index("    Kind           : SPAN_KIND_SERVER")]
    assert [span.name for span in parse_trace_log(cut)] == [
        "invoke_agent host_exec",
        "serve agent",
    ]
    assert parse_trace_log("") == []
