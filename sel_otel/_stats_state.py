"""One instance's agent-call histogram as it travels between instances.

What is published is the stats reader's own data: the cumulative points of the agent-call
histogram, one per attribute set (agent, cache hit, error type), with their count, sum, min,
max, bucket counts and bucket boundaries, and who published them. On the wire it is compact
JSON: the attribute names once, each point's values in that order; the boundaries once,
repeated in a point only where they differ; bucket counts without their trailing zeros.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import HistogramDataPoint

#: The payload's layout; a reader skips a layout it does not know.
FORMAT = 1


@dataclass(frozen=True)
class InstanceState:
    """The agent-call points of one instance's life (`instance` started at `started`)."""

    instance: str  # its `service.instance.id`
    started: float  # seconds since the epoch: a restart is a new life, even with the same id
    points: tuple[HistogramDataPoint, ...]
    age: float = 0.0  # seconds since it was published; 0 for the live figures of this process

    @property
    def member(self) -> str:
        """Its name among the published states: the start in milliseconds, then the id."""
        return member(self.instance, self.started)


def member(instance: str, started: float) -> str:
    return f"{round(started * 1000)}:{instance}"


def encode(
    instance: str, started: float, expiry: float, points: Iterable[HistogramDataPoint]
) -> bytes:
    """The JSON payload of `points`, published by `instance` to live `expiry` seconds."""
    points = list(points)
    keys = sorted({key for point in points for key in point.attributes or {}})
    bounds = list(points[0].explicit_bounds) if points else []
    encoded: list[list[Any]] = []
    for point in points:
        attributes = point.attributes or {}
        counts = list(point.bucket_counts)
        while counts and not counts[-1]:
            counts.pop()
        row = [
            [attributes.get(key) for key in keys],
            point.count,
            point.sum,
            point.min,
            point.max,
            counts,
        ]
        if list(point.explicit_bounds) != bounds:
            row.append(list(point.explicit_bounds))
        encoded.append(row)
    payload = {
        "format": FORMAT,
        "instance": instance,
        "started": started,
        "expiry": expiry,
        "keys": keys,
        "bounds": bounds,
        "points": encoded,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def decode(raw: bytes, remaining: float) -> InstanceState:
    """The state in a payload that has `remaining` seconds to live; ValueError if it is not
    one this version can read."""
    try:
        payload = json.loads(raw)
        if payload["format"] != FORMAT:
            raise ValueError(f"payload format {payload['format']!r}, not {FORMAT}")
        keys: list[str] = payload["keys"]
        default_bounds: Sequence[float] = tuple(payload["bounds"])
        points = []
        for values, count, total, minimum, maximum, counts, *own in payload["points"]:
            bounds = tuple(own[0]) if own else default_bounds
            padding = len(bounds) + 1 - len(counts)
            if padding < 0 or len(keys) != len(values):
                raise ValueError("bucket counts or attributes do not match")
            points.append(
                HistogramDataPoint(
                    attributes={k: v for k, v in zip(keys, values, strict=True) if v is not None},
                    start_time_unix_nano=0,
                    time_unix_nano=0,
                    count=int(count),
                    sum=float(total),
                    bucket_counts=[*map(int, counts), *[0] * padding],
                    explicit_bounds=bounds,
                    min=float(minimum),
                    max=float(maximum),
                )
            )
        return InstanceState(
            str(payload["instance"]),
            float(payload["started"]),
            tuple(points),
            age=max(float(payload["expiry"]) - remaining, 0.0),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a stats payload: {exc!r}") from exc
