"""`SqliteHistoryStore`: the embedded, durable history, one SQLite file in WAL mode.

Writes come from one writer thread, a batch per transaction, inserted by statements of
`ROWS_PER_INSERT` rows (and a rest by powers of two): SQLite runs each in one step, so the
thread gives up Python's lock (the GIL) and waits for it back once per statement, not once per
row; a busy event loop hands it back only once per switch interval, 5 ms. The values of the
queued rows are converted in bulk, column by column, and no None is bound (see `_ROW_SPARSE`).
Retention runs with each write: entries older than `max_age` go, and the oldest go while there
are more than `max_rows`. Queries open a read-only connection of their own: WAL lets them read
while the writer writes, in this process or another (`sel-otel history` reading the bot's
file).
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _semconv as names
from ._history import ROW_FIELDS, HistoryEntry, HistoryQuery, HistoryStore, Row, RowFormat

#: The file's schema version (`PRAGMA user_version`).
SCHEMA_VERSION = 1
#: Columns in `HistoryEntry` order (`user` is `user_id`: `user` means something in SQL).
_COLUMNS = (
    "id", "time", "agent", "input", "user_id", "frontend", "outcome", "error_type",
    "duration_ms", "cached", "instance", "trace_id", "span_id", "output",
)  # fmt: skip
#: The column of each field of a `Row` (`write_rows`); the instance, the same in every row, is
#: bound once a statement, as ?1.
_ROW_COLUMNS = {
    "count": "id",
    "time": "time",
    "agent": "agent",
    "input": "input",
    "user": "user_id",
    "frontend": "frontend",
    "outcome": "outcome",
    "error_type": "error_type",
    "duration": "duration_ms",
    "cached": "cached",
    "trace_id": "trace_id",
    "span_id": "span_id",
    "output": "output",
}
#: A row's values None in most rows: `error_type` (calls that succeed), `output` (kept only
#: when asked for) and `input` (with `SEL_HISTORY_INPUT=none`). sqlite3 binds None only after
#: looking for an adapter, 0.2 µs a value: a statement whose rows all have None there writes
#: the literal NULL, and one whose rows do not binds 0 for None, which `NULLIF(?, 0)` makes
#: NULL again (these text columns never hold an integer).
_ROW_SPARSE = tuple(ROW_FIELDS.index(field) for field in ("input", "error_type", "output"))
#: The outcome index holds failures and refusals only: most calls succeed, and their rows skip
#: it. A query for one of these outcomes repeats the term, so that SQLite may use the index;
#: one for successes walks the time index until it has found enough.
_NOT_OK = f"outcome != '{names.OUTCOME_OK}'"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    time REAL NOT NULL,
    agent TEXT NOT NULL,
    input TEXT,
    user_id TEXT,
    frontend TEXT,
    outcome TEXT NOT NULL,
    error_type TEXT,
    duration_ms REAL NOT NULL,
    cached INTEGER NOT NULL,
    instance TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    output TEXT
);
CREATE INDEX IF NOT EXISTS history_time ON history (time);
CREATE INDEX IF NOT EXISTS history_agent ON history (agent, time);
CREATE INDEX IF NOT EXISTS history_user ON history (user_id, time);
DROP INDEX IF EXISTS history_outcome;
CREATE INDEX IF NOT EXISTS history_not_ok ON history (outcome, time) WHERE {_NOT_OK};
PRAGMA user_version = {SCHEMA_VERSION};
"""
#: Rows inserted by one statement of `write_rows`, at most; fewer go by statements of powers
#: of two, so that the connection caches a few only. A statement of more rows costs no less a
#: row to run, more to prepare (again after each ANALYZE: 1.3 ms for 256 rows, 5.8 for 1,024),
#: and one GIL handoff less per 256 rows.
ROWS_PER_INSERT = 256
_HAS_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'history'"
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM history"
#: Bytes a page of a new file.
PAGE_SIZE = 8192
#: Page cache of the writer's connection, in KiB.
CACHE_KIB = 16384
#: Seconds a connection waits for another process's write lock before failing.
BUSY_TIMEOUT = 5.0


class SqliteHistoryStore(HistoryStore):
    """History in the SQLite file `path` (created with its directory, private to the user)."""

    name = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        max_age: float,
        max_rows: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_age = max_age
        self.max_rows = max_rows
        self._clock = clock
        self._connection: sqlite3.Connection | None = None
        self._rows = 0  # rows in the file, as this writer last knew them
        self._analyzed = 0  # rows when the index statistics were last gathered

    def write(self, entries: Sequence[HistoryEntry]) -> None:
        """Keep `entries` (a statement per entry: the writer thread's rows go by `write_rows`)."""
        self._write(
            len(entries),
            lambda connection: connection.executemany(_INSERT_ENTRY, entries),
        )

    def write_rows(self, rows: Sequence[Row], format: RowFormat) -> None:
        def insert(connection: sqlite3.Connection) -> None:
            start = 0
            while start < len(rows):
                count = min(ROWS_PER_INSERT, 1 << (len(rows) - start).bit_length() - 1)
                sql, values = _insert_rows(rows[start : start + count], format)
                connection.execute(sql, values)
                start += count

        try:
            self._write(len(rows), insert)
        except UnicodeEncodeError:  # a lone surrogate in a user's text: entries make it U+FFFD
            self.write([*map(format.entry, rows)])

    def _write(self, count: int, insert: Callable[[sqlite3.Connection], object]) -> None:
        """Insert `count` entries with `insert`, and apply retention, in one transaction."""
        connection = self._connection or self._open()
        try:
            connection.execute("BEGIN IMMEDIATE")
            insert(connection)
            self._rows += count
            self._prune(connection)
            if self._rows > 2 * self._analyzed + 1000:
                self._analyze(connection)
            connection.execute("COMMIT")
        except BaseException:
            self.close()  # reopened by the next write: a full disk may have room again
            raise

    def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()

    def query(self, query: HistoryQuery) -> list[HistoryEntry]:
        where, parameters = _conditions(query)
        sql = f"{_SELECT}{where} ORDER BY time DESC, seq DESC LIMIT ?"
        return [_entry(row) for row in self._read(sql, (*parameters, query.limit))]

    def written_after(
        self, query: HistoryQuery, cursor: int | None
    ) -> tuple[list[HistoryEntry], int]:
        """Entries follow `seq`, the order of their writes: a cursor is the last `seq` read."""
        latest = self._read("SELECT max(seq) FROM history", ())
        last = (latest[0][0] if latest else None) or 0
        if cursor is None:
            return [], last
        if last < cursor:  # the file began anew (emptied, or replaced): all of it is news
            cursor = 0
        where, parameters = _conditions(query)
        where = f"{where} AND seq > ?" if where else " WHERE seq > ?"
        sql = f"SELECT seq, {', '.join(_COLUMNS)} FROM history{where} AND seq <= ? ORDER BY seq"
        rows = self._read(sql, (*parameters, cursor, last))
        return [_entry(row[1:]) for row in rows], last

    def _read(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows `sql` selects, on a read-only connection of their own (none when the file
        or its table is not there yet)."""
        if not self.path.exists():
            return []
        connection = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT
        )
        try:
            if not connection.execute(_HAS_TABLE).fetchone():  # a writer is creating the file
                return []
            return connection.execute(sql, parameters).fetchall()
        finally:
            connection.close()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # the user's alone
        # Used by the writer thread alone; closed by whoever closes the store after it ended.
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            # A new file's pages (an older file keeps its own): half the WAL frames, and the
            # system calls, of 4 KiB pages for the same rows.
            connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            connection.execute("PRAGMA journal_mode = WAL")
            # A committed batch survives the process being killed; only a power cut may lose
            # the last ones.
            connection.execute("PRAGMA synchronous = NORMAL")
            # Four indexes take inserts at as many places: keep their recent pages in memory.
            connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{self.path} has schema version {version}, newer than this sel-otel's"
                )
            connection.executescript(_SCHEMA)
            self._rows = connection.execute("SELECT count(*) FROM history").fetchone()[0]
            connection.execute("BEGIN IMMEDIATE")
            self._prune(connection)
            self._analyze(connection)
            connection.execute("COMMIT")
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _analyze(self, connection: sqlite3.Connection) -> None:
        """Sample the indexes (a few ms at any size), so that a query with several filters
        walks the most selective index: a user's 1,000 entries, not an agent's 100,000."""
        connection.execute("PRAGMA analysis_limit = 1000")
        connection.execute("ANALYZE history")
        self._analyzed = self._rows

    def _prune(self, connection: sqlite3.Connection) -> None:
        """Delete entries past their age, then the oldest over `max_rows` (counted again only
        when this writer's own count says the file may be over, and then one more percent,
        so that a full file is not counted on every write)."""
        cursor = connection.execute(
            "DELETE FROM history WHERE time < ?", (self._clock() - self.max_age,)
        )
        self._rows -= max(cursor.rowcount, 0)
        if self._rows <= self.max_rows:
            return
        self._rows = connection.execute("SELECT count(*) FROM history").fetchone()[0]
        excess = self._rows - self.max_rows
        if excess > 0:
            excess += self.max_rows // 100
            connection.execute(
                "DELETE FROM history WHERE seq IN (SELECT seq FROM history ORDER BY seq LIMIT ?)",
                (excess,),
            )
            self._rows = max(self._rows - excess, 0)


_INSERT_ENTRY = (
    f"INSERT INTO history ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)
_ZERO_FOR_NONE = {None: 0}.get


def _insert_rows(rows: Sequence[Row], format: RowFormat) -> tuple[str, list[Any]]:
    """The INSERT of `rows`, and the values it binds, converted column by column by C loops:
    plain values bind fastest (SQL functions such as printf cost SQLite more, per row)."""
    width = len(ROW_FIELDS)
    values: list[Any] = [format.instance]
    values += itertools.chain.from_iterable(rows)

    def column(field: str) -> slice:
        return slice(1 + ROW_FIELDS.index(field), None, width)

    ids = column("count")
    values[ids] = map(f"{format.prefix}-{{:x}}".format, values[ids])
    durations = column("duration")
    values[durations] = map(operator.mul, values[durations], itertools.repeat(1000.0))
    # `cached` as an int: sqlite3 binds a bool, as None, after looking for an adapter.
    cached = column("cached")
    values[cached] = map(int, values[cached])
    for field, size in (("trace_id", 16), ("span_id", 8)):
        numbers = values[column(field)]
        hexes = [*map(bytes.hex, map(int.to_bytes, numbers, itertools.repeat(size)))]
        if 0 in numbers:  # not traced
            hexes = [text if number else "" for number, text in zip(numbers, hexes, strict=True)]
        values[column(field)] = hexes
    null = 0
    for bit, index in enumerate(_ROW_SPARSE):
        sparse = slice(1 + index, None, width)
        found = values[sparse]
        if found.count(None) == len(found):
            null |= 1 << bit
        else:
            values[sparse] = map(_ZERO_FOR_NONE, found, found)
    for bit, index in reversed([*enumerate(_ROW_SPARSE)]):  # the last first: offsets hold
        if null & 1 << bit:
            del values[1 + index :: width]
            width -= 1
    return _insert_rows_sql(len(rows), null), values


@functools.cache
def _insert_rows_sql(rows: int, null: int) -> str:
    """An INSERT of `rows` rows, NULL in the `_ROW_SPARSE` columns whose bit is set in `null`
    (a statement per shape: the connection caches each)."""
    terms = ["?"] * len(ROW_FIELDS)
    for bit, index in enumerate(_ROW_SPARSE):
        terms[index] = "NULL" if null & 1 << bit else "NULLIF(?, 0)"
    row = f"(?1, {', '.join(terms)})"  # ?1 first: a plain ? after it is ?2
    columns = ", ".join(["instance", *(_ROW_COLUMNS[field] for field in ROW_FIELDS)])
    return f"INSERT INTO history ({columns}) VALUES " + ", ".join([row] * rows)


def _conditions(query: HistoryQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    parameters: list[Any] = []
    for column, value in (
        ("agent", query.agent),
        ("user_id", query.user),
        ("outcome", query.outcome),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            parameters.append(value)
    if query.outcome is not None and query.outcome != names.OUTCOME_OK:
        clauses.append(_NOT_OK)  # the outcome index's own term: see `_NOT_OK`
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), parameters


def _entry(row: tuple[Any, ...]) -> HistoryEntry:
    entry = HistoryEntry(*row)
    return entry._replace(cached=bool(entry.cached))
