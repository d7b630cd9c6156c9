"""Execution history: one entry per agent call or refusal, kept by stores behind one interface.

```
runtime / bot ──History.record_*──► one BatchWriter (thread) per sink ──► SqliteHistoryStore
  (never waits: an entry is appended to a bounded queue)              ├─► RedisHistoryStore
                                                                      └─► LogRecordSink (OTLP)
/sel_agent_history, sel-otel history ──HistoryReader.query──► every store, merged, newest first
```

A sink only writes (`HistorySink`); a store can be queried too (`HistoryStore`). What an
entry keeps of the input and output is the `ContentPolicy`'s: scrubbed like span content.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, TypeVar, cast

from opentelemetry import metrics, trace
from opentelemetry.trace import INVALID_SPAN_ID, INVALID_TRACE_ID

from . import _semconv as names
from ._history_writer import BatchWriter
from ._markup import writable_text
from ._redact import scrub, span_content
from ._telemetry import package_version

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

OUTCOMES: Final = (names.OUTCOME_OK, names.OUTCOME_ERROR, names.OUTCOME_REFUSED)
INPUT_FULL: Final = "full"
INPUT_TRUNCATED: Final = "truncated"
INPUT_HASH: Final = "hash"
INPUT_NONE: Final = "none"
INPUT_MODES: Final = (INPUT_FULL, INPUT_TRUNCATED, INPUT_HASH, INPUT_NONE)
#: Entries waiting for each store, at most; more are dropped and counted.
MAX_PENDING: Final = 10_000
#: Distinct inputs (and outputs) whose scrubbed form is remembered.
_MEMO_SIZE = 1024


class HistoryEntry(NamedTuple):
    """One agent call, or one refusal, as every store keeps it.

    A named tuple, cheap and immutable; on every call, the event loop queues only its raw
    values (a `Row`), which the writer threads make entries of (`RowFormat`). `time` is when
    the call started, in seconds since the epoch; the trace and span ids are lowercase hex, ""
    when the call was not traced.
    """

    id: str
    time: float
    agent: str
    input: str | None
    user: str | None
    frontend: str | None
    outcome: str
    error_type: str | None
    duration_ms: float
    cached: bool
    instance: str
    trace_id: str
    span_id: str
    output: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON-ready values, `time` in ISO 8601 (UTC, milliseconds)."""
        return self._asdict() | {"time": iso_time(self.time)}


#: A call as the event loop queues it: a plain tuple of the values only the call has, raw, in
#: the order of `ROW_FIELDS` (`count` numbers the process's entries from 0, in the order they
#: are recorded: an id's end, and how the writers count what a full queue let go; the trace
#: and span ids are ints, 0 when not traced; the duration is in seconds). Made on every call and
#: kept until written: each object it makes costs the event loop, and Python's garbage
#: collector stops tracking a plain tuple of strings and numbers at its first pass.
Row = tuple[Any, ...]
ROW_FIELDS: Final = (
    "count", "time", "agent", "input", "user", "frontend", "outcome", "error_type",
    "duration", "cached", "trace_id", "span_id", "output",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RowFormat:
    """What makes an entry of a `Row`: the values every row of one `History` shares (the id
    prefix, unique to the process, and the instance) and the conversions of the raw ones,
    text made writable as UTF-8 (`writable_text`) included."""

    prefix: str
    instance: str

    def entry(self, row: Row) -> HistoryEntry:
        (count, start, agent, text, user, frontend, outcome, error_type, duration, cached,
         trace_id, span_id, output) = row  # fmt: skip
        return HistoryEntry(
            f"{self.prefix}-{count:x}",
            start,
            writable_text(agent),  # these three may hold a lone surrogate (a user's text)
            text,
            None if user is None else writable_text(user),
            None if frontend is None else writable_text(frontend),
            outcome,
            error_type,
            duration * 1000.0,
            cached,
            self.instance,
            f"{trace_id:032x}" if trace_id else "",
            f"{span_id:016x}" if span_id else "",
            output,
        )


def iso_time(seconds: float) -> str:
    """`seconds` since the epoch as ISO 8601 in UTC with milliseconds: 2025-06-01T12:00:03.120Z."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Which entries to read: filters (None: any), and the most recent `limit` of them."""

    agent: str | None = None
    user: str | None = None
    outcome: str | None = None
    limit: int = 20

    def matches(self, entry: HistoryEntry) -> bool:
        return (
            (self.agent is None or entry.agent == self.agent)
            and (self.user is None or entry.user == self.user)
            and (self.outcome is None or entry.outcome == self.outcome)
        )


class HistorySink(ABC):
    """Where entries are written, by one writer thread: `write` may block and may raise (the
    writer counts the entries as dropped and logs the failure once)."""

    #: The store's name in logs and in the `sel.history.store` attribute.
    name: str

    @abstractmethod
    def write(self, entries: Sequence[HistoryEntry]) -> None:
        """Keep `entries` (oldest first)."""

    def write_rows(self, rows: Sequence[Row], format: RowFormat) -> None:
        """Keep `rows`, as the event loop queued them (oldest first): by default, as entries;
        a sink may convert them more cheaply, in bulk."""
        self.write([*map(format.entry, rows)])

    @abstractmethod
    def close(self) -> None:
        """Release what the sink holds; called on its writer thread, after the last write."""


#: Where a store's `written_after` left off: opaque, the store's own.
Cursor = Any


class HistoryStore(HistorySink):
    """A sink that answers queries; `query` and `written_after` run on worker threads, apart
    from `write`."""

    @abstractmethod
    def query(self, query: HistoryQuery) -> list[HistoryEntry]:
        """The most recent `query.limit` matching entries, newest first."""

    @abstractmethod
    def written_after(
        self, query: HistoryQuery, cursor: Cursor | None
    ) -> tuple[list[HistoryEntry], Cursor]:
        """The entries matching `query` (but its `limit`) written after `cursor`,
        in the order they were written, and the cursor after them; with None, none: the
        cursor of the latest write, to follow from."""


class ContentPolicy:
    """What an entry keeps of a call's input and output, scrubbed as span content is.

    Input: `full` (scrubbed), `truncated` (scrubbed, at most `input_max` characters), `hash`
    (`sha256:` and the hex digest of the scrubbed input: equal inputs, equal hashes, and no
    secret even hashed) or `none`. Output: kept only when `output_max` > 0, scrubbed and cut
    to that. Kept text has its lone surrogates as U+FFFD (`writable_text`), so that every
    store can write it. Both are memoized: inputs recur, and scrubbing costs more than a
    cache hit.
    """

    def __init__(
        self, input_mode: str = INPUT_TRUNCATED, input_max: int = 256, output_max: int = 0
    ) -> None:
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input mode {input_mode!r} is not one of {', '.join(INPUT_MODES)}")
        keep: dict[str, Callable[[str], str | None]] = {
            INPUT_FULL: lambda text: writable_text(scrub(text)),
            INPUT_TRUNCATED: lambda text: writable_text(span_content(text, limit=input_max)),
            INPUT_HASH: _hash,
            INPUT_NONE: lambda text: None,
        }
        self.input = functools.lru_cache(maxsize=_MEMO_SIZE)(keep[input_mode])
        self.output_max = output_max
        self._output = functools.lru_cache(maxsize=_MEMO_SIZE)(
            lambda text: writable_text(span_content(text, limit=output_max))
        )

    def output(self, text: str | None) -> str | None:
        if text is None or self.output_max <= 0:
            return None
        return self._output(text)


def _hash(text: str) -> str:
    # surrogatepass: any str has a hash, even one holding bytes a decoder could not read
    return "sha256:" + hashlib.sha256(scrub(text).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Entries read for a query, newest first, and the stores that could not be read."""

    entries: list[HistoryEntry]
    unavailable: tuple[str, ...] = ()


class HistoryReader:
    """Queries every store at once, off the event loop, and merges what they answer: newest
    first, each entry once (an instance's entries are in its SQLite file and in Redis)."""

    def __init__(self, stores: Sequence[HistoryStore]) -> None:
        self.stores = tuple(stores)

    async def query(
        self, query: HistoryQuery, unwritten: Sequence[HistoryEntry] = ()
    ) -> HistoryPage:
        """The entries `query` asks for from every store, and from `unwritten` (this
        process's entries still on their way to the stores). Its filters are compared as the
        entries keep text (`writable_text`)."""
        query = _writable(query)
        answers = await self._ask([functools.partial(store.query, query) for store in self.stores])
        merged = {entry.id: entry for entry in unwritten if query.matches(entry)}
        unavailable = []
        for store, answer in zip(self.stores, answers, strict=True):
            if isinstance(answer, Exception):
                logger.warning("history store %s unavailable: %s", store.name, _reason(answer))
                unavailable.append(store.name)
                continue
            for entry in answer:
                merged.setdefault(entry.id, entry)
        entries = sorted(merged.values(), key=lambda entry: entry.time, reverse=True)
        return HistoryPage(entries[: query.limit], tuple(unavailable))

    async def written_after(
        self, query: HistoryQuery, cursors: Sequence[Cursor | None]
    ) -> tuple[list[HistoryEntry], list[Cursor | None], tuple[str, ...]]:
        """What each store holds of `query` written after its cursor (`HistoryStore.
        written_after`; a None cursor, a store not read yet, starts from its latest write),
        oldest started first, each entry once; the cursors after them, and the stores that
        could not be read (they keep their cursors)."""
        query = _writable(query)
        answers = await self._ask(
            [
                functools.partial(store.written_after, query, cursor)
                for store, cursor in zip(self.stores, cursors, strict=True)
            ]
        )
        merged: dict[str, HistoryEntry] = {}
        after: list[Cursor | None] = []
        unavailable = []
        for store, cursor, answer in zip(self.stores, cursors, answers, strict=True):
            if isinstance(answer, Exception):
                unavailable.append(store.name)
                after.append(cursor)
                continue
            entries, moved = answer
            after.append(moved)
            for entry in entries:
                merged.setdefault(entry.id, entry)
        ordered = sorted(merged.values(), key=lambda entry: entry.time)
        return ordered, after, tuple(unavailable)

    @staticmethod
    async def _ask(reads: Sequence[Callable[[], _T]]) -> list[_T | Exception]:
        """What each of `reads` (one per store) returns, run at once on worker threads, or
        the exception it raised (one that is no `Exception`, such as a cancellation, is
        raised)."""
        answers = await asyncio.gather(*map(asyncio.to_thread, reads), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer
        return cast(list[_T | Exception], answers)


def _writable(query: HistoryQuery) -> HistoryQuery:
    """`query` with its filters as entries keep text (`writable_text`)."""
    return dataclasses.replace(
        query,
        agent=None if query.agent is None else writable_text(query.agent),
        user=None if query.user is None else writable_text(query.user),
    )


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class History:
    """Records every agent call and refusal into its sinks, and reads them back.

    Recording never waits and never raises: an entry goes to a bounded queue per sink, and a
    thread per sink writes the queue every `flush_interval` seconds (sooner when it fills).
    A store that fails drops entries: each is counted in `sel.history.dropped`, and the
    failure is logged once, with the recovery. `open()` starts the writers; `close()` writes
    what is pending and stops them. Entries are recorded from the event loop's thread only.
    """

    def __init__(
        self,
        sinks: Sequence[HistorySink],
        *,
        instance: str,
        policy: ContentPolicy | None = None,
        flush_interval: float = 1.0,
        max_pending: int = MAX_PENDING,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.instance = instance
        self.policy = policy or ContentPolicy()
        #: The policy's output conversion, None when no output is kept: no call per call.
        self._output = self.policy.output if self.policy.output_max > 0 else None
        meter = metrics.get_meter(names.SCOPE_NAME, package_version(), meter_provider)
        self._dropped = meter.create_counter(
            names.HISTORY_DROPPED,
            unit=names.ENTRY_UNIT,
            description="History entries a store could not keep",
        )
        # Entry ids: a prefix unique to the process, then the row's number.
        self._format = RowFormat(secrets.token_hex(6), instance)
        self._recorded = 0  # rows put: the next row's number
        self._writers = [
            BatchWriter(sink, flush_interval, max_pending, self._on_dropped, self._format)
            for sink in sinks
        ]
        self.reader = HistoryReader([sink for sink in sinks if isinstance(sink, HistoryStore)])

    def open(self) -> None:
        """Start the writer threads."""
        for writer in self._writers:
            writer.start()

    def record_call(
        self,
        agent: str,
        query: str,
        user: str | None,
        frontend: str | None,
        span: trace.Span,
        duration: float,
        attributes: Mapping[str, str | bool],
        output: str | None,
        *,
        refused: bool = False,
    ) -> None:
        """Record a call of `agent` that took `duration` seconds and ended now, whose span is
        `span` and whose metric attributes are `attributes` (`sel.cache.hit`, `error.type`);
        one `refused` by the bot's checks when that is true."""
        # On every call, on the event loop, in one function: the raw values only (see `Row`);
        # ids, hex and milliseconds are made by the writer threads, in bulk where a sink can.
        context = span.get_span_context()
        trace_id, span_id = context.trace_id, context.span_id
        if trace_id == INVALID_TRACE_ID or span_id == INVALID_SPAN_ID:  # `is_valid`, inlined
            trace_id = span_id = 0
        error_type = attributes.get(names.ERROR_TYPE)
        if error_type is None:
            outcome = names.OUTCOME_OK
        else:
            outcome = names.OUTCOME_REFUSED if refused else names.OUTCOME_ERROR
            error_type = str(error_type)
        count = self._recorded
        row = (
            count,
            time.time() - duration,
            agent,
            self.policy.input(query),
            user,
            frontend,
            outcome,
            error_type,
            duration,
            attributes.get(names.SEL_CACHE_HIT) is True,
            trace_id,
            span_id,
            None if output is None or self._output is None else self._output(output),
        )
        self._recorded = count + 1  # once the row is made: the writers count gaps as drops
        for writer in self._writers:
            writer.put(row)

    def record_refusal(
        self,
        agent: str,
        query: str,
        user: str | None,
        frontend: str | None,
        reason: str,
        span: trace.Span,
    ) -> None:
        """Record that `user` was refused a call of `agent` for `reason` (its `error_type`)."""
        refusal = {names.ERROR_TYPE: reason}
        self.record_call(agent, query, user, frontend, span, 0.0, refusal, None, refused=True)

    async def query(self, query: HistoryQuery) -> HistoryPage:
        """The entries `query` asks for, from every store; this process's own are there as
        soon as they are recorded, written or not."""
        unwritten = [
            entry
            for writer in self._writers
            if isinstance(writer.sink, HistoryStore)
            for entry in writer.unwritten()
        ]
        return await self.reader.query(query, unwritten)

    async def flush(self, wait: float = 10.0) -> bool:
        """Write every entry recorded so far; False when a store did not finish within `wait`
        seconds."""
        return await asyncio.to_thread(self._flush, self._recorded, wait)

    def _flush(self, recorded: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(
            [writer.flush(recorded, deadline - time.monotonic()) for writer in self._writers]
        )

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending and stop the writers, within about `timeout` seconds; a store
        that hangs is left behind (its thread is a daemon) and its unwritten entries counted.
        Called from the thread that records the calls (else `aclose`)."""
        self._close(self._recorded, timeout)

    async def aclose(self, grace: float = 5.0) -> None:
        """`close` within `grace` seconds, off the event loop."""
        await asyncio.to_thread(self._close, self._recorded, grace)

    def _close(self, recorded: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for writer in self._writers:
            writer.stop(recorded)
        for writer in self._writers:
            writer.join(deadline - time.monotonic())

    def _on_dropped(self, store: str, error_type: str, count: int) -> None:
        self._dropped.add(count, {names.SEL_HISTORY_STORE: store, names.ERROR_TYPE: error_type})
