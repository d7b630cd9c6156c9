"""`SqliteHistoryStore`: the embedded, durable history, one SQLite file in WAL mode.

Writes come from one writer thread, a batch per transaction, inserted by statements of
`ROWS_PER_INSERT` rows each: SQLite runs each in one step, so the thread gives up Python's lock
(the GIL) once per statement, not once per row, and waits for it back as seldom; a busy event
loop would otherwise hand it back once per switch interval, 5 ms, a row. Retention runs with
each write: entries older than `max_age` go, and the oldest go while there are more than
`max_rows`. Queries open a read-only connection of their own: WAL lets them read while the
writer writes, in this process or another (`sel-otel history` reading the bot's file).
"""

from __future__ import annotations

import functools
import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _semconv as names
from ._history import HistoryEntry, HistoryQuery, HistoryStore

#: The file's schema version (`PRAGMA user_version`).
SCHEMA_VERSION = 1
#: Columns in `HistoryEntry` order (`user` is `user_id`: `user` means something in SQL).
_COLUMNS = (
    "id", "time", "agent", "input", "user_id", "frontend", "outcome", "error_type",
    "duration_ms", "cached", "instance", "trace_id", "span_id", "output",
)  # fmt: skip
_CACHED = _COLUMNS.index("cached")
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
#: Rows inserted by one statement (64 rows of 14 values, well under SQLite's 32,766).
ROWS_PER_INSERT = 64
_HAS_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'history'"
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM history"
#: Page cache of the writer's connection, in KiB.
CACHE_KIB = 16384
#: Seconds a connection waits for another process's write lock before failing.
BUSY_TIMEOUT = 5.0


class SqliteHistoryStore(HistoryStore):
    """History in the SQLite file `path` (created with its directory, private to the user)."""

    name = "sqlite"
    takes_rows = True  # bound by position

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
        connection = self._connection or self._open()
        try:
            connection.execute("BEGIN IMMEDIATE")
            for start in range(0, len(entries), ROWS_PER_INSERT):
                rows = entries[start : start + ROWS_PER_INSERT]
                values: list[Any] = list(itertools.chain.from_iterable(rows))
                # `cached` as an int: sqlite3 binds a bool only after looking for an adapter,
                # which costs more per row than this conversion.
                values[_CACHED :: len(_COLUMNS)] = map(int, values[_CACHED :: len(_COLUMNS)])
                connection.execute(_insert(len(rows)), values)
            self._rows += len(entries)
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
        if not self.path.exists():
            return []
        where, parameters = _conditions(query)
        sql = f"{_SELECT}{where} ORDER BY time DESC, seq DESC LIMIT ?"
        connection = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT
        )
        try:
            if not connection.execute(_HAS_TABLE).fetchone():  # a writer is creating the file
                return []
            rows = connection.execute(sql, (*parameters, query.limit)).fetchall()
        finally:
            connection.close()
        return [_entry(row) for row in rows]

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # the user's alone
        # Used by the writer thread alone; closed by whoever closes the store after it ended.
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
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


@functools.cache
def _insert(rows: int) -> str:
    """An INSERT of `rows` rows (a statement per count: the connection caches each)."""
    row = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
    return f"INSERT INTO history ({', '.join(_COLUMNS)}) VALUES " + ", ".join([row] * rows)


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
    if query.since is not None:
        clauses.append("time > ?")
        parameters.append(query.since)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), parameters


def _entry(row: tuple[Any, ...]) -> HistoryEntry:
    entry = HistoryEntry(*row)
    return entry._replace(cached=bool(entry.cached))
