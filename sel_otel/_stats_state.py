"""One instance's agent-call histogram as it travels between instances.

What is published is the stats reader's own data: the cumulative points of the agent-call
histogram, one per attribute set (agent, cache hit, error type), with their count, sum, min,
max, bucket counts and bucket boundaries, and who published them. On the wire it is a JSON
head line (who, the boundaries, the agents with their number of points, and the points'
attribute sets but for the agent, each once), then the points in binary columns, grouped by
agent, little-endian: each point's attribute set (uint32), then every point's sum, min and
max (float64) and count (uint64), then each point's bucket counts (uint64). A reader unpacks
a column at a time: no JSON number to parse, no object per point. It refuses a point whose
bucket counts do not add up to its count, or a count that adding up could carry into the
next bucket (see `_stats.COUNT_LIMIT`): a corrupt or forged payload.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import HistogramDataPoint

from . import _semconv as names
from ._stats import COUNT_LIMIT, Points, agent_name, buckets_add_up, counts_below_limit, kind

#: The payload's layout; a reader skips a layout it does not know (an instance of another
#: version, in a rolling deploy).
FORMAT = 3


@dataclass(frozen=True)
class InstanceState:
    """The figures of one instance's life (`instance` started at `started`)."""

    instance: str  # its `service.instance.id`
    started: float  # seconds since the epoch: a restart is a new life, even with the same id
    points: Points  # its agent-call points
    age: float = 0.0  # seconds since it was published; 0 for the live figures of this process

    @property
    def bounds(self) -> tuple[float, ...]:
        """The bucket boundaries of its histogram."""
        return self.points.bounds


def member(instance: str, started: float) -> str:
    """The name of an instance's life among the published states: its start in
    milliseconds, then its id."""
    return f"{round(started * 1000)}:{instance}"


def instance_of(name: bytes) -> str:
    """The instance whose life `name` is (a `member`, as Redis lists it)."""
    return name.partition(b":")[2].decode(errors="replace")


def encode(
    instance: str, started: float, expiry: float, points: Iterable[HistogramDataPoint]
) -> bytes:
    """The payload of `points`, published by `instance` to live `expiry` seconds."""
    by_agent: dict[str, list[HistogramDataPoint]] = {}
    for point in points:
        by_agent.setdefault(agent_name(point.attributes or {}), []).append(point)
    ordered = [point for group in by_agent.values() for point in group]
    bounds = tuple(ordered[0].explicit_bounds) if ordered else ()
    sets: dict[tuple[tuple[str, object], ...], int] = {}  # attribute sets but for the agent
    numbered = []
    for point in ordered:
        if tuple(point.explicit_bounds) != bounds:  # one instrument has one aggregation
            raise ValueError("points of one histogram with different bucket boundaries")
        rest = tuple(
            item for item in (point.attributes or {}).items() if item[0] != names.GEN_AI_AGENT_NAME
        )
        numbered.append(sets.setdefault(rest, len(sets)))
    head = {
        "format": FORMAT,
        "instance": instance,
        "started": started,
        "expiry": expiry,
        "bounds": bounds,
        "agents": list(by_agent),
        "sizes": [len(group) for group in by_agent.values()],
        "attributes": [dict(rest) for rest in sets],
    }
    count, width = len(ordered), len(bounds) + 1
    body = struct.pack(
        f"<{count}I{3 * count}d{count * (1 + width)}Q",
        *numbered,
        *(point.sum for point in ordered),
        *(point.min for point in ordered),
        *(point.max for point in ordered),
        *(point.count for point in ordered),
        *itertools.chain.from_iterable(point.bucket_counts for point in ordered),
    )
    # json.dumps writes a newline inside a string as `\n`: the first raw newline ends the head
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + body


def decode(
    raw: bytes, remaining: float, earlier: Mapping[bytes, Points] | None = None
) -> InstanceState:
    """The state in a payload that has `remaining` seconds to live (its points taken from
    `earlier` when it holds the same payload, not unpacked again); ValueError if it is not
    one this version can read."""
    line, _, body = raw.partition(b"\n")
    try:
        head = json.loads(line)
        if head["format"] != FORMAT:
            raise ValueError(f"payload format {head['format']!r}, not {FORMAT}")
        points = earlier.get(raw) if earlier else None
        return InstanceState(
            str(head["instance"]),
            float(head["started"]),
            _points(head, body) if points is None else points,
            age=max(float(head["expiry"]) - remaining, 0.0),
        )
    except (KeyError, TypeError, AttributeError, IndexError, RecursionError, struct.error) as exc:
        raise ValueError(f"not a stats payload: {exc!r}") from exc


def _points(head: dict[str, Any], body: bytes) -> Points:
    """The points whose head is `head`, from their binary columns `body`."""
    bounds = tuple(map(float, head["bounds"]))
    agents, sizes = list(map(str, head["agents"])), list(map(int, head["sizes"]))
    kinds = [kind(_attributes(attributes)) for attributes in head["attributes"]]
    if len(sizes) != len(agents) or len(set(agents)) != len(agents) or min(sizes, default=1) < 1:
        raise ValueError("agents and their numbers of points do not match")
    count, width = sum(sizes), len(bounds) + 1
    if len(body) != count * (36 + 8 * width):
        raise ValueError(f"{len(body)} bytes of points, not {count * (36 + 8 * width)}")
    numbered = struct.unpack_from(f"<{count}I", body)
    if numbered and max(numbered) >= len(kinds):
        raise ValueError("a point of no attribute set")
    counted = body[28 * count :]  # each point's count, then each point's bucket counts
    if not counts_below_limit(counted):
        raise ValueError(f"a count of {COUNT_LIMIT} or more: adding it up could carry")
    if not buckets_add_up(counted[: 8 * count], counted[8 * count :], width):
        raise ValueError("a point whose bucket counts do not add up to its count")
    floats = struct.unpack_from(f"<{3 * count}d", body, 4 * count)
    counts = struct.unpack_from(f"<{count}Q", body, 28 * count)
    return Points.of(
        bounds,
        agents,
        sizes,
        kinds,
        numbered,
        counts,
        floats[:count],
        floats[count : 2 * count],
        floats[2 * count :],
        body[36 * count :],
    )


def _attributes(value: object) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise TypeError(f"attributes {value!r}")
    return value
