"""Load runs of the runtime in this process (`sel-otel loadtest`'s driver), through faults.

Small and bounded (each run a few seconds, at most a few thousand calls a second on the
memory cache): what the design promises under load, not how fast this machine is. Zero
failed calls through a reload and through Redis paused or killed; the stats count every call
once; identical concurrent misses execute once; memory and descriptors stay flat; nothing
is left running.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from sel_otel import Settings
from sel_otel._loadtest import LoadDriver, LoadPlan, Outcome, Recording
from sel_otel._loadtest_faults import check_faults, parse_fault, run_with_faults
from sel_otel._loadtest_local import local_environment
from sel_otel._loadtest_report import Summary, summarize
from sel_otel._telemetry import Telemetry, stats_reader
from tests.redis_server import REDIS_SERVER

pytestmark = [pytest.mark.load, pytest.mark.timeout(60)]

needs_redis_server = pytest.mark.skipif(REDIS_SERVER is None, reason="no redis-server on PATH")


class Discarding(SpanExporter):
    """Takes every batch and keeps nothing: spans cost what they cost, and are not held."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """Providers as a process has them: every span through a batch processor and exported
    (to nowhere), every call recorded by the stats reader."""
    reader = stats_reader()
    meter_provider = MeterProvider(metric_readers=[reader])
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Discarding()))
    yield Telemetry(tracer_provider, meter_provider, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


async def load(
    telemetry: Telemetry,
    plan: LoadPlan,
    *,
    cache: str = "memory",
    faults: tuple[str, ...] = (),
    work_ms: float = 10.0,
    settings: Settings | None = None,
) -> tuple[Summary, Recording]:
    """Run `plan` against this process's runtime with `faults` on schedule."""
    specs = [parse_fault(text) for text in faults]
    async with local_environment(
        plan, cache, telemetry, settings or Settings(), work_ms=work_ms
    ) as environment:
        check_faults(specs, environment.faults, environment.description)
        driver = LoadDriver(plan, environment.target, probe=environment.probe)
        recording = await run_with_faults(driver, specs, environment.faults)
        stats_calls = await environment.target.stats_calls()
    return summarize(recording, stats_calls, environment.description), recording


async def test_no_call_fails_through_a_reload_and_the_stats_count_every_call(
    telemetry: Telemetry,
) -> None:
    summary, _ = await load(
        telemetry, LoadPlan(users=8, duration=5.0), faults=("reload@1.5s", "reload@3s")
    )
    assert summary.failed == 0, summary.errors
    assert summary.stats_calls == summary.calls > 1000
    assert [effect.recovery_s is not None for effect in summary.faults] == [True, True]


@needs_redis_server
async def test_no_call_fails_while_redis_is_paused_or_killed(
    telemetry: Telemetry,
) -> None:
    summary, _ = await load(
        telemetry,
        LoadPlan(users=8, duration=9.0),
        cache="redis-server",
        faults=("redis-pause@1.5s+2s", "redis-kill@5s+1.5s"),
    )
    assert summary.failed == 0, summary.errors
    assert summary.stats_calls == summary.calls > 500
    pause, kill = summary.faults
    # Served as misses meanwhile; hits again within the breaker's probe interval (2 s) and
    # a little more once the fault ends.
    for effect in (pause, kill):
        assert effect.calls > 0 and effect.failed == 0
        assert effect.recovery_s is not None and effect.recovery_s < 4.0, effect
    # While it is paused or down, cached answers are out of reach: calls execute the agent
    # (10 ms) where most were hits (well under 10 ms).
    assert pause.p50_ms >= 10 > pause.baseline_p50_ms
    assert kill.p50_ms >= 10


async def test_a_hanging_agent_fails_only_its_executions_by_timeout_then_recovers(
    telemetry: Telemetry,
) -> None:
    summary, recording = await load(
        telemetry, LoadPlan(users=8, duration=7.0), faults=("agent-hang@1s+2s",)
    )
    assert summary.errors.keys() == {"timeout"}
    (window,) = recording.faults
    failed = [
        (start, latency)
        for start, latency, outcome in zip(
            recording.starts, recording.latencies, recording.outcomes, strict=True
        )
        if outcome == Outcome.FAILED
    ]
    # Only executions that ran while the agent hung fail, each after its 2 s timeout...
    assert failed
    assert all(start <= window.end and start + latency >= window.begin for start, latency in failed)
    assert min(latency for _, latency in failed) >= 2.0
    # ... while cached answers keep coming, and hits resume after it.
    assert summary.hits.count > 0
    assert summary.faults[0].recovery_s is not None


@pytest.mark.parametrize(
    "cache", ["memory", pytest.param("redis-server", marks=needs_redis_server)]
)
async def test_identical_concurrent_misses_execute_once(telemetry: Telemetry, cache: str) -> None:
    # Every new input is asked by all 8 users at about the same time.
    plan = LoadPlan(users=8, duration=3.0, hit_ratio=0.3, fanout=8)
    summary, _ = await load(telemetry, plan, cache=cache, work_ms=30)
    assert summary.failed == 0, summary.errors
    assert summary.executions.keys > 10
    assert summary.executions.max == 1
    assert summary.coalesced.count > summary.executions.keys  # most of the 7 others joined


async def test_memory_and_descriptors_stay_flat_over_a_long_run(
    telemetry: Telemetry,
) -> None:
    # Without the execution history: its SQLite page cache fills up to its bound (16 MiB) over
    # the first ~100,000 calls, which would hide a leak of the runtime, cache or telemetry.
    summary, recording = await load(
        telemetry, LoadPlan(users=10, duration=15.0), settings=Settings(history=False)
    )
    assert summary.failed == 0
    settled = [sample for sample in recording.resources if sample[0] >= 3.0]
    assert len(settled) >= 10
    start, rss_settled, fds_settled = settled[0]
    _, rss_end, fds_end = settled[-1]
    # The run's own record of every call (about 20 bytes a call, and each new input once)
    # grows; what the runtime holds must not.
    calls_since = sum(1 for s in recording.starts if s >= start)
    assert calls_since > 5000
    growth = rss_end - rss_settled
    assert growth < 128 * calls_since + 4 * 2**20, [(round(t), r >> 20) for t, r, _ in settled]
    assert fds_end <= fds_settled + 2


def child_processes() -> list[str]:
    """The names of this process's live child processes (from /proc)."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        name, _, rest = text.partition(" (")[2].rpartition(") ")
        fields = rest.split()  # state, parent pid, ...
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            names.append(name)
    return names


@needs_redis_server
async def test_a_run_leaves_no_task_thread_or_process_behind(
    telemetry: Telemetry,
) -> None:
    threads = set(threading.enumerate())
    summary, _ = await load(
        telemetry,
        LoadPlan(users=4, duration=3.0),
        cache="redis-server",
        faults=("redis-pause@1s+5s", "agent-hang@1s+5s"),  # still in force at the end
    )
    assert summary.calls > 0
    assert asyncio.all_tasks() == {asyncio.current_task()}
    # The event loop's default executor keeps its threads until the loop closes.
    left = {t for t in threading.enumerate() if not t.name.startswith("asyncio_")}
    assert left <= threads
    assert "redis-server" not in child_processes()
