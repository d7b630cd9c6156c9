"""History benchmark: what recording every call costs, and how fast the history is read.

Prints, from one run:
- a cached call end to end (`await runtime.run(...)`, cache hit, span exported through a
  BatchSpanProcessor as deployed) with the history on (SQLite, written by its writer thread)
  and off, interleaved, REPETITIONS times: wall time per call, medians with their range, and
  the ratio on / off (target <= 1.15); the same for the CPU time of the process per call, all
  threads (the writer's too: each "on" measure ends when its entries are written); then how
  many entries were written and dropped, and where the CPU goes: the event loop's share
  (a third variant, interleaved with the others, queues every entry to a sink that writes
  nothing) and the SQLite writer thread's own CPU per entry;
- a history query over a file of ROWS entries (10 agents, 1,000 users, 90 % ok, 5 % error,
  5 % refused) for each filter, as `/sel_agent_history` and `sel-otel history` run it (a
  read-only connection per query): medians with their range (target <= 50 ms); and the rate
  the file was filled at, through the writer thread's batched writes (`write_rows`).
The load average is printed at the start and at the end.

Run: .venv/bin/python bench/bench_history.py [--rows 1000000] [--repetitions 7]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from _common import DiscardingExporter, load_average, per_call_seconds, summary
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from sel_otel import (
    AgentRegistry,
    AgentResult,
    AgentRuntime,
    LRUMemoryCache,
    ResultCache,
    stats_reader,
)
from sel_otel._history import History, HistoryEntry, HistoryQuery, HistorySink, Row, RowFormat
from sel_otel._history_sqlite import SqliteHistoryStore
from sel_otel._metric_data import data_points

CALLS_PER_ROUND = 2_000
ROUNDS = 5
QUERY_REPEATS = 15
BATCH = 10_000


class TimedStore(SqliteHistoryStore):
    """The SQLite store, adding up its writer thread's CPU time in `write_rows`."""

    cpu = 0.0
    entries = 0

    def write_rows(self, rows: Sequence[Row], format: RowFormat) -> None:
        started = time.thread_time()
        super().write_rows(rows, format)
        self.cpu += time.thread_time() - started
        self.entries += len(rows)


class QueueOnly(HistorySink):
    """A sink that writes nothing: what is left of the history's cost is the event loop's
    (building and queueing each row) and its writer thread's taking them."""

    name = "queue-only"

    def write(self, entries: Sequence[HistoryEntry]) -> None:
        pass

    def write_rows(self, rows: Sequence[Row], format: RowFormat) -> None:
        pass

    def close(self) -> None:
        pass


async def call_cost(directory: Path, repetitions: int) -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DiscardingExporter()))
    reader = stats_reader()
    meter_provider = MeterProvider(metric_readers=[reader])
    agents = directory / "agents"
    agents.mkdir()
    (agents / "echo.py").write_text("DESCRIPTION = 'echo'\ndef run(q):\n    return q\n")
    registry = AgentRegistry(agents)
    registry.reload()
    store = TimedStore(directory / "history.db", max_age=1e9, max_rows=10_000_000)
    history = History([store], instance="bench", meter_provider=meter_provider)
    queued = History([QueueOnly()], instance="bench", meter_provider=meter_provider)
    histories = {"on": history, "queued": queued}
    for each in histories.values():
        each.open()

    def runtime(with_history: History | None) -> AgentRuntime:
        return AgentRuntime(
            registry,
            ResultCache(LRUMemoryCache(500)),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            history=with_history,
        )

    variants = {"off": runtime(None), "on": runtime(history), "queued": runtime(queued)}
    for variant in variants.values():
        await variant.run("echo", "uname -a", user="1234", frontend="discord")  # fill the cache

    def cached_call(variant: AgentRuntime) -> Callable[[], Awaitable[AgentResult]]:
        return lambda: variant.run("echo", "uname -a", user="1234", frontend="discord")

    timings: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    ratios, cpu_ratios = [], []
    for repetition in range(repetitions):
        shift = repetition % len(variants)
        order = [*variants][shift:] + [*variants][:shift]
        for name in order:
            started = time.process_time()
            timings[name].append(
                await per_call_seconds(
                    cached_call(variants[name]), rounds=ROUNDS, calls_per_round=CALLS_PER_ROUND
                )
            )
            if name in histories:  # the writer's work for these calls counts in their CPU
                await histories[name].flush()
            cpu[name].append((time.process_time() - started) / (ROUNDS * CALLS_PER_ROUND))
        ratios.append(timings["on"][-1] / timings["off"][-1])
        cpu_ratios.append(cpu["on"][-1] / cpu["off"][-1])
    for variant in variants.values():
        await variant.aclose()
    for each in histories.values():
        await each.aclose(30.0)
    written = len(store.query(HistoryQuery(limit=10_000_000)))
    dropped = sum(
        point.value
        for point in data_points(reader.get_metrics_data(), "sel.history.dropped")
        if isinstance(point, NumberDataPoint)
    )
    tracer_provider.shutdown()
    meter_provider.shutdown()

    print(f"cached call, history off: {summary(timings['off'], 1e6, 'µs/call')}")
    print(f"cached call, history on : {summary(timings['on'], 1e6, 'µs/call')}")
    print(
        f"ratio on / off          : {statistics.median(ratios):8.3f}    "
        f"(range {min(ratios):.3f}-{max(ratios):.3f}; target <= 1.15)"
    )
    print(f"CPU per call, all threads, off: {summary(cpu['off'], 1e6, 'µs')}")
    print(f"CPU per call, all threads, on : {summary(cpu['on'], 1e6, 'µs')}")
    print(
        f"CPU ratio on / off      : {statistics.median(cpu_ratios):8.3f}    "
        f"(range {min(cpu_ratios):.3f}-{max(cpu_ratios):.3f})"
    )
    print(f"entries written         : {written:,} ({dropped:,} dropped)")
    print(f"CPU per call, queued only: {summary(cpu['queued'], 1e6, 'µs')}")
    loop = statistics.median(cpu["queued"]) - statistics.median(cpu["off"])
    writer = store.cpu / max(store.entries, 1)
    print(f"CPU per call, event loop and queue (queued - off): {loop * 1e6:8.2f} µs")
    print(f"CPU per entry, SQLite writer thread (write_rows) : {writer * 1e6:8.2f} µs")


def fill(store: SqliteHistoryStore, rows: int) -> float:
    """Write `rows` entries through the store, as its writer thread does (`write_rows`, the
    rows the event loop queues); the rate, in entries per second."""
    agents = [f"agent{n}" for n in range(10)]
    users = [str(100_000_000_000_000_000 + n) for n in range(1000)]
    outcomes = ["ok"] * 18 + ["error", "refused"]
    errors = {"ok": None, "error": "timeout", "refused": "forbidden"}
    row_format = RowFormat("bench", "bench")
    rng = random.Random(16)
    start_time = time.time() - rows * 0.01
    started = time.perf_counter()
    for first in range(0, rows, BATCH):
        batch = []
        for n in range(first, min(first + BATCH, rows)):
            outcome = rng.choice(outcomes)
            batch.append(
                (
                    n,
                    start_time + n * 0.01,
                    rng.choice(agents),
                    "uname -a",
                    rng.choice(users),
                    "discord",
                    outcome,
                    errors[outcome],
                    0.0015,
                    outcome == "ok",
                    n + 1,
                    n + 1,
                    None,
                )
            )
        store.write_rows(batch, row_format)
    return rows / (time.perf_counter() - started)


def query_latency(directory: Path, rows: int) -> None:
    store = SqliteHistoryStore(directory / "big.db", max_age=1e9, max_rows=rows)
    rate = fill(store, rows)
    store.close()
    user = str(100_000_000_000_000_042)
    queries = {
        "none (latest 20)": HistoryQuery(),
        "agent": HistoryQuery(agent="agent3"),
        "user": HistoryQuery(user=user),
        "outcome=refused": HistoryQuery(outcome="refused"),
        "agent + user": HistoryQuery(agent="agent3", user=user),
        "user + outcome=error": HistoryQuery(user=user, outcome="error"),
        "agent + user + outcome": HistoryQuery(agent="agent3", user=user, outcome="refused"),
        "agent with no entries": HistoryQuery(agent="nobody"),
        "limit 50, agent": HistoryQuery(agent="agent3", limit=50),
    }
    print(f"history file            : {rows:,} entries, filled at {rate:,.0f} entries/s")
    worst = 0.0
    for name, query in queries.items():
        timings = []
        for _ in range(QUERY_REPEATS):
            started = time.perf_counter()
            found = store.query(query)
            timings.append(time.perf_counter() - started)
        worst = max(worst, statistics.median(timings))
        print(f"query, filter {name:<24}: {summary(timings, 1e3, 'ms')}  {len(found)} found")
    print(f"slowest median query    : {worst * 1e3:8.2f} ms  (target <= 50)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repetitions", type=int, default=7)
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min) at start: {load_average()}")
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(call_cost(Path(directory), args.repetitions))
        query_latency(Path(directory), args.rows)
    print(f"load average (1, 5, 15 min) at end  : {load_average()}")


if __name__ == "__main__":
    main()
