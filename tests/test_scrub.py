"""Spans are scrubbed where they leave the process, whoever set their values."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from sel_otel import Telemetry
from sel_otel._otlp_spans import SpanEncoder
from sel_otel._redact import REDACTED
from sel_otel._scrub import ScrubbingSpanExporter

from .otlp_receiver import OtlpReceiver
from .secrets_corpus import URLSAFE, aws_secret_key, fake

TOKEN = "ghp_" + fake(URLSAFE[:62], 36, "scrub test")
WEBHOOK = "https://discord.com/api/webhooks/123456789012345678/" + fake(URLSAFE, 68, "hook")
TELEGRAM = "123456789:AA" + fake(URLSAFE, 33, "scrub telegram")


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exported: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A provider whose spans leave through the scrubbing exporter."""
    provider = TracerProvider(span_limits=SpanLimits(max_attributes=8))
    provider.add_span_processor(SimpleSpanProcessor(ScrubbingSpanExporter(exported)))
    yield provider
    provider.shutdown()


@pytest_asyncio.fixture
async def web_server() -> AsyncIterator[TestServer]:
    """Any HTTP server on loopback, for an instrumented client to call."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        yield server


def _only(exported: InMemorySpanExporter) -> ReadableSpan:
    [span] = exported.get_finished_spans()
    return span


def _scrubbed(span: ReadableSpan) -> list[str]:
    """The span's `sel.scrubbed` entries, "{where}: {rule}" for each value scrubbed."""
    assert span.attributes is not None
    scrubbed = span.attributes["sel.scrubbed"]
    assert isinstance(scrubbed, tuple)
    return [str(entry) for entry in scrubbed]


async def _instrumented_get(url: str, provider: TracerProvider) -> None:
    async with httpx.AsyncClient() as client:
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
        assert (await client.get(url)).status_code == 200


async def test_a_url_recorded_by_the_httpx_instrumentation_is_scrubbed_with_the_rule(
    provider: TracerProvider, exported: InMemorySpanExporter, web_server: TestServer
) -> None:
    url = str(web_server.make_url(f"/items?access_token={TOKEN}&page=2"))
    await _instrumented_get(url, provider)
    span = _only(exported)
    assert span.attributes is not None
    assert TOKEN not in str(span.attributes)
    assert any(f"access_token={REDACTED}&page=2" in str(v) for v in span.attributes.values())
    [scrubbed] = _scrubbed(span)
    assert scrubbed.endswith(": query_secret")  # the URL attribute and the rule


def test_status_and_exception_messages_of_any_span_are_scrubbed(
    provider: TracerProvider, exported: InMemorySpanExporter
) -> None:
    with provider.get_tracer("any.library").start_as_current_span(
        "work", record_exception=False, set_status_on_exception=False
    ) as live:
        live.set_status(Status(StatusCode.ERROR, f"posting to {WEBHOOK} failed"))
        live.record_exception(ValueError(f"Telegram refused {TELEGRAM}"))
    span = _only(exported)
    [event] = span.events
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == f"posting to {WEBHOOK.rsplit('/', 1)[0]}/{REDACTED} failed"
    assert event.attributes is not None
    assert TELEGRAM not in str(event.attributes["exception.message"])
    assert TELEGRAM not in str(event.attributes["exception.stacktrace"])
    assert event.attributes["exception.type"] == "ValueError"
    assert set(_scrubbed(span)) == {
        "status: discord_webhook",
        "exception event exception.message: telegram_bot_token",
        "exception event exception.stacktrace: telegram_bot_token",
    }


def test_names_arrays_and_links_are_scrubbed_and_counts_of_dropped_values_kept(
    provider: TracerProvider, exported: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("any.library")
    with tracer.start_as_current_span("linked") as other:
        pass
    key = aws_secret_key("scrub array")
    link = Link(other.get_span_context(), {"note": f"from {TELEGRAM}"})
    attributes = {f"n{i}": i for i in range(10)}  # over the limit of 8: 2 dropped
    with tracer.start_as_current_span(f"SELECT '{key}'", links=[link]) as live:
        live.set_attributes(attributes)
        live.set_attribute("args", ["grep", key, "/etc"])
    _, span = exported.get_finished_spans()
    assert span.name == f"SELECT '{REDACTED}'"
    assert span.attributes is not None
    assert span.attributes["args"] == ("grep", REDACTED, "/etc")
    assert span.links[0].attributes == {"note": f"from {REDACTED}"}
    assert span.dropped_attributes == 3  # the array pushed one more out
    assert span.dropped_links == 0


def test_a_span_with_nothing_to_scrub_is_passed_on_as_it_is() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    with provider.get_tracer("any.library").start_as_current_span("clean") as span:
        span.set_attributes({"url.full": "https://example.com/a?page=2", "max_tokens": 4096})
    [clean] = exported.get_finished_spans()
    assert ScrubbingSpanExporter(InMemorySpanExporter()).scrubbed(clean) is clean


def test_values_seen_clean_before_do_not_let_a_new_secret_through() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("any.library")
    clean: dict[str, AttributeValue] = {
        "url.full": "https://example.com/a", "ok": True, "args": ("ls", "-l")
    }  # fmt: skip
    secrets: list[dict[str, AttributeValue]] = [
        {**clean, "note": f"token {TOKEN}"}, {**clean, "args": ("ls", f"token {TOKEN}")}
    ]  # fmt: skip
    for attributes in (clean, clean, *secrets):
        tracer.start_span("call", attributes=attributes).end()
    first, second, *scrubbed = exported.get_finished_spans()
    scrubber = ScrubbingSpanExporter(InMemorySpanExporter())
    assert scrubber.scrubbed(first) is first
    assert scrubber.scrubbed(second) is second  # from what it remembers
    for span, where in zip(scrubbed, ("note", "args"), strict=True):
        copy = scrubber.scrubbed(span)
        assert copy.attributes is not None
        assert TOKEN not in str(copy.attributes)
        assert _scrubbed(copy) == [f"{where}: auth_scheme"]


class Text(str):
    """A subclass of str, as some libraries hand out (enum members, markup strings)."""


class Disguised(str):
    """A subclass of str whose str() is not what it holds (what an exporter writes)."""

    def __str__(self) -> str:
        return "nothing here"


SECRET = "password=hunter2secret"


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (Text(SECRET), "note"),
        (Disguised(SECRET), "note"),
        (SECRET.encode(), "note"),
        ((Text("ok"), Text(SECRET)), "note"),
        (("ok", (SECRET,)), "note"),
        ({"inner": SECRET, "n": 1}, "note.inner"),
        ({"inner": (b"ok", b"\xff" + SECRET.encode())}, "note.inner"),
    ],
    ids=["str subclass", "str() not its text", "bytes", "array of subclasses", "nested array",
         "mapping", "bytes in a mapping"],
)  # fmt: skip
@pytest.mark.parametrize("seen", [False, True], ids=["first", "after a clean span"])
def test_strings_in_any_form_are_scrubbed_before_they_are_encoded(
    value: AttributeValue, where: str, seen: bool
) -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("any.library")
    tracer.start_span("call", attributes={"note": "ok", "n": 1}).end()
    tracer.start_span("call", attributes={"note": value, "n": 1}).end()
    clean, dirty = exported.get_finished_spans()
    scrubber = ScrubbingSpanExporter(InMemorySpanExporter())
    if seen:
        assert scrubber.scrubbed(clean) is clean
    span = scrubber.scrubbed(dirty)
    assert span is not dirty
    assert _scrubbed(span) == [f"{where}: secret_key_value"]
    assert b"hunter2secret" not in SpanEncoder().encode([span])
    assert b"password=[REDACTED]" in SpanEncoder().encode([span])


def test_a_clean_str_subclass_is_passed_on_as_it_is() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    provider.get_tracer("any.library").start_span("call", attributes={"note": Text("ok")}).end()
    [span] = exported.get_finished_spans()
    assert ScrubbingSpanExporter(InMemorySpanExporter()).scrubbed(span) is span


def test_a_scrubbed_copy_keeps_the_counts_of_events_and_links_none_may_be_recorded() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_events=0, max_links=0))
    provider.add_span_processor(SimpleSpanProcessor(ScrubbingSpanExporter(exported)))
    tracer = provider.get_tracer("any.library")
    with tracer.start_as_current_span("linked") as linked:
        pass
    link = Link(linked.get_span_context())
    with tracer.start_as_current_span("call", links=[link]) as live:
        live.set_attribute("note", SECRET)
        live.add_event("one")
        live.add_event("two")
    _, span = exported.get_finished_spans()
    assert _scrubbed(span) == ["note: secret_key_value"]
    assert (span.dropped_events, span.dropped_links) == (2, 1)
    written = SpanEncoder().encode([span])
    assert written == encode_spans([span]).SerializePartialToString()


@pytest.mark.parametrize(
    ("scope", "attribute", "scrubbed"),
    [
        ("sel_otel", "sel.agent.input", False),  # scrubbed, then cut, by the runtime
        ("sel_otel.hostexec", "process.command_args", False),  # scrubbed argument-wise
        ("sel_otel", "process.command_args", True),
        ("any.library", "sel.agent.input", True),
        ("sel_otel", "sel.frontend", True),
    ],
)
def test_only_what_our_scopes_scrubbed_at_the_source_is_not_scrubbed_again(
    provider: TracerProvider,
    exported: InMemorySpanExporter,
    scope: str,
    attribute: str,
    scrubbed: bool,
) -> None:
    with provider.get_tracer(scope).start_as_current_span("call") as span:
        span.set_attribute(attribute, f"password=x {TOKEN}")
    attributes = _only(exported).attributes
    assert attributes is not None
    assert (TOKEN not in str(attributes[attribute])) is scrubbed


@pytest.fixture
def otel_env(clean_otel_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean OTEL_* environment with fast batching."""
    clean_otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    return clean_otel_env


async def test_spans_exported_over_otlp_by_the_process_telemetry_are_scrubbed(
    otel_env: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver, web_server: TestServer
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    telemetry = Telemetry.from_env()
    try:
        url = str(web_server.make_url(f"/hook?api_key={TOKEN}"))
        await _instrumented_get(url, telemetry.tracer_provider)
        [span] = otlp_receiver.wait_for_spans(lambda s: "sel.scrubbed" in s.attributes)
    finally:
        telemetry.shutdown()
    assert TOKEN not in str(span.attributes)
    assert any(f"api_key={REDACTED}" in str(value) for value in span.attributes.values())
