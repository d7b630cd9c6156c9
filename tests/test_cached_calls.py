"""A cached call: answered from memory without running anything under its span, still one span
and one record; its key follows the agent's code."""

from __future__ import annotations

from opentelemetry import trace

from .conftest import AgentWriter, RuntimeFactory, TelemetryFixture

SPAN_ID_AGENT = """
from opentelemetry import trace
DESCRIPTION = "reports the span it runs under"
{kw}def run(q):
    return format(trace.get_current_span().get_span_context().span_id, "016x")
"""


async def test_a_miss_runs_under_its_span_and_a_hit_answers_without_running(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("sync_agent", SPAN_ID_AGENT.format(kw=""))
    write_agent("async_agent", SPAN_ID_AGENT.format(kw="async "))
    runtime = make_runtime()
    tracer = telemetry.tracer_provider.get_tracer("test")
    for name in ("sync_agent", "async_agent"):
        telemetry.spans.clear()
        with tracer.start_as_current_span("request") as request:
            miss = await runtime.run(name, "q")
            assert trace.get_current_span() is request
            hit = await runtime.run(name, "q")
            assert trace.get_current_span() is request
        miss_span, hit_span, _ = telemetry.finished()
        assert miss.output == format(miss_span.context.span_id, "016x")
        assert (hit.output, hit.cached, miss.cached) == (miss.output, True, False)
        assert (miss_span.attributes["sel.cache.hit"], hit_span.attributes["sel.cache.hit"]) == (
            False,
            True,
        )
        assert hit_span.parent.span_id == request.get_span_context().span_id
        [record] = [
            p for p in telemetry.points("gen_ai.client.operation.duration")
            if p.attributes["gen_ai.agent.name"] == name and p.attributes["sel.cache.hit"]
        ]  # fmt: skip
        assert record.count == 1


async def test_keys_remembered_for_an_input_follow_the_agents_new_version(
    make_runtime: RuntimeFactory, write_agent: AgentWriter
) -> None:
    write_agent("versioned", "DESCRIPTION = 'v'\ndef run(q):\n    return 'one'\n")
    runtime = make_runtime()
    assert (await runtime.run("versioned", "q")).output == "one"
    assert (await runtime.run("versioned", "q")).cached
    write_agent("versioned", "DESCRIPTION = 'v'\ndef run(q):\n    return 'two'\n")
    await runtime.reload()
    result = await runtime.run("versioned", "q")
    assert (result.output, result.cached) == ("two", False)
