"""History benchmark: what recording every call costs, and how fast the history is read.

Prints, from one run:
- a cached call end to end (`await runtime.run(...)`, cache hit, span exported through a
  BatchSpanProcessor, the start-up heap frozen: as a started app runs it) with the history
  on (SQLite, written by its writer thread) and off, interleaved, REPETITIONS times: wall
  time per call, medians with their range, and the ratio on / off (target <= 1.15); the same
  for the CPU time of the process per call, all threads (the writer's too: each "on" measure
  ends when its entries are written); then how many entries were written and dropped, and
  where the CPU goes: the event loop's share (a third variant, interleaved with the others,
  queues every entry to a sink that writes nothing) and the SQLite writer thread's own CPU
  per entry;
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
import itertools
import operator
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

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
from sel_otel._app import freeze_heap
from sel_otel._history import History, HistoryEntry, HistoryQuery, HistorySink, Row, RowFormat
from sel_otel._history_sqlite import (
    _SCHEMA,
    CACHE_KIB,
    PAGE_SIZE,
    ROWS_PER_INSERT,
    SqliteHistoryStore,
)
from sel_otel._metric_data import data_points

CALLS_PER_ROUND = 2_000
ROUNDS = 5
QUERY_REPEATS = 15
BATCH = 10_000
SHAPE_BATCH = 4096
SHAPE_BATCHES = 40


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
    freeze_heap()  # as a started SelApp does

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


Ids = Sequence[int]


def _hex_ids(counts: Ids, traces: Ids, spans: Ids) -> list[list[Any]]:
    return [
        [*map("bench-{:x}".format, counts)],
        [*map(bytes.hex, map(int.to_bytes, traces, itertools.repeat(16)))],
        [*map(bytes.hex, map(int.to_bytes, spans, itertools.repeat(8)))],
    ]


def _blob_ids(counts: Ids, traces: Ids, spans: Ids) -> list[list[Any]]:
    return [
        [*map("bench-{:x}".format, counts)],
        [*map(int.to_bytes, traces, itertools.repeat(16))],
        [*map(int.to_bytes, spans, itertools.repeat(8))],
    ]


def _signed(numbers: Iterator[int]) -> list[int]:
    """Unsigned 64-bit numbers as SQLite's signed ones."""
    unsigned = [*numbers]
    high = map(
        operator.lshift, map(operator.rshift, unsigned, itertools.repeat(63)), itertools.repeat(64)
    )
    return [*map(operator.sub, unsigned, high)]


def _integer_ids(counts: Ids, traces: Ids, spans: Ids) -> list[list[Any]]:
    return [
        [*counts],
        _signed(map(operator.rshift, traces, itertools.repeat(64))),
        _signed(map(operator.and_, traces, itertools.repeat(2**64 - 1))),
        _signed(iter(spans)),
    ]


#: Id columns of each row shape, and how a batch's ids are converted for them.
SHAPES: dict[str, tuple[str, Callable[[Ids, Ids, Ids], list[list[Any]]]]] = {
    "ids as hex text (as stored)": ("id TEXT, trace_id TEXT, span_id TEXT", _hex_ids),
    "trace/span ids as blobs": ("id TEXT, trace_id BLOB, span_id BLOB", _blob_ids),
    "ids as integers": (
        "id INTEGER, trace_hi INTEGER, trace_lo INTEGER, span_id INTEGER",
        _integer_ids,
    ),
}
_SHAPE_TABLE = (
    "CREATE TABLE history (seq INTEGER PRIMARY KEY, time REAL NOT NULL, agent TEXT NOT NULL, "
    "input TEXT, user_id TEXT, frontend TEXT, outcome TEXT NOT NULL, error_type TEXT, "
    "duration_ms REAL NOT NULL, cached INTEGER NOT NULL, instance TEXT NOT NULL, output TEXT, {})"
)


def _shape_connection(path: Path, id_columns: str) -> sqlite3.Connection:
    """A file with the store's settings and indexes, its ids in `id_columns`."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    connection.execute(_SHAPE_TABLE.format(id_columns))
    for line in _SCHEMA.splitlines():
        if line.startswith("CREATE INDEX"):
            connection.execute(line)
    return connection


def row_shapes(directory: Path) -> None:
    rng = random.Random(16)
    agents = [f"agent{n}" for n in range(10)]
    users = [str(100_000_000_000_000_000 + n) for n in range(1000)]
    outcomes = ["ok"] * 18 + ["error", "refused"]
    row_format = RowFormat("bench", "bench")
    store = SqliteHistoryStore(directory / "store.db", max_age=1e9, max_rows=10_000_000)
    connections = {
        name: _shape_connection(directory / f"shape{n}.db", columns)
        for n, (name, (columns, _)) in enumerate(SHAPES.items())
    }
    cpu: dict[str, list[float]] = {name: [] for name in [*SHAPES, "store"]}
    count = 0
    for batch in range(SHAPE_BATCHES):
        counts = range(count, count + SHAPE_BATCH)
        count += SHAPE_BATCH
        times = [time.time() + n * 1e-4 for n in range(SHAPE_BATCH)]
        agent = [rng.choice(agents) for _ in counts]
        user = [rng.choice(users) for _ in counts]
        outcome = [rng.choice(outcomes) for _ in counts]
        traces = [rng.getrandbits(128) for _ in counts]
        spans = [rng.getrandbits(64) for _ in counts]
        rows = [
            (n, t, a, "uname -a", u, "discord", o, None, 0.0015, o == "ok", trace, span, None)
            for n, t, a, u, o, trace, span in zip(
                counts, times, agent, user, outcome, traces, spans, strict=True
            )
        ]
        names = [*cpu]
        for name in names[batch % len(names) :] + names[: batch % len(names)]:
            started = time.process_time()
            if name == "store":
                store.write_rows(rows, row_format)
            else:
                _write_shape(connections[name], SHAPES[name][1], rows, counts, traces, spans)
            cpu[name].append((time.process_time() - started) / SHAPE_BATCH)
    store.close()
    files = {name: directory / f"shape{n}.db" for n, name in enumerate(SHAPES)} | {
        "store": store.path
    }
    first = next(iter(SHAPES))
    for name, entries in cpu.items():
        if name in connections:
            connections[name].execute("PRAGMA wal_checkpoint(TRUNCATE)")
            connections[name].close()
        size = files[name].stat().st_size / count
        label = "the store's write_rows" if name == "store" else name
        ratios = [*map(operator.truediv, entries, cpu[first])]
        print(
            f"writer CPU per entry, {label:<28}: {summary(entries, 1e6, 'µs')}  "
            f"{size:4.0f} B/entry, x{statistics.median(ratios):.3f} the first's batch by batch "
            f"(range {min(ratios):.3f}-{max(ratios):.3f})"
        )


def _write_shape(
    connection: sqlite3.Connection,
    convert: Callable[[Ids, Ids, Ids], list[list[Any]]],
    rows: list[tuple[Any, ...]],
    counts: Ids,
    traces: Ids,
    spans: Ids,
) -> None:
    """`rows` converted column by column, as the store does, in statements of ROWS_PER_INSERT."""
    ids = convert(counts, traces, spans)
    (_, times, agents, inputs, users, frontends, outcomes, _, durations, cached, *_) = zip(
        *rows, strict=True
    )
    columns = [
        *ids, times, agents, inputs, users, frontends, outcomes,
        [*map(operator.mul, durations, itertools.repeat(1000.0))], [*map(int, cached)],
    ]  # fmt: skip
    names = _SHAPE_NAMES[len(ids)]
    row = f"(?1, {', '.join('?' * len(columns))})"
    sql = f"INSERT INTO history (instance, {names}) VALUES " + ", ".join([row] * ROWS_PER_INSERT)
    connection.execute("BEGIN IMMEDIATE")
    for start in range(0, len(rows), ROWS_PER_INSERT):
        values: list[Any] = ["bench"]
        values += itertools.chain.from_iterable(
            zip(*(column[start : start + ROWS_PER_INSERT] for column in columns), strict=True)
        )
        connection.execute(sql, values)
    connection.execute("COMMIT")


_VALUE_COLUMNS = "time, agent, input, user_id, frontend, outcome, duration_ms, cached"
_SHAPE_NAMES = {
    3: f"id, trace_id, span_id, {_VALUE_COLUMNS}",
    4: f"id, trace_hi, trace_lo, span_id, {_VALUE_COLUMNS}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--row-shapes", action="store_true")
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min) at start: {load_average()}")
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(call_cost(Path(directory), args.repetitions))
        query_latency(Path(directory), args.rows)
        if args.row_shapes:
            row_shapes(Path(directory))
    print(f"load average (1, 5, 15 min) at end  : {load_average()}")


if __name__ == "__main__":
    main()
