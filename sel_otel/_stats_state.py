"""One instance's agent-call histogram as it travels between instances.

What is published is the stats reader's own data: the cumulative points of the agent-call
histogram, one per attribute set (agent, cache hit, error type), with their count, sum, min,
max, bucket counts and bucket boundaries, and who published them. On the wire it is compact
JSON: points grouped by their attribute names, written once a group, each point with its
values in that order; the boundaries once; bucket counts without their trailing zeros. A
reader adds the points up per agent as it decodes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import HistogramDataPoint

from . import _semconv as names
from ._stats import AgentStats, rows_from_points

#: The payload's layout; a reader skips a layout it does not know.
FORMAT = 1


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
    """The JSON payload of `points`, published by `instance` to live `expiry` seconds."""
    points = list(points)
    bounds = tuple(points[0].explicit_bounds) if points else ()
    groups: dict[tuple[str, ...], list[list[Any]]] = {}
    for point in points:
        attributes = point.attributes or {}
        counts = list(point.bucket_counts)
        while counts and not counts[-1]:
            counts.pop()
        if tuple(point.explicit_bounds) != bounds:  # one instrument has one aggregation
            raise ValueError("points of one histogram with different bucket boundaries")
        row = [list(attributes.values()), point.count, point.sum, point.min, point.max, counts]
        groups.setdefault(tuple(attributes), []).append(row)
    payload = {
        "format": FORMAT,
        "instance": instance,
        "started": started,
        "expiry": expiry,
        "bounds": bounds,
        "groups": [[list(keys), rows] for keys, rows in groups.items()],
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def decode(raw: bytes, remaining: float) -> InstanceState:
    """The state in a payload that has `remaining` seconds to live, its points added up per
    agent as they are read; ValueError if it is not one this version can read."""
    try:
        payload = json.loads(raw)
        if payload["format"] != FORMAT:
            raise ValueError(f"payload format {payload['format']!r}, not {FORMAT}")
        bounds = tuple(payload["bounds"])
        rows: dict[str, AgentStats] = {}
        for keys, points in payload["groups"]:
            agent_at = keys.index(names.GEN_AI_AGENT_NAME)
            hit_at = keys.index(names.SEL_CACHE_HIT) if names.SEL_CACHE_HIT in keys else -1
            error_at = keys.index(names.ERROR_TYPE) if names.ERROR_TYPE in keys else -1
            for values, count, total, minimum, maximum, counts in points:
                padding = len(bounds) + 1 - len(counts)
                if padding < 0 or len(values) != len(keys):
                    raise ValueError("bucket counts or attributes do not match")
                name = str(values[agent_at])
                row = rows.get(name)
                if row is None:
                    row = rows[name] = AgentStats(name)
                cached = hit_at >= 0 and values[hit_at] is True
                error = values[error_at] if error_at >= 0 else None
                row._fold(
                    int(count),
                    int(count) if cached else 0,
                    int(count) if error is not None else 0,
                    float(total),
                    float(minimum),
                    float(maximum),
                    bounds,
                    counts + [0] * padding if padding else counts,
                )
                if error == names.ERROR_THREADS_EXHAUSTED:
                    row.threads_exhausted += int(count)
        return InstanceState(
            str(payload["instance"]),
            float(payload["started"]),
            rows,
            bounds,
            age=max(float(payload["expiry"]) - remaining, 0.0),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a stats payload: {exc!r}") from exc
