"""`/sel_agent_stats` figures come from the metric reader and match the calls made."""

from __future__ import annotations

import bisect

import pytest

from sel_otel import AgentStats, read_stats
from sel_otel import _semconv as names
from sel_otel._stats import Points, add_up, format_stats

from .conftest import AgentWriter, RuntimeFactory, TelemetryFixture
from .stats_instances import Instance


async def test_stats_count_calls_hits_errors_and_average(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("echo", "DESCRIPTION='d'\ndef run(q):\n    return q\n")
    write_agent(
        "picky",
        "DESCRIPTION='d'\ndef run(q):\n    if q == 'bad':\n        raise ValueError(q)\n"
        "    return q\n",
    )
    runtime = make_runtime()
    results = [await runtime.run("echo", q) for q in ("a", "a", "a", "b")]
    results += [await runtime.run("picky", q) for q in ("bad", "ok", "bad")]
    rows = {row.agent: row for row in read_stats(telemetry.reader)}
    echo, picky = rows["echo"], rows["picky"]
    assert (echo.calls, echo.cached_calls, echo.errors) == (4, 2, 0)
    assert echo.hit_rate == pytest.approx(0.5)
    assert (picky.calls, picky.cached_calls, picky.errors) == (3, 0, 2)
    assert picky.error_rate == pytest.approx(2 / 3)
    assert echo.average_seconds == pytest.approx(sum(r.duration for r in results[:4]) / 4)
    assert [row.agent for row in read_stats(telemetry.reader)] == ["echo", "picky"]
    assert [row.agent for row in read_stats(telemetry.reader, "picky")] == ["picky"]


async def test_reading_the_stats_twice_gives_the_same_cumulative_figures(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("echo", "DESCRIPTION='d'\ndef run(q):\n    return q\n")
    runtime = make_runtime()
    await runtime.run("echo", "a")
    assert read_stats(telemetry.reader)[0].calls == 1
    assert read_stats(telemetry.reader)[0].calls == 1
    await runtime.run("echo", "a")
    assert read_stats(telemetry.reader)[0].calls == 2


def test_points_of_several_readers_add_up_per_agent() -> None:
    a, b = Instance("a"), Instance("b")
    a.call("echo", 0.001, hit=True)
    a.call("echo", 0.2)
    a.call("echo", 3.0, error=names.ERROR_THREADS_EXHAUSTED)
    b.call("echo", 0.02, error="timeout")
    b.call("calc", 0.5)
    parts = [Points.from_points(a.points()), Points.from_points(b.points())]
    echo, calc = add_up(parts)
    assert (echo.agent, echo.calls, echo.cached_calls, echo.errors) == ("echo", 4, 1, 2)
    assert echo.threads_exhausted == 1
    assert echo.total_seconds == pytest.approx(3.221)
    assert (echo.min_seconds, echo.max_seconds) == (0.001, 3.0)
    expected = [0] * (len(names.DURATION_BUCKETS) + 1)
    for seconds in (0.001, 0.2, 3.0, 0.02):  # a bucket holds what is at most its bound
        expected[bisect.bisect_left(names.DURATION_BUCKETS, seconds)] += 1
    assert echo.bucket_counts == expected and echo.bounds == names.DURATION_BUCKETS
    assert (calc.agent, calc.calls, calc.errors, calc.max_seconds) == ("calc", 1, 0, 0.5)
    assert add_up(parts, "calc") == [calc]
    assert add_up(parts, "nobody") == [] and add_up([]) == []


def stats_with(bounds: tuple[float, ...], counts: list[int], low: float, high: float) -> AgentStats:
    return AgentStats(
        "a",
        calls=sum(counts),
        bounds=bounds,
        bucket_counts=counts,
        min_seconds=low,
        max_seconds=high,
    )


def test_p95_is_interpolated_within_its_bucket() -> None:
    # 100 calls: 90 in (0, 0.01], 10 in (0.01, 0.02]; rank 95 is half-way through bucket 2.
    stats = stats_with((0.01, 0.02), [90, 10, 0], 0.001, 0.02)
    assert stats.percentile(0.95) == pytest.approx(0.015)


def test_p95_is_clamped_to_observed_min_and_max() -> None:
    stats = stats_with((0.01, 0.02), [0, 0, 4], 0.5, 0.7)  # all above the last bound
    assert 0.5 <= stats.percentile(0.95) <= 0.7
    single = stats_with((0.01,), [1, 0], 0.004, 0.004)
    assert single.percentile(0.95) == pytest.approx(0.004)


def test_format_follows_the_sel_report() -> None:
    stats = AgentStats("host_exec", calls=127, cached_calls=89, errors=2, total_seconds=1.5621)
    text = format_stats([stats])
    assert text.splitlines()[:5] == [
        "**host_exec**",
        "  Calls: 127 (cached: 89)",
        "  Cache hit rate: 70.1%",
        "  Avg time: 12.3ms",
        "  Errors: 2 (1.6%)",
    ]
    assert format_stats([]) == "No agent calls yet."
