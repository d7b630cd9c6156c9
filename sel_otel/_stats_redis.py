"""`RedisStatsStore`: where every instance publishes its stats, in the deployment's Redis.

Each life of an instance (its `service.instance.id` and start time) has one key,
`{prefix}:{started_ms}:{instance}`, holding its latest state and expiring a few publishing
intervals after it was written; the set `{prefix}` lists those keys. A reader takes the set's
members, then each key's value and remaining lifetime (PTTL: how old a state is, without
comparing clocks); members whose key has expired are removed from the set. The keys of the
members a reader found last time are read with the set, in the same round trip.

The prefix is not a possible agent's cache prefix (`{namespace}:{agent}:`, an identifier), so
invalidating an agent's results never deletes the stats.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import redis

from ._exceptions import StatsStoreError
from ._redis_sync import sync_client

logger = logging.getLogger(__name__)

#: Seconds the set of published keys outlives the last publish (its members expire sooner).
INDEX_LIFETIME = 86_400


class RedisStatsStore:
    """The published states under `prefix` in the Redis of `client` (sync redis-py: used
    from the publisher's thread, and from a worker thread of the event loop to read)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        #: The members of the previous read, whose keys the next read asks for with the set.
        self._known: list[bytes] = []

    @classmethod
    def from_url(cls, url: str, prefix: str, *, timeout: float) -> RedisStatsStore:
        """A store on the Redis at `url`, each command bounded by `timeout` seconds and
        retried once at once on a broken connection."""
        return cls(sync_client(url, timeout=timeout), prefix)

    def put(self, member: str, payload: bytes, expiry: float) -> None:
        """Store the state `member` (see `_stats_state.member`) for `expiry` seconds."""
        pipeline = self.client.pipeline(transaction=True)
        pipeline.set(f"{self.prefix}:{member}", payload, px=max(round(expiry * 1000), 1))
        pipeline.sadd(self.prefix, member)
        pipeline.expire(self.prefix, INDEX_LIFETIME)
        self._run(pipeline)

    def read(self) -> list[tuple[bytes, bytes, float]]:
        """Every live state's member, payload and seconds left to live, in the order of their
        members. One round trip when the members are those of the previous read: their keys
        are read with the set; a second one for members new since."""
        known = self._known
        pipeline = self.client.pipeline(transaction=False)
        pipeline.smembers(self.prefix)
        self._queue_reads(pipeline, known)
        replies = self._run(pipeline, errors_as_replies=True)
        if not isinstance(replies[0], set):  # the members' key holds no set (planted)
            error = replies[0] if isinstance(replies[0], Exception) else TypeError(replies[0])
            raise StatsStoreError(f"{self.prefix} holds no set of instances", original=error)
        members = cast(set[bytes], replies[0])
        found = dict(zip(known, zip(replies[1::2], replies[2::2], strict=True), strict=True))
        new = sorted(members.difference(known))
        if new:
            pipeline = self.client.pipeline(transaction=False)
            self._queue_reads(pipeline, new)
            replies = self._run(pipeline, errors_as_replies=True)
            found.update(zip(new, zip(replies[::2], replies[1::2], strict=True), strict=True))
        names = sorted(members)
        self._known = names
        live: list[tuple[bytes, bytes, float]] = []
        expired: list[bytes] = []
        for name in names:
            payload, remaining = found[name]
            if isinstance(payload, redis.ResponseError):  # no string: no state of ours
                payload, remaining = b"", 0
            if payload is None:
                expired.append(name)
            else:  # -1 (no expiry) cannot happen: every key is written with one
                live.append((name, payload, max(int(remaining), 0) / 1000))
        if expired:  # tidying only: a read-only credential or a replica reads all the same
            try:
                self._call(self.client.srem, self.prefix, *expired)
            except StatsStoreError as exc:
                logger.debug("forgetting expired stats members failed: %s", exc)
        return live

    def _queue_reads(self, pipeline: redis.client.Pipeline, names: list[bytes]) -> None:
        """GET and PTTL of each member's state; a key that holds no string (planted) is read
        as an empty payload, which no state decodes: that member is named unreadable."""
        prefix = self.prefix.encode() + b":"
        for name in names:
            pipeline.get(prefix + name)
            pipeline.pttl(prefix + name)

    def close(self) -> None:
        self.client.close()

    def _run(
        self, pipeline: redis.client.Pipeline, *, errors_as_replies: bool = False
    ) -> list[Any]:
        """The replies; with `errors_as_replies`, a command's error (a key of another type)
        in place of its reply, else raised."""
        return cast(list[Any], self._call(pipeline.execute, not errors_as_replies))

    @staticmethod
    def _call(command: Callable[..., object], *args: object) -> object:
        try:
            return command(*args)
        except (redis.RedisError, OSError) as exc:
            raise StatsStoreError(f"{type(exc).__name__}: {exc}", original=exc) from exc
