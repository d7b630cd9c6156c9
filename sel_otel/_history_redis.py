"""`RedisHistoryStore`: the history shared by every instance, one Redis Stream.

Each entry is one stream item (`XADD`, field `e`: the entry as a JSON array) with approximate
`MAXLEN` trimming, and each batch trims by age with an approximate `MINID` (a stream id starts
with its time in milliseconds). Every instance writes to the same stream, so a query on any of
them reads everyone's entries: newest first (`XREVRANGE`), filtered here, page by page. An
item that holds no entry of this shape (another version's, or anything else written to the
key) is skipped, and logged once.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import cast

import redis

from ._history import HistoryEntry, HistoryQuery, HistoryStore
from ._markup import writable_text
from ._redis_sync import sync_client

logger = logging.getLogger(__name__)

#: Stream items read per `XREVRANGE` while looking for matches.
PAGE = 1000
#: The type of each field of a stored entry, in `HistoryEntry` order (None: may be null).
_FIELD_TYPES: tuple[tuple[type | tuple[type, ...], bool], ...] = (
    (str, False),  # id
    ((int, float), False),  # time
    (str, False),  # agent
    (str, True),  # input
    (str, True),  # user
    (str, True),  # frontend
    (str, False),  # outcome
    (str, True),  # error_type
    ((int, float), False),  # duration_ms
    (bool, False),  # cached
    (str, False),  # instance
    (str, False),  # trace_id
    (str, False),  # span_id
    (str, True),  # output
)


class RedisHistoryStore(HistoryStore):
    """History in the Redis Stream `key`, at most about `max_len` entries of `max_age` seconds.

    A query reads at most `max_scan` items looking for matches: a filter that matches
    nothing costs a bounded scan, not the whole stream.
    """

    name = "redis"

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        max_len: int,
        max_age: float,
        max_scan: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.key = key
        self.max_len = max_len
        self.max_age = max_age
        self.max_scan = max_scan
        self._clock = clock
        self._skipping = False  # an item of another shape was logged

    @classmethod
    def from_url(
        cls, url: str, key: str, *, timeout: float, max_len: int, max_age: float
    ) -> RedisHistoryStore:
        """A store on the Redis at `url` (`redis://` or `rediss://`), each command bounded by
        `timeout` seconds and retried once at once on a broken connection."""
        return cls(sync_client(url, timeout=timeout), key, max_len=max_len, max_age=max_age)

    def write(self, entries: Sequence[HistoryEntry]) -> None:
        pipeline = self.client.pipeline(transaction=False)
        for entry in entries:
            pipeline.xadd(self.key, {"e": json.dumps(entry)}, maxlen=self.max_len, approximate=True)
        oldest = int((self._clock() - self.max_age) * 1000)
        pipeline.xtrim(self.key, minid=max(oldest, 0), approximate=True)
        pipeline.execute()

    def query(self, query: HistoryQuery) -> list[HistoryEntry]:
        """The most recent matching entries by start time. Items come newest written first,
        and an entry is written after its call started: once `limit` entries are found, the
        scan goes on only while items were written after the latest `limit`-th start."""
        high = "+"
        found: list[HistoryEntry] = []
        scanned = 0
        while scanned < self.max_scan:
            items = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                self.client.xrevrange(self.key, max=high, count=PAGE),
            )
            for _, fields in items:
                entry = self._decode(fields)
                if entry is not None and query.matches(entry):
                    found.append(entry)
            scanned += len(items)
            if len(items) < PAGE:
                break
            high = "(" + items[-1][0].decode()
            if len(found) >= query.limit:
                latest = heapq.nlargest(query.limit, found, key=_started)
                if _written(items[-1][0]) <= latest[-1].time:
                    break
        return heapq.nlargest(query.limit, found, key=_started)

    def written_after(
        self, query: HistoryQuery, cursor: str | None
    ) -> tuple[list[HistoryEntry], str]:
        """Entries follow the stream's ids, the order of their writes: a cursor is the last
        id read."""
        if cursor is None:
            latest = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                self.client.xrevrange(self.key, count=1),
            )
            return [], latest[0][0].decode() if latest else "0-0"
        found: list[HistoryEntry] = []
        for _ in range(max(self.max_scan // PAGE, 1)):
            items = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                self.client.xrange(self.key, min="(" + cursor, count=PAGE),
            )
            for stream_id, fields in items:
                entry = self._decode(fields)
                if entry is not None and query.matches(entry):
                    found.append(entry)
                cursor = stream_id.decode()
            if len(items) < PAGE:
                break
        return found, cursor

    def close(self) -> None:
        self.client.close()

    def _decode(self, fields: dict[bytes, bytes]) -> HistoryEntry | None:
        """The entry an item holds, its text made writable; None, logged once, for an item
        that holds none of this shape."""
        entry = _entry(fields.get(b"e"))
        if entry is None and not self._skipping:
            self._skipping = True
            logger.warning("history stream %s holds items of another shape; skipped", self.key)
        return entry


def _entry(raw: bytes | None) -> HistoryEntry | None:
    try:
        values = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser
        return None
    if not isinstance(values, list) or len(values) < len(_FIELD_TYPES) - 1:
        return None
    values = values[: len(_FIELD_TYPES)]  # a later version's added fields come last
    for index, value in enumerate(values):
        kinds, nullable = _FIELD_TYPES[index]
        if value is None and nullable:
            continue
        if not isinstance(value, kinds) or (kinds is not bool and isinstance(value, bool)):
            return None
        if isinstance(value, str):
            values[index] = writable_text(value)
    return HistoryEntry(*values)


def _started(entry: HistoryEntry) -> float:
    return float(entry.time)


def _written(stream_id: bytes) -> float:
    """The time an item was written, in seconds: its stream id's milliseconds."""
    return int(stream_id.split(b"-", 1)[0]) / 1000
