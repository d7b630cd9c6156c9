"""The agent result cache, over aiocache.

`ResultCache` owns the policy: keys (blake2b of agent, user and input), TTL, single-flight,
invalidation, and treating every backend failure as a miss. The backends own storage:
`LRUMemoryCache` (`_memory_cache.py`) bounds aiocache's memory backend to a number of entries;
`RedisResultBackend` (`_redis_cache.py`) shares entries between processes.

With a shared backend (one that implements `SharedBackend`), `ResultCache` also:

- runs one execution per key across every process: the in-process single-flight sends one
  `claim` per key, which returns the stored value or takes the key's lock (SET NX PX with a
  random token, a lease renewed every third of the lease while the agent runs, released by
  token); callers that find the lock held poll `claim` until the value appears or the lock
  goes (a holder that died frees the key when its lease runs out), at most `lock_wait`;
- opens a circuit breaker on a backend failure: for `retry_after` seconds calls skip the
  backend (a miss, `circuit_open`), then one call probes it and closes the breaker on success;
- records a short child span per backend operation (`cache get`, `cache lock`, `cache set`,
  `cache invalidate`), except for hits faster than `slow_hit` (5 ms): the span would cost a
  third of a hit's time, and the agent span already times it. The in-memory path records none.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from aiocache.base import BaseCache
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import _semconv as names
from ._exceptions import ConfigError
from ._memory_cache import LRUMemoryCache
from ._settings import Settings
from ._telemetry import package_version

logger = logging.getLogger(__name__)


class _Miss(enum.Enum):
    MISS = "miss"


#: Returned by lookups that found nothing, so that no stored value is ever confused with a miss.
MISS: Final = _Miss.MISS

#: Appended to a key to name its single-flight lock in a shared backend.
LOCK_SUFFIX: Final = ":lock"

#: Appended to an agent's key prefix to name, in a shared backend, the count of that agent's
#: invalidations by any process: a result is stored only if the count did not move while it
#: was computed.
GENERATION_KEY: Final = "~generation"

#: Longest pause between two looks at a lock held by another process.
LOCK_POLL_MAX: Final = 0.02

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]+")


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


class Claim(enum.Enum):
    """What `SharedBackend.claim` found when the key held no value."""

    ACQUIRED = "acquired"  # the lock is ours: run the agent, store, release
    HELD = "held"  # another process holds the lock


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claim's answer: the stored output or what became of the lock, and the agent's
    generation then, which a later `SharedBackend.store` must find unchanged."""

    outcome: str | Claim
    generation: str


@runtime_checkable
class SharedBackend(Protocol):
    """What a backend shared by several processes adds for distributed single-flight."""

    #: Attributes of its spans (`db.system.name`, `server.address`, ...).
    db_attributes: Mapping[str, str | int]

    async def claim(
        self, key: str, lock_key: str, generation_key: str, token: str, lease: float
    ) -> Claimed:
        """The stored output of `key`, else take `lock_key` for `lease` seconds if free; with
        the generation held in `generation_key`."""
        ...

    async def store(
        self, key: str, output: str, ttl: float, generation_key: str, generation: str
    ) -> bool:
        """Store `output` for `ttl` seconds unless `generation_key` moved on from
        `generation` (the agent's results were invalidated meanwhile); False when it did."""
        ...

    async def advance_generation(self, generation_key: str) -> None:
        """Count one more invalidation, so that results computed before it are not stored."""
        ...

    async def extend_lock(self, lock_key: str, token: str, lease: float) -> bool:
        """Renew the lock's lease if `token` still holds it."""
        ...

    async def release_lock(self, lock_key: str, token: str) -> bool:
        """Delete the lock if `token` still holds it."""
        ...

    async def connect(self) -> None:
        """Open a connection and prepare the lock scripts ahead of the first call."""
        ...


class _Breaker:
    """Skip a failing backend for `retry_after` seconds, then let one call probe it."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self._open_until = 0.0

    def allow(self) -> bool:
        if not self._open_until:
            return True
        now = time.monotonic()
        if now < self._open_until:
            return False
        self._open_until = now + self.retry_after  # this caller probes; the others still skip
        return True

    def failure(self) -> None:
        if self.retry_after > 0:
            self._open_until = time.monotonic() + self.retry_after

    def success(self) -> None:
        self._open_until = 0.0


class _LeaderCancelled(Exception):
    """The call executing for a key was cancelled; its followers must retry."""


class ResultCache:
    """Best-effort cache of agent outputs with single-flight and per-agent invalidation.

    A backend failure is logged once (until the backend recovers), reported to `on_error`
    and handled as a miss: the cache never fails a call. A shared backend (`SharedBackend`)
    adds a distributed lock per key (`lock_lease`, renewed while the agent runs; callers wait
    for a held lock at most `lock_wait`), a circuit breaker (`retry_after`; 0 disables it) and
    a child span per backend operation (for a hit, only when it took `slow_hit` or more).
    """

    def __init__(
        self,
        backend: BaseCache,
        *,
        namespace: str = "sel",
        on_error: Callable[[str], None] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        lock_lease: float = 5.0,
        lock_wait: float = 35.0,
        retry_after: float = 0.0,
        slow_hit: float = 0.005,
    ) -> None:
        self.backend = backend
        self.namespace = namespace
        self.lock_lease = lock_lease
        self.lock_wait = lock_wait
        self._on_error = on_error
        self._flights: dict[str, asyncio.Future[CacheOutcome]] = {}
        self._generations: dict[str, int] = {}
        self._failing = False
        self._breaker = _Breaker(retry_after)
        self._slow_hit_ns = int(slow_hit * 1e9)
        self._shared = backend if isinstance(backend, SharedBackend) else None
        self._tracer = trace.get_tracer(names.SCOPE_NAME, package_version(), tracer_provider)
        self._db_attributes = dict(self._shared.db_attributes) if self._shared else {}

    def key(self, agent: str, query: str, user: str | None = None) -> str:
        """The cache key: the agent's prefix and blake2b of (agent, user, stripped input)."""
        text = f"{agent}\x00{user or ''}\x00{query.strip()}"
        # surrogatepass: any str has a key, even one holding bytes a decoder could not read
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        return f"{self.agent_prefix(agent)}{digest}"

    def agent_prefix(self, agent: str) -> str:
        """The prefix shared by every key of `agent`."""
        return f"{self.namespace}:{agent}:"

    async def get_or_run(
        self,
        key: str,
        ttl: float,
        compute: Callable[[], Awaitable[str]],
        *,
        compute_timeout: float | None = None,
    ) -> CacheOutcome:
        """Return the cached output for `key`, or run `compute` once for all concurrent callers.

        Only successful outputs are stored, for `ttl` seconds; `ttl <= 0` bypasses the cache.
        An output is not stored when its agent's results were invalidated while it was being
        computed (it may predate the change). Errors raised by `compute` reach every caller
        sharing that execution. `compute_timeout` is how long `compute` may take: another
        process's execution of the same key is waited for at most that plus the lock lease.
        """
        if ttl <= 0:
            return CacheOutcome(await compute(), Lookup.BYPASS)
        if self._shared is not None:
            shared = self._shared
            return await self._single_flight(
                key,
                lambda: self._shared_get(key),
                lambda error: self._lead_shared(shared, key, ttl, compute, error, compute_timeout),
                read_in_flight=True,
            )
        return await self._single_flight(
            key,
            lambda: self._local_get(key),
            lambda error: self._lead_local(key, ttl, compute, error),
        )

    async def _single_flight(
        self,
        key: str,
        read: Callable[[], Awaitable[tuple[object, str | None]]],
        lead: Callable[[str | None], Awaitable[CacheOutcome]],
        *,
        read_in_flight: bool = False,
    ) -> CacheOutcome:
        """Join the call in flight for `key`, or `read` it; on a miss `lead` a call.

        With `read_in_flight` (a backend whose reads wait on the network) the first caller
        reads inside its flight, so N concurrent callers send one read; callers joining a
        flight that was answered from the cache count as hits. A memory read never waits,
        so there callers read first and only misses make a flight.
        """
        error = None
        while True:
            flight = self._flights.get(key)
            if flight is None:
                if read_in_flight:
                    break
                value, error = await read()
                if isinstance(value, str):
                    return CacheOutcome(value, Lookup.HIT, error)
                flight = self._flights.get(key)  # a leader may have started during the read
                if flight is None:
                    break
            try:
                shared = await asyncio.shield(flight)
            except _LeaderCancelled:
                continue
            lookup = Lookup.HIT if shared.lookup is Lookup.HIT else Lookup.COALESCED
            return CacheOutcome(shared.output, lookup, shared.cache_error)
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            outcome = None
            if read_in_flight:
                value, error = await read()
                if isinstance(value, str):
                    outcome = CacheOutcome(value, Lookup.HIT, error)
            if outcome is None:
                outcome = await lead(error)
            flight.set_result(outcome)
            return outcome
        except asyncio.CancelledError:
            flight.set_exception(_LeaderCancelled())
            raise
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            if self._flights.get(key) is flight:  # an invalidation may have dropped it already
                del self._flights[key]
            if flight.done() and not flight.cancelled():
                flight.exception()  # mark retrieved: a flight nobody joined must not warn

    async def _local_get(self, key: str) -> tuple[object, str | None]:
        try:
            value = await self.backend.get(key, default=MISS)
        except Exception as exc:
            return MISS, self._failed("get", exc)
        self._recovered()
        return value, None

    async def _lead_local(
        self, key: str, ttl: float, compute: Callable[[], Awaitable[str]], error: str | None
    ) -> CacheOutcome:
        generation = self._generation(key)
        output = await compute()
        if self._generation(key) != generation:  # invalidated meanwhile: may be stale
            return CacheOutcome(output, Lookup.MISS, error)
        try:
            await self.backend.set(key, output, ttl=ttl)
        except Exception as exc:
            error = self._failed("set", exc)
        return CacheOutcome(output, Lookup.MISS, error)

    def _generation(self, key: str) -> int:
        """How many times the agent owning `key` was invalidated by this process."""
        return self._generations.get(_prefix_of(key), 0)

    async def invalidate(self, *agents: str) -> None:
        """Drop every cached result of each of `agents` (in a shared backend: for every
        process). From the call on, no result computed before it is stored or shared with
        a later call, for any of them, even while the backend is still being cleared."""
        prefixes = [self.agent_prefix(agent) for agent in agents]
        for prefix in prefixes:
            self._generations[prefix] = self._generations.get(prefix, 0) + 1
            # Calls made from now on must not join an execution that started before the change.
            for key in [key for key in self._flights if key.startswith(prefix)]:
                del self._flights[key]
        for prefix in prefixes:
            if self._shared is not None:
                await self._invalidate_shared(self._shared, prefix)
                continue
            try:
                await self.backend.clear(namespace=prefix)
            except Exception as exc:
                self._failed("clear", exc)
            else:
                self._recovered()

    async def open(self) -> None:
        """Connect a shared backend ahead of the first call, so that calls made at start do not
        pay for the connection within their short operation timeout. A backend that does not
        answer is logged and handled like any failure: calls run without the cache."""
        if self._shared is None:
            return
        try:
            await self._shared.connect()
        except Exception as exc:
            self._failed("connect", exc)
        else:
            self._answered()

    async def close(self) -> None:
        """Release the backend's connections."""
        try:
            await self.backend.close()
        except Exception:
            logger.exception("closing the cache backend failed")

    # -- shared backend ---------------------------------------------------------------------

    async def _lead_shared(
        self,
        shared: SharedBackend,
        key: str,
        ttl: float,
        compute: Callable[[], Awaitable[str]],
        error: str | None,
        compute_timeout: float | None,
    ) -> CacheOutcome:
        """This process's one execution for `key`, under the key's lock when it can be had."""
        if error is not None:  # the backend is failing: no lock, no store
            return CacheOutcome(await compute(), Lookup.MISS, error)
        lock_key = key + LOCK_SUFFIX
        token = secrets.token_hex(16)
        wait = self.lock_wait if compute_timeout is None else compute_timeout + self.lock_lease
        claimed, waited, error = await self._claim(shared, key, lock_key, token, wait)
        if claimed is None:  # failed or skipped: run without the cache
            return CacheOutcome(await compute(), Lookup.MISS, error)
        if isinstance(claimed.outcome, str):
            return CacheOutcome(claimed.outcome, Lookup.COALESCED if waited else Lookup.HIT, error)
        generation = self._generation(key)
        if claimed.outcome is Claim.HELD:  # waited `wait` for a live holder: run anyway
            output = await compute()
            if self._generation(key) != generation:
                return CacheOutcome(output, Lookup.MISS, error)
            error = await self._shared_set(shared, key, output, ttl, claimed.generation)
            return CacheOutcome(output, Lookup.MISS, error)
        keeper = asyncio.create_task(self._keep_lock(shared, lock_key, token))
        try:
            output = await compute()
            if self._generation(key) == generation:  # else invalidated meanwhile: may be stale
                error = await self._shared_set(shared, key, output, ttl, claimed.generation)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            await self._release(shared, lock_key, token)
        return CacheOutcome(output, Lookup.MISS, error)

    async def _shared_get(self, key: str) -> tuple[object, str | None]:
        """Read `key`; its `cache get` span is recorded afterwards, for misses, failures and
        hits slower than `slow_hit` only, so that a fast hit costs no span."""
        if not self._breaker.allow():
            return MISS, self._skipped()
        start = time.time_ns()
        try:
            value = await self.backend.get(key, default=MISS)
        except Exception as exc:
            error = self._failed("get", exc)
            _span_failed(self._past_span(names.CACHE_GET, "GET", start), error).end()
            return MISS, error
        self._answered()
        hit = isinstance(value, str)
        if not hit or time.time_ns() - start >= self._slow_hit_ns:
            span = self._past_span(names.CACHE_GET, "GET", start)
            span.set_attribute(names.SEL_CACHE_HIT, hit)
            span.end()
        return value, None

    async def _claim(
        self, shared: SharedBackend, key: str, lock_key: str, token: str, wait: float
    ) -> tuple[Claimed | None, bool, str | None]:
        """(value, lock taken or still held after `wait` seconds, or None on failure), waited?,
        the error."""
        start = time.monotonic()
        delay = 0.002
        waited = False
        with self._span(names.CACHE_LOCK, "EVALSHA") as span:
            while True:
                if not self._breaker.allow():
                    return None, waited, self._skipped()
                try:
                    claimed = await shared.claim(
                        key, lock_key, _generation_key(_prefix_of(key)), token, self.lock_lease
                    )
                except Exception as exc:
                    error = self._failed("lock", exc)
                    _span_failed(span, error)
                    return None, waited, error
                self._answered()
                if claimed.outcome is not Claim.HELD or time.monotonic() - start >= wait:
                    break
                waited = True
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, LOCK_POLL_MAX)
            span.set_attribute(names.SEL_CACHE_LOCK_ACQUIRED, claimed.outcome is Claim.ACQUIRED)
            span.set_attribute(names.SEL_CACHE_HIT, isinstance(claimed.outcome, str))
            span.set_attribute(names.SEL_CACHE_LOCK_WAIT_MS, (time.monotonic() - start) * 1e3)
        return claimed, waited, None

    async def _shared_set(
        self, shared: SharedBackend, key: str, output: str, ttl: float, generation: str
    ) -> str | None:
        """Store `output` unless any process invalidated its agent since `generation`."""
        if not self._breaker.allow():
            return self._skipped()
        with self._span(names.CACHE_SET, "EVALSHA") as span:
            try:
                generation_key = _generation_key(_prefix_of(key))
                stored = await shared.store(key, output, ttl, generation_key, generation)
            except Exception as exc:
                error = self._failed("set", exc)
                _span_failed(span, error)
                return error
            span.set_attribute(names.SEL_CACHE_STORED, stored)
        self._answered()
        return None

    async def _keep_lock(self, shared: SharedBackend, lock_key: str, token: str) -> None:
        """Renew the lease every third of it while the agent runs; stop once it is lost."""
        while True:
            await asyncio.sleep(self.lock_lease / 3)
            try:
                if not await shared.extend_lock(lock_key, token, self.lock_lease):
                    logger.debug("lock %s expired while its agent ran", lock_key)
                    return
            except Exception as exc:  # the lease runs out by itself if the backend stays away
                logger.debug("renewing lock %s failed: %r", lock_key, exc)

    async def _release(self, shared: SharedBackend, lock_key: str, token: str) -> None:
        if not self._breaker.allow():
            return  # the lease frees the key
        try:
            await shared.release_lock(lock_key, token)
        except Exception as exc:
            self._failed("unlock", exc)
        else:
            self._answered()

    async def _invalidate_shared(self, shared: SharedBackend, prefix: str) -> None:
        # Never skipped by the breaker: a stale result outliving a mutating command is worse
        # than one operation's timeout.
        with self._span(names.CACHE_INVALIDATE, "SCAN") as span:
            try:
                await shared.advance_generation(_generation_key(prefix))
                deleted = await self.backend.clear(namespace=prefix)
            except Exception as exc:
                _span_failed(span, self._failed("invalidate", exc))
                return
            span.set_attribute(names.SEL_CACHE_DELETED, int(deleted))
        self._answered()

    def _past_span(self, name: str, operation: str, start_ns: int) -> trace.Span:
        return self._tracer.start_span(
            name,
            kind=SpanKind.INTERNAL,
            attributes={**self._db_attributes, names.DB_OPERATION_NAME: operation},
            start_time=start_ns,
        )

    @contextlib.contextmanager
    def _span(self, name: str, operation: str) -> Iterator[trace.Span]:
        attributes = {**self._db_attributes, names.DB_OPERATION_NAME: operation}
        with self._tracer.start_as_current_span(
            name,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def _skipped(self) -> str:
        if self._on_error is not None:
            self._on_error(names.CACHE_ERROR_CIRCUIT_OPEN)
        return names.CACHE_ERROR_CIRCUIT_OPEN

    def _answered(self) -> None:
        self._breaker.success()
        self._recovered()

    # -- failures ---------------------------------------------------------------------------

    def _failed(self, operation: str, exc: Exception) -> str:
        error_type = "timeout" if isinstance(exc, TimeoutError) else type(exc).__qualname__
        self._breaker.failure()
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


def _prefix_of(key: str) -> str:
    """The prefix of the agent owning `key` (see `ResultCache.agent_prefix`)."""
    return key[: key.rfind(":") + 1]


def _generation_key(prefix: str) -> str:
    """The key counting the invalidations of the agent whose keys start with `prefix`."""
    return prefix + GENERATION_KEY


def _span_failed(span: trace.Span, error_type: str) -> trace.Span:
    span.set_status(Status(StatusCode.ERROR, error_type))
    span.set_attribute(names.ERROR_TYPE, error_type)
    return span


def cache_from_settings(
    settings: Settings,
    meter_provider: metrics.MeterProvider | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> ResultCache:
    """The result cache `settings.cache_url` asks for, counting evictions and backend errors.

    `memory://` is a per-process LRU cache; `redis://` and `rediss://` a cache shared by every
    process on that Redis, apart by `settings.cache_namespace`.
    """
    meter = metrics.get_meter(names.SCOPE_NAME, package_version(), meter_provider)
    evictions = meter.create_counter(
        names.CACHE_EVICTIONS,
        unit=names.ENTRY_UNIT,
        description="Cache entries evicted by the LRU bound",
    )
    errors = meter.create_counter(
        names.CACHE_ERRORS,
        unit=names.ERROR_UNIT,
        description="Cache backend operations that failed and were served as misses",
    )

    def on_error(error_type: str) -> None:
        errors.add(1, {names.ERROR_TYPE: error_type})

    scheme = settings.cache_url.partition("://")[0]
    if scheme in ("redis", "rediss"):
        from ._redis_cache import RedisResultBackend  # imports this module

        if not _NAMESPACE.fullmatch(settings.cache_namespace):
            raise ConfigError(
                f"SEL_CACHE_NAMESPACE={settings.cache_namespace!r}: use letters, digits, "
                "'_', '.' and '-' only (it prefixes keys in a shared Redis)"
            )
        return ResultCache(
            RedisResultBackend.from_url(settings.cache_url, timeout=settings.cache_timeout),
            namespace=settings.cache_namespace,
            on_error=on_error,
            tracer_provider=tracer_provider,
            lock_lease=settings.cache_lock_lease,
            lock_wait=settings.agent_timeout + settings.cache_lock_lease,
            retry_after=settings.cache_retry_after,
        )
    if scheme != "memory":
        raise ConfigError(
            f"SEL_CACHE_URL: unsupported scheme {scheme!r} (memory://, redis://, rediss://)"
        )
    backend = LRUMemoryCache(settings.cache_max_entries, on_evict=lambda: evictions.add(1))
    return ResultCache(backend, namespace=settings.cache_namespace, on_error=on_error)
