"""The history store on a real SQLite file: what an entry keeps, filters, retention, batching
off the event loop, and failures that drop entries (counted, logged once) but never raise."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry import trace

from sel_otel._history import (
    ContentPolicy,
    History,
    HistoryEntry,
    HistoryQuery,
    HistoryReader,
    HistoryStore,
    Row,
    RowFormat,
)
from sel_otel._history_sqlite import SqliteHistoryStore
from sel_otel._redact import scrub
from tests.conftest import TelemetryFixture
from tests.waiting import wait_until

WAIT = 10.0  # seconds a test waits for what it expects


def entry(n: int, **fields: object) -> HistoryEntry:
    values: dict[str, object] = {
        "id": f"test-{n}",
        "time": 1_000_000.0 + n,
        "agent": "echo",
        "input": f"input {n}",
        "user": "alice",
        "frontend": "cli",
        "outcome": "ok",
        "error_type": None,
        "duration_ms": 1.5,
        "cached": False,
        "instance": "instance-a",
        "trace_id": f"{n:032x}",
        "span_id": f"{n:016x}",
    }
    return HistoryEntry(**(values | fields))  # type: ignore[arg-type]


def store_at(path: Path, **options: object) -> SqliteHistoryStore:
    settings: dict[str, object] = {"max_age": 1e12, "max_rows": 1_000_000} | options
    return SqliteHistoryStore(path, **settings)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteHistoryStore]:
    sqlite_store = store_at(tmp_path / "data" / "history.db")
    yield sqlite_store
    sqlite_store.close()


def test_entries_are_read_back_newest_first_with_every_field(
    store: SqliteHistoryStore,
) -> None:
    written = [entry(1), entry(2, cached=True, output="out"), entry(3, error_type="timeout")]
    store.write(written)
    assert store.query(HistoryQuery()) == written[::-1]
    assert store.query(HistoryQuery(limit=2)) == written[:0:-1]


def test_queued_rows_read_back_as_the_entries_their_format_makes(
    store: SqliteHistoryStore,
) -> None:
    """The writer thread's rows are converted in bulk, by SQL and C loops: each field reads back
    as `RowFormat.entry` makes it, whatever mix of None and text a statement holds."""
    row_format = RowFormat("a1b2c3", "instance-a")
    trace_id, span_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    rows: list[tuple[object, ...]] = [
        (n, 2_000_000.0 + n, "echo", f"input {n}", "alice", "cli", "ok", None, 0.0125, n % 2 == 0,
         trace_id + n, span_id + n, None)
        for n in range(300)  # statements of 256, 32, 8 and 4 rows
    ]  # fmt: skip
    rows[5] = (5, 2_000_005.0, "echo", None, None, None, "error", "timeout", 1.0, False, 0, 0, "")
    rows[6] = (6, 2_000_006.0, "echo", "0", "0", "0", "refused", "0", 0.0, False, 1, 1, "0")
    rows[299] = (299, 2_000_299.0, "echo", "", "", "", "ok", None, 2.5, True, 2**128 - 1, 1, "out")
    store.write_rows(rows, row_format)
    expected = [row_format.entry(row) for row in rows]
    assert store.query(HistoryQuery(limit=1000)) == expected[::-1]
    assert (expected[5].trace_id, expected[5].span_id, expected[5].output) == ("", "", "")
    assert expected[0].id == "a1b2c3-0" and expected[299].id == "a1b2c3-12b"
    assert expected[299].trace_id == "f" * 32 and expected[299].duration_ms == 2500.0


def test_the_file_is_in_wal_mode_and_private_to_the_user(store: SqliteHistoryStore) -> None:
    store.write([entry(1)])
    with sqlite3.connect(store.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.path.stat().st_mode & 0o077 == 0
    assert store.path.parent.stat().st_mode & 0o077 == 0


def test_filters_by_agent_user_and_outcome(store: SqliteHistoryStore) -> None:
    store.write(
        [
            entry(1, agent="calc"),
            entry(2, user="bob"),
            entry(3, outcome="refused", error_type="forbidden"),
            entry(4, agent="calc", user="bob", outcome="error", error_type="ValueError"),
        ]
    )

    def ids(query: HistoryQuery) -> list[str]:
        return [found.id for found in store.query(query)]

    assert ids(HistoryQuery(agent="calc")) == ["test-4", "test-1"]
    assert ids(HistoryQuery(user="bob")) == ["test-4", "test-2"]
    assert ids(HistoryQuery(outcome="refused")) == ["test-3"]
    assert ids(HistoryQuery(agent="calc", user="bob", outcome="error")) == ["test-4"]
    assert ids(HistoryQuery(agent="calc", outcome="refused")) == []


def test_a_missing_file_reads_as_no_entries(tmp_path: Path) -> None:
    assert store_at(tmp_path / "none" / "history.db").query(HistoryQuery()) == []


def test_retention_keeps_the_newest_max_rows(tmp_path: Path) -> None:
    store = store_at(tmp_path / "history.db", max_rows=10)
    for start in range(0, 25, 5):
        store.write([entry(n) for n in range(start, start + 5)])
    kept = store.query(HistoryQuery(limit=100))
    assert [found.id for found in kept] == [f"test-{n}" for n in range(24, 14, -1)]
    store.close()


def test_retention_drops_entries_past_their_age_on_write_and_on_open(tmp_path: Path) -> None:
    now = [1_000_100.0]
    path = tmp_path / "history.db"
    store = store_at(path, max_age=50.0, clock=lambda: now[0])
    store.write([entry(n) for n in (10, 60, 90)])  # 1_000_010 is 90 s old: gone
    assert [found.id for found in store.query(HistoryQuery())] == ["test-90", "test-60"]
    store.close()

    now[0] += 20.0  # now 1_000_060 is 60 s old; a new writer prunes it as it opens
    store = store_at(path, max_age=50.0, clock=lambda: now[0])
    store.write([])
    assert [found.id for found in store.query(HistoryQuery())] == ["test-90"]
    store.close()


def test_a_query_walks_the_most_selective_index(tmp_path: Path) -> None:
    """With index statistics, a query for one user's errors of a busy agent reads that
    user's entries, not every entry of the agent."""
    store = store_at(tmp_path / "history.db")
    store.write(
        [
            entry(n, agent="busy", user=f"user{n % 500}", outcome="ok" if n % 7 else "error")
            for n in range(5000)
        ]
    )
    plan = " ".join(
        row[3]
        for row in sqlite3.connect(store.path).execute(
            "EXPLAIN QUERY PLAN SELECT * FROM history WHERE agent = 'busy' AND user_id = "
            "'user7' AND outcome = 'error' ORDER BY time DESC LIMIT 20"
        )
    )
    assert "history_user" in plan
    store.close()


# -- content policy ---------------------------------------------------------------------------

SECRET_INPUT = "curl -H 'Authorization: Bearer abcdefgh12345678' https://example.com"


def test_input_is_scrubbed_in_every_mode_that_keeps_it() -> None:
    assert "abcdefgh12345678" not in (ContentPolicy("full").input(SECRET_INPUT) or "")
    assert ContentPolicy("full").input(SECRET_INPUT) == scrub(SECRET_INPUT)
    truncated = ContentPolicy("truncated", input_max=12).input(SECRET_INPUT + " " * 100)
    assert truncated is not None and len(truncated) == 12 and truncated.endswith("…")
    digest = hashlib.sha256(scrub(SECRET_INPUT).encode()).hexdigest()
    assert ContentPolicy("hash").input(SECRET_INPUT) == f"sha256:{digest}"
    assert ContentPolicy("none").input(SECRET_INPUT) is None


def test_output_is_kept_only_when_asked_scrubbed_and_capped() -> None:
    assert ContentPolicy().output("result") is None
    kept = ContentPolicy(output_max=20).output("token=abcdefgh12345678 " + "x" * 50)
    assert kept is not None and len(kept) == 20 and "abcdefgh" not in kept


def test_an_unknown_input_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="full, truncated, hash, none"):
        ContentPolicy("everything")


# -- recording: off the event loop, bounded, failures counted ---------------------------------


def history_over(
    sinks: Sequence[HistoryStore], telemetry: TelemetryFixture, **options: object
) -> History:
    settings: dict[str, object] = {"instance": "instance-a", "flush_interval": 60.0} | options
    return History(sinks, meter_provider=telemetry.meter_provider, **settings)  # type: ignore[arg-type]


def dropped(telemetry: TelemetryFixture) -> dict[tuple[str, str], int]:
    return {
        (point.attributes["sel.history.store"], point.attributes["error.type"]): point.value
        for point in telemetry.points("sel.history.dropped")
    }


def record(history: History, n: int, **options: object) -> None:
    call: dict[str, object] = {
        "agent": "echo",
        "query": f"input {n}",
        "user": "alice",
        "frontend": "cli",
        "span": trace.INVALID_SPAN,
        "duration": 0.001,
        "attributes": {"sel.cache.hit": False},
        "output": "out",
    } | options
    history.record_call(**call)  # type: ignore[arg-type]


async def test_recorded_calls_reach_the_file_on_the_flush_interval(
    store: SqliteHistoryStore, telemetry: TelemetryFixture
) -> None:
    history = history_over([store], telemetry, flush_interval=0.05)
    history.open()
    record(history, 1, attributes={"sel.cache.hit": True})
    record(history, 2, attributes={"sel.cache.hit": False, "error.type": "timeout"})
    deadline = time.monotonic() + WAIT
    while len(found := store.query(HistoryQuery())) < 2:  # no explicit flush: the interval's
        assert time.monotonic() < deadline, "entries never written"
        await _yield()
    await history.aclose()
    assert [(e.input, e.outcome, e.error_type, e.cached) for e in found] == [
        ("input 2", "error", "timeout", False),
        ("input 1", "ok", None, True),
    ]
    assert found[0].instance == "instance-a" and found[0].trace_id == ""
    assert found[0].id != found[1].id


async def test_a_process_reads_its_own_entries_before_they_are_written(
    store: SqliteHistoryStore, telemetry: TelemetryFixture
) -> None:
    history = history_over([store], telemetry)  # the interval never comes in the test
    history.open()
    record(history, 1, agent="calc")
    record(history, 2)
    page = await history.query(HistoryQuery(agent="calc"))
    assert [found.input for found in page.entries] == ["input 1"]
    assert store.query(HistoryQuery()) == []  # not written yet
    await history.aclose()
    assert len(store.query(HistoryQuery())) == 2


async def test_close_writes_what_is_pending(
    store: SqliteHistoryStore, telemetry: TelemetryFixture
) -> None:
    history = history_over([store], telemetry)  # an interval that never comes in the test
    history.open()
    for n in range(5):
        record(history, n)
    await history.aclose()
    assert len(store.query(HistoryQuery())) == 5


async def test_trace_and_span_ids_link_an_entry_to_its_span(
    store: SqliteHistoryStore, telemetry: TelemetryFixture
) -> None:
    history = history_over([store], telemetry)
    history.open()
    span = telemetry.tracer_provider.get_tracer("test").start_span("invoke_agent echo")
    record(history, 1, span=span)
    span.end()
    await history.aclose()
    (found,) = store.query(HistoryQuery())
    context = span.get_span_context()
    assert (found.trace_id, found.span_id) == (
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
    )


async def test_refusals_are_recorded_with_their_reason(
    store: SqliteHistoryStore, telemetry: TelemetryFixture
) -> None:
    history = history_over([store], telemetry)
    history.open()
    history.record_refusal(
        "host_exec", "rm -rf /", "mallory", "discord", "forbidden", trace.INVALID_SPAN
    )
    await history.aclose()
    (found,) = store.query(HistoryQuery(outcome="refused"))
    assert (found.agent, found.user, found.error_type, found.cached) == (
        "host_exec",
        "mallory",
        "forbidden",
        False,
    )


async def test_pending_entries_are_bounded_and_the_excess_counted(
    store: SqliteHistoryStore, telemetry: TelemetryFixture, caplog: pytest.LogCaptureFixture
) -> None:
    history = history_over([store], telemetry, max_pending=5)  # not opened: nothing drains
    for n in range(8):
        record(history, n)
    history.open()
    await history.aclose()
    assert dropped(telemetry) == {("sqlite", "queue_full"): 3}
    assert len([r for r in caplog.records if "is behind" in r.message]) == 1
    kept = store.query(HistoryQuery(limit=100))
    assert sorted(str(entry.input) for entry in kept) == [f"input {n}" for n in range(3, 8)]


async def test_a_history_closed_unopened_counts_every_entry_it_never_wrote(
    store: SqliteHistoryStore, telemetry: TelemetryFixture
) -> None:
    history = history_over([store], telemetry, max_pending=5)
    for n in range(8):
        record(history, n)
    await history.aclose(0.1)
    assert dropped(telemetry) == {("sqlite", "queue_full"): 3, ("sqlite", "not_written"): 5}


class _GatedStore(SqliteHistoryStore):
    """The SQLite store, whose first write waits for `opened` (`entered` tells it began)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, max_age=1e12, max_rows=1_000_000)
        self.entered = threading.Event()
        self.opened = threading.Event()

    def write_rows(self, rows: Sequence[Row], format: RowFormat) -> None:
        self.entered.set()
        assert self.opened.wait(WAIT)
        super().write_rows(rows, format)


async def _writing_rows_0_to_2(
    tmp_path: Path, telemetry: TelemetryFixture, flush_wait: float
) -> tuple[_GatedStore, History, asyncio.Future[bool]]:
    """A history of at most 5 pending entries whose store has taken rows 0-2 and writes
    them until `opened`; and the flush (within `flush_wait`) that asked for them."""
    store = _GatedStore(tmp_path / "history.db")
    history = history_over([store], telemetry, max_pending=5)
    history.open()
    for n in range(3):
        record(history, n)
    flushed = asyncio.ensure_future(history.flush(flush_wait))
    assert await asyncio.to_thread(store.entered.wait, WAIT)
    return store, history, flushed


async def test_a_full_queue_lets_its_oldest_go_and_the_writer_counts_each(
    tmp_path: Path, telemetry: TelemetryFixture, caplog: pytest.LogCaptureFixture
) -> None:
    store, history, flushed = await _writing_rows_0_to_2(tmp_path, telemetry, WAIT)
    for n in range(3, 20):  # 17 more: the queue keeps the last 5
        record(history, n)
    store.opened.set()
    assert await flushed
    assert await history.flush()
    assert dropped(telemetry) == {("sqlite", "queue_full"): 12}
    for n in range(20, 30):  # the queue kept up again: nothing more is dropped
        record(history, n)
        assert await history.flush()
    await history.aclose()
    assert dropped(telemetry) == {("sqlite", "queue_full"): 12}
    expected = [*range(3), *range(15, 30)]
    kept = store.query(HistoryQuery(limit=100))
    assert sorted(str(entry.input) for entry in kept) == sorted(f"input {n}" for n in expected)
    assert len([r for r in caplog.records if "is behind" in r.message]) == 1


async def test_entries_dropped_while_a_store_hangs_are_counted_when_it_is_left_behind(
    tmp_path: Path, telemetry: TelemetryFixture
) -> None:
    store, history, flushed = await _writing_rows_0_to_2(tmp_path, telemetry, 0.1)  # it hangs
    for n in range(3, 23):  # the queue keeps rows 18-22
        record(history, n)
    assert not await flushed
    await history.aclose(0.1)
    expected = {("sqlite", "queue_full"): 15, ("sqlite", "not_written"): 3 + 5}
    assert dropped(telemetry) == expected
    store.opened.set()  # the store wakes up: what it writes now is counted no more
    await wait_until(lambda: len(store.query(HistoryQuery(limit=100))) == 8, "late writes")
    assert dropped(telemetry) == expected


async def test_text_no_codec_can_write_is_kept_as_u_fffd_and_costs_no_entry(
    store: SqliteHistoryStore, telemetry: TelemetryFixture
) -> None:
    truncated = history_over([store], telemetry)
    hashed = history_over([store], telemetry, policy=ContentPolicy("hash"))
    for history in (truncated, hashed):
        history.open()
    record(truncated, 1)
    record(truncated, 2, query="x\ud800")  # a JSON escape or a byte a decoder could not read
    record(truncated, 3, agent="\udc80 agent", user="\udc81", frontend="cli\udc82")
    record(hashed, 4, query="y\ud800")  # never raises
    for history in (truncated, hashed):
        await history.aclose()
    found = {entry.input: entry for entry in store.query(HistoryQuery(limit=100))}
    digest = hashlib.sha256("y\ud800".encode("utf-8", "surrogatepass")).hexdigest()
    assert set(found) == {"input 1", "x\ufffd", "input 3", f"sha256:{digest}"}
    odd = found["input 3"]
    assert (odd.agent, odd.user, odd.frontend) == ("\ufffd agent", "\ufffd", "cli\ufffd")
    assert dropped(telemetry) == {}


async def test_a_filter_holding_a_lone_surrogate_finds_the_entries_it_names(
    store: SqliteHistoryStore, telemetry: TelemetryFixture
) -> None:
    history = history_over([store], telemetry)
    history.open()
    record(history, 1, agent="x\udc80", user="\udc81")
    record(history, 2)
    await history.aclose()
    for query in (HistoryQuery(agent="x\udc80"), HistoryQuery(user="\udc81")):
        page = await history.query(query)
        assert ([e.input for e in page.entries], page.unavailable) == (["input 1"], ())


async def test_an_unwritable_path_drops_entries_with_one_error_and_a_metric(
    tmp_path: Path, telemetry: TelemetryFixture, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("a file where the data directory should be")
    store = store_at(tmp_path / "file" / "history.db")
    history = history_over([store], telemetry)
    history.open()
    started = time.perf_counter()
    for round_ in range(3):
        for n in range(4):
            record(history, round_ * 4 + n)  # never raises
        assert await history.flush()
    recording = time.perf_counter() - started
    await history.aclose()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "history store sqlite failing" in errors[0].message
    assert dropped(telemetry) == {("sqlite", "FileExistsError"): 12}
    assert recording < WAIT


async def test_a_store_that_recovers_is_logged_once_more(
    tmp_path: Path, telemetry: TelemetryFixture, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("in the way")
    store = store_at(blocker / "history.db")
    history = history_over([store], telemetry)
    history.open()
    record(history, 1)
    assert await history.flush()
    blocker.unlink()  # the path becomes writable
    record(history, 2)
    assert await history.flush()
    await history.aclose()
    assert [found.input for found in store.query(HistoryQuery())] == ["input 2"]
    assert len([r for r in caplog.records if "recovered" in r.message]) == 1


def test_a_file_is_followed_in_the_order_of_its_writes(tmp_path: Path) -> None:
    store = store_at(tmp_path / "history.db")
    assert store.written_after(HistoryQuery(), None) == ([], 0)  # no file yet: from the start
    store.write([entry(2), entry(1, agent="calc")])  # 1 started first, and ended last
    found, cursor = store.written_after(HistoryQuery(), 0)
    assert [e.id for e in found] == ["test-2", "test-1"]
    store.write([entry(3)])
    assert store.written_after(HistoryQuery(agent="calc"), cursor) == ([], cursor + 1)
    limit_ignored, _ = store.written_after(HistoryQuery(limit=1), 0)
    assert len(limit_ignored) == 3
    store.close()
    (tmp_path / "history.db").unlink()  # the file begins anew: all of it is news
    store.write([entry(4)])
    assert [e.id for e in store.written_after(HistoryQuery(), cursor + 1)[0]] == ["test-4"]
    store.close()


# -- reading several stores -------------------------------------------------------------------


class _Failing(HistoryStore):
    name = "broken"

    def write(self, entries: Sequence[HistoryEntry]) -> None:
        raise ConnectionError("down")

    def query(self, query: HistoryQuery) -> list[HistoryEntry]:
        raise ConnectionError("down")

    def written_after(
        self, query: HistoryQuery, cursor: object | None
    ) -> tuple[list[HistoryEntry], object]:
        raise ConnectionError("down")

    def close(self) -> None:
        pass


async def test_following_every_store_prints_each_entry_once_and_names_those_down(
    tmp_path: Path,
) -> None:
    first, second = store_at(tmp_path / "a.db"), store_at(tmp_path / "b.db")
    reader = HistoryReader([first, second, _Failing()])
    _, cursors, down = await reader.written_after(HistoryQuery(), [None, None, None])
    assert down == ("broken",)
    first.write([entry(2), entry(1)])
    second.write([entry(2), entry(3)])  # an instance's entries are in its file and in Redis
    found, cursors, _ = await reader.written_after(HistoryQuery(), cursors)
    assert [e.id for e in found] == ["test-1", "test-2", "test-3"]  # oldest started first
    assert (await reader.written_after(HistoryQuery(), cursors))[0] == []
    for store in (first, second):
        store.close()


async def test_the_reader_merges_stores_once_per_entry_and_names_those_unavailable(
    tmp_path: Path,
) -> None:
    first, second = store_at(tmp_path / "a.db"), store_at(tmp_path / "b.db")
    first.write([entry(1), entry(3)])
    second.write([entry(2), entry(3)])  # entry 3 is in both, as in SQLite and in Redis
    page = await HistoryReader([first, second, _Failing()]).query(HistoryQuery())
    assert [found.id for found in page.entries] == ["test-3", "test-2", "test-1"]
    assert page.unavailable == ("broken",)
    first.close()
    second.close()


async def _yield() -> None:
    """One step of a poll: let the writer thread run."""
    await asyncio.sleep(0.01)
