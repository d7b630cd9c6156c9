"""`/sel_agent_stats`: per-agent figures read from the OpenTelemetry metric reader.

Nothing here counts by hand: calls, cached calls, errors, the average and the p95 all come
from the cumulative duration histogram that the runtime records every call in; so do the
calls that found the agent's threads exhausted (by its own calls still running, hung most
likely), which are errors of their own `error.type`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, MetricsData

from . import _semconv as names
from ._metric_data import data_points


@dataclass
class AgentStats:
    """The figures of one agent since the process started."""

    agent: str
    calls: int = 0
    cached_calls: int = 0
    errors: int = 0
    total_seconds: float = 0.0
    bounds: Sequence[float] = ()
    bucket_counts: list[int] = field(default_factory=list)
    min_seconds: float = float("inf")
    max_seconds: float = 0.0
    #: Calls that could not start: the agent's share of the threads was all taken.
    threads_exhausted: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_calls / self.calls if self.calls else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    @property
    def average_seconds(self) -> float:
        return self.total_seconds / self.calls if self.calls else 0.0

    def percentile(self, q: float) -> float:
        """The q-quantile (0 < q <= 1) interpolated within the histogram buckets."""
        if not self.calls:
            return 0.0
        rank = q * self.calls
        seen = 0
        for index, count in enumerate(self.bucket_counts):
            if count and seen + count >= rank:
                lower = self.bounds[index - 1] if index > 0 else self.min_seconds
                upper = self.bounds[index] if index < len(self.bounds) else self.max_seconds
                lower, upper = max(lower, self.min_seconds), min(upper, self.max_seconds)
                return lower + (upper - lower) * (rank - seen) / count
            seen += count
        return self.max_seconds

    def _add(self, point: HistogramDataPoint, cached: bool, failed: bool) -> None:
        self._fold(
            point.count,
            point.count if cached else 0,
            point.count if failed else 0,
            point.sum,
            point.min,
            point.max,
            point.explicit_bounds,
            point.bucket_counts,
        )

    def _merge(self, row: AgentStats) -> None:
        self._fold(
            row.calls,
            row.cached_calls,
            row.errors,
            row.total_seconds,
            row.min_seconds,
            row.max_seconds,
            row.bounds,
            row.bucket_counts,
        )
        self.threads_exhausted += row.threads_exhausted

    def _fold(
        self,
        calls: int,
        cached: int,
        errors: int,
        seconds: float,
        minimum: float,
        maximum: float,
        bounds: Sequence[float],
        bucket_counts: Sequence[int],
    ) -> None:
        self.calls += calls
        self.cached_calls += cached
        self.errors += errors
        self.total_seconds += seconds
        self.min_seconds = min(self.min_seconds, minimum)
        self.max_seconds = max(self.max_seconds, maximum)
        if self.bucket_counts:
            self.bucket_counts = list(map(operator.add, self.bucket_counts, bucket_counts))
        else:
            self.bounds = tuple(bounds)
            self.bucket_counts = list(bucket_counts)


def agent_points(data: MetricsData | None) -> Iterator[HistogramDataPoint]:
    """The points of the agent-call histogram in `data`, one per attribute set."""
    for point in data_points(data, names.AGENT_DURATION, names.SCOPE_NAME):
        if isinstance(point, HistogramDataPoint) and point.count:
            yield point


def rows_from_points(
    points: Iterable[HistogramDataPoint], agent: str | None = None
) -> list[AgentStats]:
    """Per-agent stats from agent-call histogram points, most called first; only `agent`'s
    when given. Points of several instances add up as one process's would: their bucket
    boundaries must be the same."""
    by_agent: dict[str, AgentStats] = {}
    for point in points:
        attributes = point.attributes or {}
        name = str(attributes.get(names.GEN_AI_AGENT_NAME, "?"))
        if agent is not None and name != agent:
            continue
        stats = by_agent.get(name)
        if stats is None:
            stats = by_agent[name] = AgentStats(name)
        stats._add(
            point,
            cached=attributes.get(names.SEL_CACHE_HIT) is True,
            failed=names.ERROR_TYPE in attributes,
        )
        if attributes.get(names.ERROR_TYPE) == names.ERROR_THREADS_EXHAUSTED:
            stats.threads_exhausted += point.count
    return sorted(by_agent.values(), key=lambda s: (-s.calls, s.agent))


def read_stats(reader: InMemoryMetricReader, agent: str | None = None) -> list[AgentStats]:
    """Per-agent stats from `reader`, most called first; only `agent` when given."""
    return rows_from_points(agent_points(reader.get_metrics_data()), agent)


def merge_rows(rows: Iterable[AgentStats]) -> list[AgentStats]:
    """Rows of the same agents (from several instances, with the same bucket boundaries)
    added up, one per agent, most called first."""
    by_agent: dict[str, list[AgentStats]] = {}
    for row in rows:
        by_agent.setdefault(row.agent, []).append(row)
    merged = [total(same, agent) for agent, same in by_agent.items()]
    return sorted(merged, key=lambda s: (-s.calls, s.agent))


def total(rows: Iterable[AgentStats], name: str = "all agents") -> AgentStats:
    """The figures of `rows` (with the same bucket boundaries) together, as one row `name`:
    as if each were folded in turn, their bucket counts added a bucket at a time."""
    rows = list(rows)
    merged = AgentStats(name)
    if not all(row.bucket_counts for row in rows):  # rows without calls: fold them in turn
        for row in rows:
            merged._merge(row)
        return merged
    seconds, minimum, maximum = 0.0, merged.min_seconds, merged.max_seconds
    for row in rows:  # in order: the same float sum as folding them in turn
        seconds += row.total_seconds
        minimum = min(minimum, row.min_seconds)
        maximum = max(maximum, row.max_seconds)
    merged.calls = sum(row.calls for row in rows)
    merged.cached_calls = sum(row.cached_calls for row in rows)
    merged.errors = sum(row.errors for row in rows)
    merged.threads_exhausted = sum(row.threads_exhausted for row in rows)
    merged.total_seconds, merged.min_seconds, merged.max_seconds = seconds, minimum, maximum
    if rows:
        merged.bounds = tuple(rows[0].bounds)
        columns = zip(*(row.bucket_counts for row in rows), strict=False)  # as folding would
        merged.bucket_counts = list(map(sum, columns))
    return merged


def format_duration(seconds: float) -> str:
    """A human duration: `1.23s`, `12.3ms` or `45µs`."""
    if seconds >= 1:
        return f"{seconds:.2f}s"
    if seconds >= 0.001:
        return f"{seconds * 1000:.1f}ms"
    return f"{seconds * 1_000_000:.0f}µs"


def format_stats(rows: Sequence[AgentStats]) -> str:
    """The SEL stats report, one block per agent."""
    if not rows:
        return "No agent calls yet."
    return "\n\n".join(
        f"**{row.agent}**\n"
        f"  Calls: {row.calls} (cached: {row.cached_calls})\n"
        f"  Cache hit rate: {row.hit_rate:.1%}\n"
        f"  Avg time: {format_duration(row.average_seconds)}\n"
        f"  Errors: {row.errors} ({row.error_rate:.1%})\n"
        f"  P95 time: {format_duration(row.percentile(0.95))}" + _exhausted(row)
        for row in rows
    )


def _exhausted(row: AgentStats) -> str:
    if not row.threads_exhausted:
        return ""
    return (
        f"\n  ⚠️ Threads exhausted: {row.threads_exhausted} calls could not start, its "
        "threads all taken by its calls still running"
    )
