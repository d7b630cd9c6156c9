"""`sync_client`: the redis-py client of the stores shared between instances (the history's
stream and the published stats), both used from threads rather than the event loop."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._exceptions import ConfigError
from ._redact import scrub


def sync_client(url: str, *, timeout: float) -> redis.Redis:
    """A client of the Redis at `url` (`redis://` or `rediss://`), each command bounded by
    `timeout` seconds and retried once at once on a broken connection."""
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {scrub(url)!r}: {exc}") from exc
