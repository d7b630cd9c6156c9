"""Pieces shared by the benchmark scripts (imported as `_common`: scripts run from bench/)."""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class DiscardingExporter(SpanExporter):
    """Accepts every batch, so a benchmark measures the SDK, not a network."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def per_call_seconds(
    call: Callable[[], Awaitable[object]], *, rounds: int, calls_per_round: int
) -> float:
    """Median seconds per call over `rounds` rounds of `calls_per_round` awaited calls."""
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls_per_round):
            await call()
        timings.append((time.perf_counter() - start) / calls_per_round)
    return statistics.median(timings)
