"""`/sel_agent_stats`: per-agent figures read from the OpenTelemetry metric reader.

Nothing here counts by hand: calls, cached calls, errors, the average and the p95 all come
from the cumulative duration histogram that the runtime records every call in; so do the
calls that found the agent's threads exhausted (by its own calls still running, hung most
likely), which are errors of their own `error.type`.

The histogram's points are added up per agent as columns (`Points`), so that the points of
every instance of a deployment, thousands of them, add up in a few milliseconds.
"""

from __future__ import annotations

import itertools
import operator
import struct
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

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

    def _merge(self, row: AgentStats) -> None:
        self.calls += row.calls
        self.cached_calls += row.cached_calls
        self.errors += row.errors
        self.threads_exhausted += row.threads_exhausted
        self.total_seconds += row.total_seconds
        self.min_seconds = min(self.min_seconds, row.min_seconds)
        self.max_seconds = max(self.max_seconds, row.max_seconds)
        if self.bucket_counts:
            self.bucket_counts = list(map(operator.add, self.bucket_counts, row.bucket_counts))
        else:
            self.bounds = tuple(row.bounds)
            self.bucket_counts = list(row.bucket_counts)


#: What the calls of a point were: cache hits, failed, failed for want of a thread.
Kind = tuple[bool, bool, bool]


def kind(attributes: Mapping[str, object]) -> Kind:
    """The kind of the calls of a point with `attributes`."""
    return (
        attributes.get(names.SEL_CACHE_HIT) is True,
        names.ERROR_TYPE in attributes,
        attributes.get(names.ERROR_TYPE) == names.ERROR_THREADS_EXHAUSTED,
    )


def agent_name(attributes: Mapping[str, object]) -> str:
    return str(attributes.get(names.GEN_AI_AGENT_NAME, "?"))


@dataclass(frozen=True)
class Points:
    """Agent-call histogram points (one per attribute set) as a column per field, grouped by
    agent: the points of `agents[i]` run from `ends[i - 1]` (0 for the first) to `ends[i]`.
    Thousands of points (every instance's) are a few lists, not an object each; the bucket
    counts of a point are one integer, 64 bits a bucket (`packed`), so that adding points
    adds every bucket at once."""

    bounds: tuple[float, ...]
    agents: Sequence[str]  # each once
    ends: Sequence[int]
    counts: Sequence[int]
    cached: Sequence[int]  # a point's count if its calls were cache hits, else 0
    errors: Sequence[int]  # its count if they failed, else 0
    exhausted: Sequence[int]  # its count if they found the agent's threads all taken, else 0
    sums: Sequence[float]
    mins: Sequence[float]
    maxs: Sequence[float]
    buckets: Sequence[int]  # each point's bucket counts, packed

    @classmethod
    def of(
        cls,
        bounds: tuple[float, ...],
        agents: Sequence[str],
        sizes: Sequence[int],
        kinds: Sequence[Kind],
        numbered: Sequence[int],
        counts: Sequence[int],
        sums: Sequence[float],
        mins: Sequence[float],
        maxs: Sequence[float],
        buckets: bytes,
    ) -> Points:
        """The points of `agents`, `sizes[i]` of `agents[i]` in turn, each of the kind
        numbered in `kinds`; `buckets` holds their bucket counts, uint64 little-endian."""

        def counted(flags: Sequence[bool]) -> list[int]:  # a point's count where flagged
            if not any(flags):
                return [0] * len(counts)
            return list(map(operator.mul, counts, map(flags.__getitem__, numbered)))

        hit, failed, exhausted = zip(*kinds, strict=True) if kinds else ((), (), ())
        return cls(
            bounds,
            agents,
            list(itertools.accumulate(sizes)),
            counts,
            counted(hit),
            counted(failed),
            counted(exhausted),
            sums,
            mins,
            maxs,
            packed(buckets, len(bounds) + 1),
        )

    @classmethod
    def from_points(cls, points: Iterable[HistogramDataPoint]) -> Points:
        """A reader's points, grouped by agent (in the order of their first point)."""
        by_agent: dict[str, list[HistogramDataPoint]] = {}
        for point in points:
            by_agent.setdefault(agent_name(point.attributes or {}), []).append(point)
        ordered = [point for group in by_agent.values() for point in group]
        kinds: dict[Kind, int] = {}
        numbered = [kinds.setdefault(kind(point.attributes or {}), len(kinds)) for point in ordered]
        return cls.of(
            tuple(ordered[0].explicit_bounds) if ordered else (),
            list(by_agent),
            [len(group) for group in by_agent.values()],
            list(kinds),
            numbered,
            [point.count for point in ordered],
            [point.sum for point in ordered],
            [point.min for point in ordered],
            [point.max for point in ordered],
            _uint64(itertools.chain.from_iterable(point.bucket_counts for point in ordered)),
        )

    def calls(self, agent: str | None = None) -> int:
        """The calls of every agent, or of `agent`."""
        if agent is None:
            return sum(self.counts)
        if agent not in self.agents:
            return 0
        index = list(self.agents).index(agent)
        return sum(self.counts[self.ends[index - 1] if index else 0 : self.ends[index]])


def add_up(parts: Iterable[Points], agent: str | None = None) -> list[AgentStats]:
    """Per-agent figures of every point of `parts` (of the same bucket boundaries), most
    called first; only `agent`'s when given. Counts, sums and bucket counts add, min and max
    are kept: the figures of one process fed every call."""
    parts = [part for part in parts if part.counts]
    bounds = parts[0].bounds if parts else ()
    if any(part.bounds != bounds for part in parts):
        raise ValueError("points of different bucket boundaries")
    at: dict[str, list[int]] = {}  # each agent's points among all of them
    offset = 0
    for part in parts:
        start = offset
        for name, end in zip(part.agents, part.ends, strict=True):
            if agent is None or name == agent:
                at.setdefault(name, []).extend(range(start, offset + end))
            start = offset + end
        offset += len(part.counts)
    counts, cached, errors, exhausted, sums, mins, maxs, buckets = (
        _joined(parts, column) for column in _COLUMNS
    )
    rows = []
    for name, where in at.items():
        pick = _picker(where)
        rows.append(
            AgentStats(
                name,
                sum(pick(counts)),
                sum(pick(cached)),
                sum(pick(errors)),
                sum(pick(sums)),
                bounds,
                unpacked(sum(pick(buckets)), len(bounds) + 1),
                min(pick(mins)),
                max(pick(maxs)),
                sum(pick(exhausted)),
            )
        )
    return sorted(rows, key=lambda s: (-s.calls, s.agent))


def _uint64(values: Iterable[int]) -> bytes:
    values = list(values)
    return struct.pack(f"<{len(values)}Q", *values)


#: Instances whose points add up without a carry from one bucket's sum into the next: a
#: payload's counts are each below COUNT_LIMIT (`counts_below_limit`), so that the sum of a
#: bucket over INSTANCES of them stays below 2**64.
INSTANCES = 2**16
COUNT_LIMIT = 2**64 // INSTANCES  # 2**48: more calls than a million a second for 8 years


def counts_below_limit(raw: bytes) -> bool:
    """Whether every uint64 little-endian in `raw` is below COUNT_LIMIT: its top two bytes
    are zero."""
    top = raw[6::8] + raw[7::8]
    return top.count(0) == len(top)


def buckets_add_up(counts: bytes, buckets: bytes, width: int) -> bool:
    """Whether the `width` bucket counts of each point in `buckets` add up to its count in
    `counts` (uint64 little-endian, every one below COUNT_LIMIT). The first bucket count of
    every point is read as one integer, 64 bits a point, then the second, and so on: their
    sum holds each point's sum in its 64 bits, without a carry for fewer than INSTANCES
    buckets (ValueError for more)."""
    if width >= INSTANCES:
        raise ValueError(f"{width} buckets: more than their counts add up without a carry")
    column = array("Q", buckets)  # only split into 8-byte items: tobytes gives them back
    sums = sum(int.from_bytes(column[at::width].tobytes(), "little") for at in range(width))
    return sums == int.from_bytes(counts, "little")


def packed(raw: bytes, width: int) -> list[int]:
    """Each point's `width` bucket counts in `raw` (uint64 little-endian) as one integer, 64
    bits a count: the sum of such integers holds the sums of the counts, as long as each sum
    stays below 2**64 (counts below COUNT_LIMIT, of fewer than INSTANCES instances)."""
    return [
        int.from_bytes(point, "little") for (point,) in struct.iter_unpack(f"{8 * width}s", raw)
    ]


def unpacked(buckets: int, width: int) -> list[int]:
    """The `width` bucket counts packed in `buckets` (bits beyond them, which only more than
    INSTANCES instances at COUNT_LIMIT could set, are dropped rather than fail a report)."""
    size = 8 * width
    return list(
        struct.unpack(f"<{width}Q", (buckets & ((1 << 8 * size) - 1)).to_bytes(size, "little"))
    )


_COLUMNS = ("counts", "cached", "errors", "exhausted", "sums", "mins", "maxs", "buckets")


def _joined(parts: Sequence[Points], column: str) -> Sequence[Any]:
    """`column` of every part, end to end."""
    if len(parts) == 1:
        return cast(Sequence[Any], getattr(parts[0], column))
    return list(itertools.chain.from_iterable(getattr(part, column) for part in parts))


#: The items at some places of a sequence, as a sequence.
Picker = Callable[[Sequence[Any]], Sequence[Any]]


def _picker(where: list[int]) -> Picker:
    """The items at `where` of a sequence."""
    if len(where) == 1:
        [index] = where
        return lambda column: column[index : index + 1]
    return cast(Picker, operator.itemgetter(*where))


def agent_points(data: MetricsData | None) -> Iterator[HistogramDataPoint]:
    """The points of the agent-call histogram in `data`, one per attribute set."""
    for point in data_points(data, names.AGENT_DURATION, names.SCOPE_NAME):
        if isinstance(point, HistogramDataPoint) and point.count:
            yield point


def rows_from_points(
    points: Iterable[HistogramDataPoint], agent: str | None = None
) -> list[AgentStats]:
    """Per-agent stats from agent-call histogram points, most called first; only `agent`'s
    when given."""
    return add_up([Points.from_points(points)], agent)


def read_stats(reader: InMemoryMetricReader, agent: str | None = None) -> list[AgentStats]:
    """Per-agent stats from `reader`, most called first; only `agent` when given."""
    return rows_from_points(agent_points(reader.get_metrics_data()), agent)


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
