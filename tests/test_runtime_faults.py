"""The runtime under hostile agents: whatever they raise, hang on or block, a call ends on
time as a result, the other agents keep serving, and the cost of a failure stays small."""

from __future__ import annotations

import asyncio
import linecache
import logging
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

from sel_otel import AgentFailed, AgentThreadsExhausted, AgentTimeout, read_stats
from sel_otel._stats import format_stats

from .conftest import AgentWriter, RuntimeFactory, TelemetryFixture

DURATION = "gen_ai.client.operation.duration"

ECHO = """
DESCRIPTION = "Echoes its input"
CACHEABLE = False
def run(query):
    return "echo " + query
"""


@pytest.mark.parametrize("kind", ["", "async "], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("raised", "error_type"),
    [
        ("GeneratorExit()", "GeneratorExit"),
        ("Fatal('stop')", "Fatal"),  # a BaseException of the agent's own
        ("KeyboardInterrupt()", "KeyboardInterrupt"),
    ],
)
async def test_whatever_an_agent_raises_is_an_error_result_counted_as_an_error(
    make_runtime: RuntimeFactory,
    write_agent: AgentWriter,
    telemetry: TelemetryFixture,
    kind: str,
    raised: str,
    error_type: str,
) -> None:
    write_agent(
        "fatal",
        f"class Fatal(BaseException):\n    pass\nDESCRIPTION = 'd'\n"
        f"{kind}def run(q):\n    raise {raised}\n",
    )
    write_agent("echo", ECHO)
    runtime = make_runtime()
    result = await runtime.run("fatal", "x")
    assert isinstance(result.error, AgentFailed)
    assert result.error.error_type == error_type
    [span] = telemetry.finished("invoke_agent fatal")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == error_type
    [point] = telemetry.points(DURATION)
    assert point.attributes["error.type"] == error_type  # counted as an error, not a success
    assert (await runtime.run("echo", "still serving")).ok


def _module_of(runtime: Any, agent: str) -> dict[str, Any]:
    """The globals of a loaded agent, for a test to release what it holds."""
    return runtime.registry.get(agent).function.__globals__  # type: ignore[no-any-return]


async def _until(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def test_an_async_agent_that_swallows_its_cancellation_still_times_out_on_time(
    make_runtime: RuntimeFactory, write_agent: AgentWriter
) -> None:
    write_agent(
        "stubborn",
        """
        import asyncio, threading
        DESCRIPTION = "d"
        TIMEOUT = 0.1
        RELEASE = threading.Event()
        ENDED = threading.Event()
        async def run(q):
            while not RELEASE.is_set():
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    pass
            ENDED.set()
            return q
        """,
    )
    runtime = make_runtime()
    module = _module_of(runtime, "stubborn")
    try:
        result = await asyncio.wait_for(runtime.run("stubborn", "x"), timeout=30)
        assert isinstance(result.error, AgentTimeout)
        assert not module["ENDED"].is_set()  # the call ended without waiting for the agent
    finally:
        module["RELEASE"].set()
    await _until(module["ENDED"].is_set, "the abandoned agent never ended")


async def test_an_async_agent_blocking_the_loop_past_its_timeout_fails_uncached_and_is_named_once(
    make_runtime: RuntimeFactory,
    write_agent: AgentWriter,
    telemetry: TelemetryFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_agent(
        "blocker",
        """
        import time
        DESCRIPTION = "d"
        TIMEOUT = 0.1
        RUNS = []
        async def run(q):
            RUNS.append(q)
            time.sleep(0.4)  # holds the event loop: the timeout cannot fire
            return "late"
        """,
    )
    runtime = make_runtime()
    with caplog.at_level(logging.WARNING, logger="sel_otel"):
        first = await runtime.run("blocker", "x")
        second = await runtime.run("blocker", "x")
    for result in (first, second):
        assert isinstance(result.error, AgentTimeout), result
        assert result.error.blocked >= 0.25
        assert "blocked the event loop" in str(result.error)
    assert _module_of(runtime, "blocker")["RUNS"] == ["x", "x"]  # the late output was not cached
    spans = telemetry.finished("invoke_agent blocker")
    assert [s.attributes.get("sel.agent.blocked_loop") for s in spans] == [True, True]
    assert [s.attributes["error.type"] for s in spans] == ["timeout", "timeout"]
    named = [r for r in caplog.records if "blocked the event loop" in r.getMessage()]
    assert len(named) == 1 and "agent blocker " in named[0].getMessage()


async def test_an_agent_that_awaits_past_its_timeout_is_no_loop_blocker(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent(
        "slow",
        "import asyncio\nDESCRIPTION = 'd'\nTIMEOUT = 0.05\n"
        "async def run(q):\n    await asyncio.sleep(30)\n",
    )
    result = await make_runtime().run("slow", "x")
    assert isinstance(result.error, AgentTimeout) and result.error.blocked == 0
    [span] = telemetry.finished()
    assert "sel.agent.blocked_loop" not in span.attributes


HANGING = """
import threading
DESCRIPTION = "d"
CACHEABLE = False
TIMEOUT = 0.2
RELEASE = threading.Event()
def run(q):
    RELEASE.wait(60)
    return q
"""


async def test_a_hung_sync_agent_holds_its_share_of_the_threads_and_the_others_keep_theirs(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("hang", HANGING)
    write_agent("echo", ECHO)
    runtime = make_runtime(agent_threads=4, agent_threads_per_agent=2, agent_timeout=5)
    release = _module_of(runtime, "hang")["RELEASE"]
    try:
        hung = await asyncio.gather(*(runtime.run("hang", str(i)) for i in range(6)))
        errors = sorted(type(r.error).__name__ for r in hung)
        assert errors == ["AgentThreadsExhausted"] * 4 + ["AgentTimeout"] * 2
        exhausted = next(r.error for r in hung if isinstance(r.error, AgentThreadsExhausted))
        assert "its 2 threads are all taken by its calls still running" in str(exhausted)
        # The other agents still have the rest of the threads.
        served = await asyncio.gather(*(runtime.run("echo", str(i)) for i in range(4)))
        assert [r.output for r in served] == [f"echo {i}" for i in range(4)]
        [row] = read_stats(telemetry.reader, "hang")
        assert row.threads_exhausted == 4
        assert "Threads exhausted: 4 calls" in format_stats([row])
        [echo] = read_stats(telemetry.reader, "echo")
        assert echo.threads_exhausted == 0
        assert "Threads exhausted" not in format_stats([echo])
    finally:
        release.set()


FAILING = """
import asyncio
DESCRIPTION = "d"
GATE = asyncio.Event()
RUNS = []
async def run(q):
    RUNS.append(q)
    await GATE.wait()
    raise ValueError("cannot " + q)
"""


async def _source_lines_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    getline = linecache.getline

    def counting(filename: str, lineno: int, module_globals: Any = None) -> str:
        read.append(filename)
        return getline(filename, lineno, module_globals)

    monkeypatch.setattr(linecache, "getline", counting)
    return read


async def test_a_failure_is_formatted_once_whatever_the_number_of_callers_sharing_it(
    make_runtime: RuntimeFactory,
    write_agent: AgentWriter,
    telemetry: TelemetryFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_agent("failing", FAILING)
    runtime = make_runtime()
    agent = _module_of(runtime, "failing")
    read = await _source_lines_read(monkeypatch)
    reads = []
    for query, callers in (("alone", 1), ("shared", 200)):
        agent["GATE"].clear()
        read.clear()
        telemetry.spans.clear()
        calls = [asyncio.create_task(runtime.run("failing", query)) for _ in range(callers)]
        await asyncio.sleep(0)  # every call is waiting on the one execution
        agent["GATE"].set()
        results = await asyncio.gather(*calls)
        assert all(isinstance(r.error, AgentFailed) for r in results)
        assert agent["RUNS"][-1] == query and agent["RUNS"].count(query) == 1  # shared
        spans = telemetry.finished("invoke_agent failing")
        assert len(spans) == callers
        stacks = {s.events[0].attributes["exception.stacktrace"] for s in spans}
        assert len(stacks) == 1 and "raise ValueError" in stacks.pop()
        reads.append(len(read))
    # The stack is read once per failure: as often for 200 callers as for one.
    assert reads[0] > 0 and reads[1] == reads[0], reads


async def test_an_unsampled_failure_formats_nothing(
    make_runtime: RuntimeFactory,
    write_agent: AgentWriter,
    telemetry: TelemetryFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    telemetry.tracer_provider.sampler = ALWAYS_OFF
    write_agent("failing", FAILING)
    runtime = make_runtime()
    _module_of(runtime, "failing")["GATE"].set()
    read = await _source_lines_read(monkeypatch)
    result = await runtime.run("failing", "x")
    assert isinstance(result.error, AgentFailed)
    assert read == []
    [point] = telemetry.points(DURATION)
    assert point.attributes["error.type"] == "ValueError"  # the metrics count it all the same
