"""The runtime: one span and one histogram record per call, errors as results."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from sel_otel import (
    AgentBusy,
    AgentFailed,
    AgentNotFound,
    AgentOutputError,
    AgentResult,
    AgentTimeout,
)

from .conftest import AgentWriter, RuntimeFactory, TelemetryFixture
from .waiting import agent_globals, wait_until

DURATION = "gen_ai.client.operation.duration"

ECHO = """
DESCRIPTION = "Echoes its input"
def run(query):
    return "echo " + query
"""


async def test_a_call_is_one_invoke_agent_span_with_the_genai_attributes(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("echo", ECHO)
    result = await make_runtime().run("echo", "hi")
    assert (result.output, result.cached, result.ok) == ("echo hi", False, True)
    [span] = telemetry.finished()
    assert span.name == "invoke_agent echo"
    assert span.kind is SpanKind.INTERNAL
    assert span.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert span.attributes["gen_ai.agent.name"] == "echo"
    assert span.attributes["gen_ai.agent.description"] == "Echoes its input"
    assert span.attributes["sel.cache.hit"] is False
    assert span.attributes["sel.agent.duration_ms"] == pytest.approx(result.duration * 1000)
    assert span.status.status_code is StatusCode.UNSET
    assert "error.type" not in span.attributes


async def test_sampling_attributes_are_set_when_the_span_starts(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    from collections.abc import Sequence

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import Link
    from opentelemetry.trace.span import TraceState
    from opentelemetry.util.types import Attributes

    seen: list[dict[str, object]] = []

    class Recording(Sampler):
        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: TraceState | None = None,
        ) -> SamplingResult:
            seen.append(dict(attributes or {}))
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

        def get_description(self) -> str:
            return "recording"

    telemetry.tracer_provider.sampler = Recording()
    write_agent("echo", ECHO)
    await make_runtime().run("echo", "hi")
    assert seen == [
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "echo",
            "gen_ai.agent.description": "Echoes its input",
            "sel.agent.input": "hi",
        }
    ]


async def test_input_is_recorded_scrubbed_and_cut_and_can_be_turned_off(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("echo", ECHO)
    await make_runtime(trace_content_max=20).run("echo", "login password=hunter2 and more text")
    await make_runtime(trace_content=False).run("echo", "password=hunter2")
    captured, off = telemetry.finished()
    assert captured.attributes["sel.agent.input"] == "login password=[RED…"  # 20 characters
    assert "sel.agent.input" not in off.attributes
    assert all("hunter2" not in str(s.attributes) for s in telemetry.finished())
    assert all("sel.agent.output" not in s.attributes for s in telemetry.finished())


async def test_second_identical_call_is_a_cache_hit_span_and_metric(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("echo", ECHO)
    runtime = make_runtime()
    first, second = await runtime.run("echo", "hi"), await runtime.run("echo", "hi")
    assert (first.cached, second.cached, second.output) == (False, True, "echo hi")
    assert [s.attributes["sel.cache.hit"] for s in telemetry.finished()] == [False, True]
    counts = {p.attributes["sel.cache.hit"]: p.count for p in telemetry.points(DURATION)}
    assert counts == {False: 1, True: 1}


async def test_metric_attributes_never_carry_the_input(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("echo", ECHO)
    runtime = make_runtime()
    for i in range(20):
        await runtime.run("echo", f"secret-{i}")
    [point] = telemetry.points(DURATION)
    assert point.count == 20
    assert dict(point.attributes) == {
        "gen_ai.operation.name": "invoke_agent",  # required by the GenAI conventions
        "gen_ai.agent.name": "echo",
        "sel.cache.hit": False,
    }


@pytest.mark.parametrize("content", [True, False])
async def test_error_messages_on_spans_are_scrubbed_and_left_out_with_the_input(
    make_runtime: RuntimeFactory,
    write_agent: AgentWriter,
    telemetry: TelemetryFixture,
    content: bool,
) -> None:
    write_agent(
        "fetch", "DESCRIPTION = 'd'\ndef run(q):\n    raise ValueError(f'cannot fetch {q}')\n"
    )
    result = await make_runtime(trace_content=content).run("fetch", "curl -u admin:Hunter2 x")
    assert isinstance(result.error, AgentFailed)
    [span] = telemetry.finished()
    [event] = span.events
    recorded = [
        span.status.description or "",
        str(event.attributes["exception.message"]),
        str(event.attributes["exception.stacktrace"]),
    ]
    assert all("Hunter2" not in text for text in recorded), recorded
    assert ("[REDACTED]" in recorded[0]) is content  # else only the error type
    assert "raise ValueError" in recorded[2]  # the frames stay either way
    assert "admin" not in recorded[2]  # and no message of the chain
    assert event.attributes["exception.type"] == "sel_otel._exceptions.AgentFailed"


async def test_agent_exception_becomes_an_error_result_and_span(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("boom", 'DESCRIPTION = "d"\ndef run(q):\n    raise KeyError("missing")\n')
    runtime = make_runtime()
    result = await runtime.run("boom", "x")
    assert isinstance(result.error, AgentFailed)
    assert isinstance(result.error.original, KeyError)
    assert result.output is None and not result.ok
    [span] = telemetry.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "KeyError"
    assert [e.name for e in span.events] == ["exception"]
    [point] = telemetry.points(DURATION)
    assert point.attributes["error.type"] == "KeyError"
    assert (await runtime.run("boom", "x")).cached is False  # failures are not cached


async def test_hung_async_agent_times_out(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent(
        "hang",
        "import asyncio\nDESCRIPTION='d'\nTIMEOUT=0.05\n"
        "async def run(q):\n    await asyncio.sleep(60)\n",
    )
    result = await make_runtime().run("hang", "x")
    assert isinstance(result.error, AgentTimeout)
    assert "timed out after 0.05s" in str(result.error)
    [span] = telemetry.finished()
    assert span.attributes["error.type"] == "timeout"
    assert span.status.status_code is StatusCode.ERROR


async def test_hung_sync_agent_times_out_and_the_runtime_keeps_serving(
    make_runtime: RuntimeFactory, write_agent: AgentWriter
) -> None:
    write_agent(
        "hang",
        "import threading\nDESCRIPTION='d'\nTIMEOUT=0.05\nFINISH = threading.Event()\n"
        "def run(q):\n    FINISH.wait(60)\n    return q\n",
    )
    write_agent("echo", ECHO)  # the default timeout: time for a thread, whatever the load
    runtime = make_runtime()
    results = await asyncio.gather(*(runtime.run("hang", str(i)) for i in range(4)))
    assert all(isinstance(r.error, AgentTimeout) for r in results)
    assert (await runtime.run("echo", "still here")).output == "echo still here"
    agent_globals(runtime, "hang")["FINISH"].set()


async def test_agent_raising_timeout_error_itself_is_a_failure_not_a_timeout(
    make_runtime: RuntimeFactory, write_agent: AgentWriter
) -> None:
    write_agent("t", "DESCRIPTION='d'\ndef run(q):\n    raise TimeoutError('upstream')\n")
    result = await make_runtime().run("t", "x")
    assert isinstance(result.error, AgentFailed)
    assert result.error.error_type == "TimeoutError"


@pytest.mark.parametrize(
    ("body", "message"),
    [("return 42", "returned int, not str"), ("return 'x' * 2000", "2,000 characters")],
)
async def test_bad_outputs_are_clear_errors(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, body: str, message: str
) -> None:
    write_agent("bad", f"DESCRIPTION='d'\ndef run(q):\n    {body}\n")
    result = await make_runtime(agent_max_output=1000).run("bad", "x")
    assert isinstance(result.error, AgentOutputError)
    assert message in str(result.error)


async def test_unknown_agent_is_an_error_listing_known_agents_without_telemetry(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("echo", ECHO)
    result = await make_runtime().run("ehco", "x")
    assert isinstance(result.error, AgentNotFound)
    assert "Known agents: echo" in str(result.error)
    assert telemetry.finished() == [] and telemetry.points(DURATION) == []


async def test_cancellation_propagates_and_is_recorded(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent(
        "slow",
        "import asyncio\nDESCRIPTION='d'\nSTARTED = asyncio.Event()\n"
        "async def run(q):\n    STARTED.set()\n    await asyncio.sleep(10)\n",
    )
    runtime = make_runtime()
    task = asyncio.create_task(runtime.run("slow", "x"))
    await agent_globals(runtime, "slow")["STARTED"].wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [span] = telemetry.finished()
    assert span.attributes["error.type"] == "cancelled"
    [point] = telemetry.points(DURATION)
    assert point.attributes["error.type"] == "cancelled"


async def test_sync_and_async_agents_run_inside_their_span_context(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    inner = """
from opentelemetry import trace
DESCRIPTION = "d"
CACHEABLE = False
{kw}def run(q):
    return format(trace.get_current_span().get_span_context().span_id, "016x")
"""
    write_agent("sync_agent", inner.format(kw=""))
    write_agent("async_agent", inner.format(kw="async "))
    runtime = make_runtime()
    tracer = telemetry.tracer_provider.get_tracer("test")
    for name in ("sync_agent", "async_agent"):
        telemetry.spans.clear()
        with tracer.start_as_current_span("request") as request:
            result = await runtime.run(name, "q")
        [agent_span, _] = telemetry.finished()
        assert agent_span.parent.span_id == request.get_span_context().span_id
        assert result.output == format(agent_span.context.span_id, "016x")


async def test_coalesced_calls_are_marked_and_counted(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent(
        "slow",
        "import asyncio\nDESCRIPTION='d'\nasync def run(q):\n    await asyncio.sleep(0.05)\n"
        "    return q\n",
    )
    runtime = make_runtime()
    results = await asyncio.gather(*(runtime.run("slow", "q") for _ in range(10)))
    assert sum(r.coalesced for r in results) == 9
    assert sum(bool(s.attributes.get("sel.cache.coalesced")) for s in telemetry.finished()) == 9
    [point] = telemetry.points("sel.cache.coalesced_calls")
    assert point.value == 9


async def test_invalidating_input_clears_the_agents_cache(
    make_runtime: RuntimeFactory, write_agent: AgentWriter
) -> None:
    write_agent(
        "files",
        """
        DESCRIPTION = "d"
        INVALIDATED_BY = {"rm"}
        state = {"n": 0}
        def run(q):
            state["n"] += 1
            return f"{q} #{state['n']}"
        """,
    )
    runtime = make_runtime()
    assert (await runtime.run("files", "ls")).output == "ls #1"
    assert (await runtime.run("files", "ls")).cached
    assert (await runtime.run("files", "rm x")).output == "rm x #2"
    assert (await runtime.run("files", "rm x")).output == "rm x #3"  # never cached itself
    after = await runtime.run("files", "ls")
    assert (after.output, after.cached) == ("ls #4", False)


async def test_lru_bound_evictions_are_counted(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    from sel_otel import Settings
    from sel_otel._app import cache_from_settings

    cache = cache_from_settings(Settings(cache_max_entries=2), telemetry.meter_provider)
    write_agent("echo", ECHO)
    runtime = make_runtime()
    runtime.cache = cache
    for query in ("a", "b", "c", "d"):
        await runtime.run("echo", query)
    assert (await runtime.run("echo", "d")).cached
    assert not (await runtime.run("echo", "a")).cached
    [point] = telemetry.points("sel.cache.evictions")
    assert point.value == 3


async def test_per_user_cache_scope(make_runtime: RuntimeFactory, write_agent: AgentWriter) -> None:
    write_agent("mine", "DESCRIPTION='d'\nCACHE_PER_USER=True\ndef run(q):\n    return q\n")
    write_agent("shared", "DESCRIPTION='d'\ndef run(q):\n    return q\n")
    runtime = make_runtime()
    await runtime.run("mine", "q", user="1")
    await runtime.run("shared", "q", user="1")
    assert not (await runtime.run("mine", "q", user="2")).cached
    assert (await runtime.run("mine", "q", user="1")).cached
    assert (await runtime.run("shared", "q", user="2")).cached


async def test_warm_up_caches_the_listed_calls(
    make_runtime: RuntimeFactory, write_agent: AgentWriter
) -> None:
    write_agent("echo", ECHO)
    runtime = make_runtime()
    results = await runtime.warm_up([("echo", "a"), ("nope", "b")])
    assert [r.ok for r in results] == [True, False]
    assert (await runtime.run("echo", "a")).cached


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("raise SystemExit(3)", ""),
        ("raise KeyboardInterrupt", ""),
        ("raise SystemExit(4)", "async "),
        ("raise __import__('asyncio').CancelledError('from the agent')", ""),
        ("raise __import__('asyncio').CancelledError('from the agent')", "async "),
    ],
)
async def test_an_agent_raising_exit_or_cancelled_fails_its_call_not_the_process(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, body: str, kind: str
) -> None:
    write_agent("exiter", f"DESCRIPTION='d'\n{kind}def run(q):\n    {body}\n")
    write_agent("echo", ECHO)
    runtime = make_runtime()
    result = await runtime.run("exiter", "x")
    assert isinstance(result.error, AgentFailed)
    assert result.error.error_type in {"SystemExit", "KeyboardInterrupt", "CancelledError"}
    assert (await runtime.run("echo", "still serving")).ok


async def test_hung_sync_agents_hold_their_thread_slot_until_they_end(
    make_runtime: RuntimeFactory, write_agent: AgentWriter
) -> None:
    write_agent(
        "worker",
        """
        import threading
        DESCRIPTION = "d"
        CACHEABLE = False
        THREADS = {}  # the thread of each query started
        FINISH = threading.Event()  # the slow query runs until it is set
        def run(q):
            THREADS[q] = threading.current_thread()
            if q == "slow":
                FINISH.wait(60)
            return q
        """,
    )
    # Long enough for "quick" to start on a thread and answer, whatever the load.
    runtime = make_runtime(agent_timeout=1.0, agent_threads=1)
    worker = agent_globals(runtime, "worker")
    assert isinstance((await runtime.run("worker", "slow")).error, AgentTimeout)
    # The abandoned thread still holds the only slot: the next call waits, then fails
    # without ever starting, as a call that found no thread, not as its own timeout (and
    # as one whose agent's own calls hold its threads).
    waited = (await runtime.run("worker", "quick")).error
    assert isinstance(waited, AgentBusy)
    assert waited.error_type == "threads_exhausted"
    assert "its 1 threads are all taken by its calls still running" in str(waited)
    assert sorted(worker["THREADS"]) == ["slow"]
    worker["FINISH"].set()
    await wait_until(lambda: not worker["THREADS"]["slow"].is_alive(), "the slow thread to end")
    assert (await runtime.run("worker", "quick")).output == "quick"  # its slot was released


async def test_an_invalidating_call_that_timed_out_invalidates_again_when_it_really_ends(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, agents_dir: Path
) -> None:
    state = agents_dir.parent / "files.txt"
    state.write_text("a b")
    write_agent(
        "files",
        f"""
        import pathlib, threading
        DESCRIPTION = "d"
        CACHE_TTL = 3600
        INVALIDATED_BY = {{"rm"}}
        STATE = pathlib.Path({str(state)!r})
        FINISH = threading.Event()  # rm runs past the timeout until it is set
        def run(q):
            if q.startswith("rm"):
                FINISH.wait(60)  # the change lands after the call gave up
                STATE.write_text("b")
                return "removed"
            return STATE.read_text()
        """,
    )
    runtime = make_runtime(agent_timeout=1.0)  # ls answers within it, whatever the load
    assert (await runtime.run("files", "ls")).output == "a b"
    assert isinstance((await runtime.run("files", "rm a")).error, AgentTimeout)
    assert (await runtime.run("files", "ls")).output == "a b"  # rm has not happened yet
    agent_globals(runtime, "files")["FINISH"].set()
    listings: list[AgentResult] = []

    async def listed_afresh() -> bool:  # hits until the results are invalidated
        listings.append(await runtime.run("files", "ls"))
        return not listings[-1].cached

    await wait_until(listed_afresh, "the late end of rm to invalidate the listing")
    listing = listings[-1]
    assert (listing.output, listing.cached) == ("b", False)


CLOSE_LOGGING = """
import asyncio, pathlib
DESCRIPTION = "d"
CACHE_TTL = 3600
STARTED, FINISH = asyncio.Event(), asyncio.Event()  # the slow query: begun, may answer
async def run(q):
    if q == "slow":
        STARTED.set()
        await FINISH.wait()
    return "{version} " + q
async def close():
    path = pathlib.Path({log!r})
    path.write_text((path.read_text() if path.exists() else "") + "{version} ")
"""


async def test_a_reload_closes_a_replaced_agent_when_its_last_call_ends(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, agents_dir: Path
) -> None:
    log = agents_dir.parent / "closed.txt"
    write_agent("holder", CLOSE_LOGGING.format(log=str(log), version="v1"))
    runtime = make_runtime()
    in_flight = asyncio.create_task(runtime.run("holder", "slow"))
    v1 = agent_globals(runtime, "holder")
    await v1["STARTED"].wait()
    write_agent("holder", CLOSE_LOGGING.format(log=str(log), version="v2"))
    assert (await runtime.reload()).updated == ("holder",)
    assert not log.exists()  # v1 still has a call in flight
    v1["FINISH"].set()
    assert (await in_flight).output == "v1 slow"
    await wait_until(log.exists, "v1 to be closed")  # beside the call's answer, not before it
    assert log.read_text().split() == ["v1"]
    write_agent("holder", CLOSE_LOGGING.format(log=str(log), version="v3"))
    await runtime.reload()
    await wait_until(lambda: len(log.read_text().split()) > 1, "v2 to be closed")
    assert log.read_text().split() == ["v1", "v2"]  # nothing in flight: closed at once
    await runtime.aclose()
    assert log.read_text().split() == ["v1", "v2", "v3"]


async def test_closing_a_replaced_agent_neither_delays_nor_fails_its_last_call(
    make_runtime: RuntimeFactory,
    write_agent: AgentWriter,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("sel_otel._runtime.CLOSE_TIMEOUT", 1.0)
    source = """
    import asyncio
    DESCRIPTION = "d"
    STARTED, FINISH = asyncio.Event(), asyncio.Event()  # a call: begun, may answer
    async def run(q):
        STARTED.set()
        await FINISH.wait()
        return "{version}"
    async def close():
        {close}
    """
    write_agent("stuck", source.format(version="v1", close="await asyncio.Event().wait()"))
    write_agent("odd", source.format(version="v1", close="raise asyncio.CancelledError"))
    runtime = make_runtime()
    calls = [asyncio.create_task(runtime.run(name, "q")) for name in ("stuck", "odd")]
    v1 = [agent_globals(runtime, name) for name in ("stuck", "odd")]
    for module in v1:
        await module["STARTED"].wait()
    for name in ("stuck", "odd"):
        write_agent(name, source.format(version="v2", close="pass"))
    await runtime.reload()
    for module in v1:
        module["FINISH"].set()
    results = await asyncio.gather(*calls)
    assert [(r.output, r.ok) for r in results] == [("v1", True), ("v1", True)]
    # The calls have answered while the hung close still runs: they did not wait for it.
    assert any(not task.done() for task in runtime._background)
    await runtime.aclose()  # returns: the hung close is abandoned after CLOSE_TIMEOUT
    failures = [r.getMessage() for r in caplog.records if "closing agent" in r.getMessage()]
    assert any("stuck" in m for m in failures) and any("odd" in m for m in failures)


async def test_a_reload_drops_the_cached_results_of_updated_and_removed_agents(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, agents_dir: Path
) -> None:
    log = agents_dir.parent / "closed.txt"
    path = write_agent("holder", CLOSE_LOGGING.format(log=str(log), version="v1"))
    write_agent("echo", ECHO.replace("DESCRIPTION", "CACHE_TTL = 3600\nDESCRIPTION"))
    runtime = make_runtime()
    for agent in ("holder", "echo"):
        await runtime.run(agent, "x")
    write_agent("holder", CLOSE_LOGGING.format(log=str(log), version="v2"))
    await runtime.reload()
    updated = await runtime.run("holder", "x")
    assert (updated.output, updated.cached) == ("v2 x", False)
    assert (await runtime.run("echo", "x")).cached  # unchanged agents keep their results
    path.unlink()
    await runtime.reload()
    write_agent("holder", CLOSE_LOGGING.format(log=str(log), version="v2"))
    await runtime.reload()  # the same source back: its old results must not return
    assert not (await runtime.run("holder", "x")).cached


async def test_a_sync_agent_raising_stop_iteration_fails_at_once(
    make_runtime: RuntimeFactory, write_agent: AgentWriter
) -> None:
    write_agent("stopit", "DESCRIPTION='d'\ndef run(q):\n    return next(iter([]))\n")
    result = await make_runtime(agent_timeout=30).run("stopit", "x")
    assert isinstance(result.error, AgentFailed)
    assert result.duration < 5  # not the 30 s timeout
