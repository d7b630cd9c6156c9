"""`RedisHistoryStore`: the history shared by every instance, one Redis Stream.

Each entry is one stream item (`XADD`, field `e`: the entry as a JSON array) with approximate
`MAXLEN` trimming, and each batch trims by age with an approximate `MINID` (a stream id starts
with its time in milliseconds). Every instance writes to the same stream, so a query on any of
them reads everyone's entries: newest first (`XREVRANGE`), filtered here, page by page.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis

from ._history import HistoryEntry, HistoryQuery, HistoryStore
from ._redis_sync import sync_client

#: Stream items read per `XREVRANGE` while looking for matches.
PAGE = 1000


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
        # Stream ids are the time of the write, never before the call started.
        low = "-" if query.since is None else str(int(query.since * 1000))
        high = "+"
        found: list[HistoryEntry] = []
        scanned = 0
        while len(found) < query.limit and scanned < self.max_scan:
            items = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                self.client.xrevrange(self.key, max=high, min=low, count=PAGE),
            )
            for _, fields in items:
                entry = _decode(fields[b"e"])
                if query.matches(entry):
                    found.append(entry)
            scanned += len(items)
            if len(items) < PAGE:
                break
            high = "(" + items[-1][0].decode()
        return found[: query.limit]

    def close(self) -> None:
        self.client.close()


def _decode(raw: bytes) -> HistoryEntry:
    values: list[Any] = json.loads(raw)
    return HistoryEntry(*values)
