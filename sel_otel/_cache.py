"""The agent result cache, over aiocache.

`ResultCache` owns the policy: keys (blake2b of agent, user and input), TTL, single-flight,
invalidation, and treating every backend failure as a miss. The backends own storage:
`LRUMemoryCache` bounds aiocache's memory backend to a number of entries.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiocache import SimpleMemoryCache
from aiocache.base import BaseCache
from opentelemetry import metrics

from . import _semconv as names
from ._exceptions import ConfigError
from ._settings import Settings
from ._telemetry import package_version

logger = logging.getLogger(__name__)


class _Miss(enum.Enum):
    MISS = "miss"


#: Returned by lookups that found nothing, so that no stored value is ever confused with a miss.
MISS: Final = _Miss.MISS


class LRUMemoryCache(SimpleMemoryCache):  # type: ignore[misc]
    """aiocache's memory backend, bounded to `max_size` entries with least-recently-used eviction.

    Only the storage primitives are overridden. Each key with a TTL has one expiry timer; the
    timer is cancelled whenever its key leaves the cache (eviction, delete, clear), so a stale
    timer can never delete a key that was set again later. Values are stored by reference:
    store immutable values (the result cache stores `str`).
    """

    def __init__(
        self, max_size: int = 500, *, on_evict: Callable[[], None] | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("timeout", None)  # no asyncio.wait_for around in-memory dict access
        super().__init__(**kwargs)
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._on_evict = on_evict
        self._cache: OrderedDict[str, object] = OrderedDict()

    async def _get(self, key: str, encoding: str = "utf-8", _conn: object = None) -> object:
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
        return value

    async def _multi_get(
        self, keys: list[str], encoding: str = "utf-8", _conn: object = None
    ) -> list[object]:
        return [await self._get(key) for key in keys]

    async def _set(
        self,
        key: str,
        value: object,
        ttl: float | None = None,
        _cas_token: object = None,
        _conn: object = None,
    ) -> bool | int:
        if _cas_token is not None and _cas_token != self._cache.get(key):
            return 0
        self._cancel_timer(key)
        self._cache[key] = value
        self._cache.move_to_end(key)
        if ttl:
            self._handlers[key] = asyncio.get_running_loop().call_later(ttl, self._remove, key)
        while len(self._cache) > self.max_size:
            oldest = next(iter(self._cache))
            self._remove(oldest)
            if self._on_evict is not None:
                self._on_evict()
        return True

    async def _delete(self, key: str, _conn: object = None) -> int:
        return self._remove(key)

    async def _clear(self, namespace: str | None = None, _conn: object = None) -> bool:
        doomed = (
            [k for k in self._cache if k.startswith(namespace)] if namespace else [*self._cache]
        )
        for key in doomed:
            self._remove(key)
        return True

    async def _redlock_release(self, key: str, value: object) -> int:
        return self._remove(key) if self._cache.get(key) == value else 0

    def _remove(self, key: str) -> int:
        self._cancel_timer(key)
        return 0 if self._cache.pop(key, None) is None else 1

    def _cancel_timer(self, key: str) -> None:
        handle = self._handlers.pop(key, None)
        if handle is not None:
            handle.cancel()


class Lookup(enum.Enum):
    """How a cached call was answered."""

    HIT = "hit"  # read from the cache
    MISS = "miss"  # executed, result stored
    COALESCED = "coalesced"  # an identical call in flight was awaited instead of executing
    BYPASS = "bypass"  # not cacheable: executed, nothing stored


@dataclass(frozen=True, slots=True)
class CacheOutcome:
    """A cached call's output, how it was answered, and the cache error met on the way (if any)."""

    output: str
    lookup: Lookup
    cache_error: str | None = None


class _LeaderCancelled(Exception):
    """The call executing for a key was cancelled; its followers must retry."""


class ResultCache:
    """Best-effort cache of agent outputs with single-flight and per-agent invalidation.

    A backend failure is logged once (until the backend recovers), reported to `on_error`
    and handled as a miss: the cache never fails a call.
    """

    def __init__(
        self,
        backend: BaseCache,
        *,
        namespace: str = "sel",
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.namespace = namespace
        self._on_error = on_error
        self._flights: dict[str, asyncio.Future[str]] = {}
        self._failing = False

    def key(self, agent: str, query: str, user: str | None = None) -> str:
        """The cache key: the agent's prefix and blake2b of (agent, user, stripped input)."""
        digest = hashlib.blake2b(
            f"{agent}\x00{user or ''}\x00{query.strip()}".encode(), digest_size=16
        ).hexdigest()
        return f"{self.agent_prefix(agent)}{digest}"

    def agent_prefix(self, agent: str) -> str:
        """The prefix shared by every key of `agent`."""
        return f"{self.namespace}:{agent}:"

    async def get_or_run(
        self, key: str, ttl: float, compute: Callable[[], Awaitable[str]]
    ) -> CacheOutcome:
        """Return the cached output for `key`, or run `compute` once for all concurrent callers.

        Only successful outputs are stored, for `ttl` seconds; `ttl <= 0` bypasses the cache.
        Errors raised by `compute` reach every caller sharing that execution.
        """
        if ttl <= 0:
            return CacheOutcome(await compute(), Lookup.BYPASS)
        error = None
        while True:
            try:
                value = await self.backend.get(key, default=MISS)
            except Exception as exc:
                error = self._failed("get", exc)
                value = MISS
            else:
                self._recovered()
            if isinstance(value, str):
                return CacheOutcome(value, Lookup.HIT, error)
            flight = self._flights.get(key)
            if flight is None:
                break
            try:
                return CacheOutcome(await asyncio.shield(flight), Lookup.COALESCED, error)
            except _LeaderCancelled:
                continue
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            output = await compute()
            try:
                await self.backend.set(key, output, ttl=ttl)
            except Exception as exc:
                error = self._failed("set", exc)
            flight.set_result(output)
            return CacheOutcome(output, Lookup.MISS, error)
        except asyncio.CancelledError:
            flight.set_exception(_LeaderCancelled())
            raise
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            del self._flights[key]
            if flight.done() and not flight.cancelled():
                flight.exception()  # mark retrieved: a flight nobody joined must not warn

    async def invalidate(self, agent: str) -> None:
        """Drop every cached result of `agent`."""
        try:
            await self.backend.clear(namespace=self.agent_prefix(agent))
        except Exception as exc:
            self._failed("clear", exc)
        else:
            self._recovered()

    async def close(self) -> None:
        """Release the backend's connections."""
        try:
            await self.backend.close()
        except Exception:
            logger.exception("closing the cache backend failed")

    def _failed(self, operation: str, exc: Exception) -> str:
        error_type = "timeout" if isinstance(exc, TimeoutError) else type(exc).__qualname__
        if not self._failing:
            self._failing = True
            logger.warning(
                "cache %s failed (%s: %s); serving without cache", operation, error_type, exc
            )
        if self._on_error is not None:
            self._on_error(error_type)
        return error_type

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("cache backend answers again")


def cache_from_settings(
    settings: Settings, meter_provider: metrics.MeterProvider | None = None
) -> ResultCache:
    """The result cache `settings.cache_url` asks for, counting evictions and backend errors."""
    meter = metrics.get_meter(names.SCOPE_NAME, package_version(), meter_provider)
    evictions = meter.create_counter(
        names.CACHE_EVICTIONS, unit="{entry}", description="Cache entries evicted by the LRU bound"
    )
    errors = meter.create_counter(
        names.CACHE_ERRORS,
        unit="{error}",
        description="Cache backend operations that failed and were served as misses",
    )
    scheme = settings.cache_url.partition("://")[0]
    if scheme != "memory":
        raise ConfigError(f"SEL_CACHE_URL={settings.cache_url!r}: unsupported scheme {scheme!r}")
    backend = LRUMemoryCache(settings.cache_max_entries, on_evict=lambda: evictions.add(1))
    return ResultCache(
        backend,
        namespace=settings.cache_namespace,
        on_error=lambda error_type: errors.add(1, {names.ERROR_TYPE: error_type}),
    )
