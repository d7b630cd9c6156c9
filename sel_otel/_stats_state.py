"""One instance's agent-call histogram as it travels between instances.

What is published is the stats reader's own data: the cumulative points of the agent-call
histogram, one per attribute set (agent, cache hit, error type), with their count, sum, min,
max, bucket counts and bucket boundaries, and who published them. On the wire it is compact
JSON lines: a head line (who, the boundaries, the attribute names of each group of points),
then a line per agent, its points grouped, each with its attribute values in the order of
its group's names; bucket counts without their trailing zeros. A reader adds the points up
per agent as it decodes them, and parses again only the lines that changed since its last
read: an agent with no new calls publishes the same bytes.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from opentelemetry.sdk.metrics.export import HistogramDataPoint

from . import _semconv as names
from ._stats import AgentStats, rows_from_points

#: The payload's layout; a reader skips a layout it does not know.
FORMAT = 2


@dataclass(frozen=True)
class InstanceState:
    """The figures of one instance's life (`instance` started at `started`), per agent."""

    instance: str  # its `service.instance.id`
    started: float  # seconds since the epoch: a restart is a new life, even with the same id
    rows: Mapping[str, AgentStats]  # per agent, added up from its points
    bounds: tuple[float, ...]  # the bucket boundaries of its histogram
    age: float = 0.0  # seconds since it was published; 0 for the live figures of this process

    @classmethod
    def from_points(
        cls, instance: str, started: float, points: Sequence[HistogramDataPoint]
    ) -> InstanceState:
        """The live figures of a reader's points."""
        rows = {row.agent: row for row in rows_from_points(points)}
        bounds = tuple(points[0].explicit_bounds) if points else ()
        return cls(instance, started, rows, bounds)


def member(instance: str, started: float) -> str:
    """The name of an instance's life among the published states: its start in
    milliseconds, then its id."""
    return f"{round(started * 1000)}:{instance}"


def encode(
    instance: str, started: float, expiry: float, points: Iterable[HistogramDataPoint]
) -> bytes:
    """The JSON-lines payload of `points`, published by `instance` to live `expiry` seconds:
    a head line, then a line per agent."""
    points = list(points)
    bounds = tuple(points[0].explicit_bounds) if points else ()
    agents: dict[str, dict[int, list[list[Any]]]] = {}
    keys: dict[tuple[str, ...], int] = {}  # the attribute names of each group, numbered
    for point in points:
        attributes = point.attributes or {}
        counts = list(point.bucket_counts)
        while counts and not counts[-1]:
            counts.pop()
        if tuple(point.explicit_bounds) != bounds:  # one instrument has one aggregation
            raise ValueError("points of one histogram with different bucket boundaries")
        row = [list(attributes.values()), point.count, point.sum, point.min, point.max, counts]
        group = keys.setdefault(tuple(attributes), len(keys))
        groups = agents.setdefault(str(attributes.get(names.GEN_AI_AGENT_NAME, "?")), {})
        groups.setdefault(group, []).append(row)
    head = {
        "format": FORMAT,
        "instance": instance,
        "started": started,
        "expiry": expiry,
        "bounds": bounds,
        "keys": list(keys),
    }
    lines: list[Any] = [head]
    for groups in agents.values():  # an agent's groups in the order of all points'
        lines.append([[group, rows] for group, rows in sorted(groups.items())])
    # json.dumps writes a newline inside a string as `\n`: a raw newline only ends a line
    return "\n".join(json.dumps(line, separators=(",", ":")) for line in lines).encode()


#: What the lines of a payload are read with: its bucket boundaries and attribute names.
Context = tuple[tuple[float, ...], tuple[tuple[str, ...], ...]]
#: Agents' lines decoded, by context, then by the line's bytes.
Lines = dict[Context, dict[bytes, dict[str, AgentStats]]]


class DecodedLines:
    """The agents' lines decoded by one read: those `earlier` holds are not parsed again
    (in the same context, the same bytes are the same figures). `found` is what the read
    saw, for the next one."""

    def __init__(self, earlier: Lines | None = None) -> None:
        self.earlier: Lines = earlier or {}
        self.found: Lines = {}

    def rows(self, context: Context, lines: list[bytes]) -> list[dict[str, AgentStats]]:
        """The rows of each of `lines`, read in `context`; the new lines parsed together,
        as one JSON array (one parse, not one a line)."""
        earlier = self.earlier.get(context, {})
        found = self.found.setdefault(context, {})
        known = [earlier.get(line) or found.get(line) for line in lines]
        new = [line for line, rows in zip(lines, known, strict=True) if rows is None]
        values = json.loads(b"[" + b",".join(new) + b"]") if new else []
        if len(values) != len(new):  # a line that is not one JSON value
            raise ValueError(f"{len(new)} lines, {len(values)} values")
        parsed = iter(values)
        bounds, keys = context
        layouts, width = [_layout(group) for group in keys], len(bounds) + 1
        for index, (line, rows) in enumerate(zip(lines, known, strict=True)):
            if rows is None:
                sums = _add_groups({}, next(parsed), layouts, width)
                rows = known[index] = _rows(sums, bounds)
            found[line] = rows
        return cast(list[dict[str, AgentStats]], known)


def decode(raw: bytes, remaining: float, lines: DecodedLines | None = None) -> InstanceState:
    """The state in a payload that has `remaining` seconds to live, its points added up per
    agent as they are read (the lines `lines` has seen are not parsed again); ValueError if
    it is not one this version can read."""
    lines = DecodedLines() if lines is None else lines
    try:
        head, *agents = raw.split(b"\n")
        payload = json.loads(head)
        if payload["format"] != FORMAT:
            raise ValueError(f"payload format {payload['format']!r}, not {FORMAT}")
        bounds = tuple(payload["bounds"])
        keys = tuple(tuple(map(str, group)) for group in payload["keys"])
        rows: dict[str, AgentStats] = {}
        for agent_rows in lines.rows((bounds, keys), agents):
            for name, row in agent_rows.items():
                if name in rows:
                    raise ValueError(f"agent {name!r} on two lines")
                rows[name] = row
        return InstanceState(
            str(payload["instance"]),
            float(payload["started"]),
            rows,
            bounds,
            age=max(float(payload["expiry"]) - remaining, 0.0),
        )
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"not a stats payload: {exc!r}") from exc


#: Where a group's points hold what the stats need: the number of attribute values, and the
#: places of the agent, the cache hit and the error type among them (-1: not there).
Layout = tuple[int, int, int, int]


def _layout(keys: tuple[str, ...]) -> Layout:
    hit_at = keys.index(names.SEL_CACHE_HIT) if names.SEL_CACHE_HIT in keys else -1
    error_at = keys.index(names.ERROR_TYPE) if names.ERROR_TYPE in keys else -1
    return len(keys), keys.index(names.GEN_AI_AGENT_NAME), hit_at, error_at


def _add_groups(
    sums: dict[str, list[Any]], groups: Any, layouts: Sequence[Layout], width: int
) -> dict[str, list[Any]]:
    """`sums` (per agent: calls, cached, errors, threads exhausted, seconds, min, max, bucket
    counts) with the points of `groups` (of the group numbered in `layouts`) added, in their
    order."""
    for group, points in groups:
        arity, agent_at, hit_at, error_at = layouts[group]
        for values, count, seconds, minimum, maximum, counts in points:
            if len(counts) > width or len(values) != arity:
                raise ValueError("bucket counts or attributes do not match")
            name = str(values[agent_at])
            row = sums.get(name)
            if row is None:
                row = sums[name] = [0, 0, 0, 0, 0.0, float("inf"), 0.0, [0] * width]
            count = int(count)
            row[0] += count
            if hit_at >= 0 and values[hit_at] is True:
                row[1] += count
            error = values[error_at] if error_at >= 0 else None
            if error is not None:
                row[2] += count
                if error == names.ERROR_THREADS_EXHAUSTED:
                    row[3] += count
            row[4] += float(seconds)
            row[5] = min(row[5], float(minimum))
            row[6] = max(row[6], float(maximum))
            buckets = row[7]
            buckets[: len(counts)] = map(operator.add, buckets, counts)
    return sums


def _rows(sums: dict[str, list[Any]], bounds: tuple[float, ...]) -> dict[str, AgentStats]:
    return {
        name: AgentStats(name, calls, cached, errors, seconds, bounds, buckets, low, high, gone)
        for name, (calls, cached, errors, gone, seconds, low, high, buckets) in sums.items()
    }
