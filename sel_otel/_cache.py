"""The agent result cache: the policy, over one storage interface.

`ResultCache` owns keys (blake2b of agent, version, user and input), TTL, single-flight,
invalidation and treating every backend failure as a miss. It reaches storage through the
`CacheBackend` steps (`_cache_backend.py`): `LRUMemoryCache` (`_memory_cache.py`) for one
process, or a `SharedBackend` such as `RedisResultBackend` (`_redis_cache.py`) wrapped in
`SharedCache` (`_shared_cache.py`), which runs one execution per key across processes.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple

from opentelemetry import trace

from ._cache_backend import MISS, CacheBackend, CircuitOpen, Ticket, _Miss, error_type, prefix_of
from ._memory_cache import LRUMemoryCache
from ._shared_cache import LOCK_LEASE, LOCK_WAIT, SLOW_HIT, SharedBackend, SharedCache

if TYPE_CHECKING:
    from ._near_cache import NearCache

logger = logging.getLogger(__name__)


class Lookup(enum.Enum):
    """How a cached call was answered."""

    HIT = "hit"  # read from the cache
    MISS = "miss"  # executed, result stored
    COALESCED = "coalesced"  # an identical call in flight was awaited instead of executing
    BYPASS = "bypass"  # not cacheable: executed, nothing stored


class CacheOutcome(NamedTuple):
    """A cached call's output, how it was answered, and the cache error met on the way (if any).

    A named tuple: the cheapest immutable record, and one is built for most calls.
    """

    output: str
    lookup: Lookup
    cache_error: str | None = None


class _LeaderCancelled(Exception):
    """The call executing for a key was cancelled; its followers must retry."""


class _Flight:
    """The one execution of a key in flight in this process. The future its followers await
    is made when the first one joins: most flights (a shared store's hits) have none."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[CacheOutcome] | None = None

    def join(self) -> asyncio.Future[CacheOutcome]:
        """The outcome to await."""
        if self.future is None:
            self.future = asyncio.get_running_loop().create_future()
        return self.future

    def fail(self, exc: BaseException) -> None:
        """Hand `exc` to the followers, if any."""
        if self.future is not None:
            self.future.set_exception(exc)
            self.future.exception()  # retrieved: followers that gave up must not make it warn


class ResultCache:
    """Best-effort cache of agent outputs with single-flight and per-agent invalidation.

    A backend failure is logged once (until the backend recovers), reported to `on_error`
    and handled as a miss: the cache never fails a call. A `SharedBackend` is used through
    `SharedCache`, with the lock lease (`lock_lease`), the longest wait for another process's
    execution when the agent's timeout is unknown (`lock_wait`), the circuit breaker
    (`retry_after`; 0 disables it) and the shortest hit that records a span (`slow_hit`).
    """

    def __init__(
        self,
        backend: CacheBackend | SharedBackend,
        *,
        namespace: str = "sel",
        on_error: Callable[[str], None] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        lock_lease: float = LOCK_LEASE,
        lock_wait: float = LOCK_WAIT,
        retry_after: float = 0.0,
        slow_hit: float = SLOW_HIT,
    ) -> None:
        self.backend = backend
        self.namespace = namespace
        self.storage: CacheBackend
        self._near: NearCache | None = None
        if isinstance(backend, SharedBackend):
            self.storage = SharedCache(
                backend,
                tracer_provider=tracer_provider,
                lock_lease=lock_lease,
                lock_wait=lock_wait,
                retry_after=retry_after,
                slow_hit=slow_hit,
            )
            self._near = backend.near
        else:
            self.storage = backend
        #: The store read without waiting (this process's memory, or its near copies of a
        #: shared store's entries), where `peek` answers.
        self._memory: LRUMemoryCache | NearCache | None = self._near
        if isinstance(backend, LRUMemoryCache) and backend.immediate:
            self._memory = backend
        self._on_error = on_error
        self._flights: dict[str, _Flight] = {}
        self._generations: dict[str, int] = {}
        self._failing = False

    def key(self, agent: str, query: str, user: str | None = None, *, version: str = "") -> str:
        """The cache key: the agent's prefix and blake2b of (agent, the version of its code,
        user, stripped input), each part preceded by its length, so that no two tuples of
        parts share a text (as with separators that a part may hold)."""
        parts = (agent, version, user or "", query.strip())
        text = "".join(f"{len(part)}:{part}" for part in parts)
        # surrogatepass: any str has a key, even one holding bytes a decoder could not read
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        return f"{self.agent_prefix(agent)}{digest}"

    def agent_prefix(self, agent: str) -> str:
        """The prefix shared by every key of `agent`."""
        return f"{self.namespace}:{agent}:"

    def peek(self, key: str) -> str | _Miss:
        """The output cached for `key` when it is at hand (in this process's memory store, or
        a near copy of a shared store's entry) and no execution of `key` is in flight: what
        `get_or_run` would answer as a hit, without a coroutine. Otherwise MISS, and
        `get_or_run` answers."""
        memory = self._memory
        if memory is None or key in self._flights:
            return MISS
        value = memory.lookup(key)
        if self._failing and value is not MISS and self._near is None:
            self._recovered()
        return value

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

        A shared store's read waits on the network: there the first caller reads inside its
        flight, so N concurrent callers send one read, and callers joining a flight that was
        answered from the cache count as hits. A memory read never waits: callers read first,
        and only misses make a flight.
        """
        if ttl <= 0:
            return CacheOutcome(await compute(), Lookup.BYPASS)
        error = None
        while True:
            flight = self._flights.get(key)
            if flight is None:
                if self.storage.shared:
                    break
                try:
                    value = await self.storage.read(key)
                except Exception as exc:
                    error = self._failed("get", exc)
                else:
                    if self._failing:
                        self._recovered()
                    if isinstance(value, str):
                        return CacheOutcome(value, Lookup.HIT)
                flight = self._flights.get(key)  # a leader may have started during the read
                if flight is None:
                    break
            try:
                shared = await asyncio.shield(flight.join())
            except _LeaderCancelled:
                continue
            lookup = Lookup.HIT if shared.lookup is Lookup.HIT else Lookup.COALESCED
            return CacheOutcome(shared.output, lookup, shared.cache_error)
        flight = _Flight()
        self._flights[key] = flight
        try:
            if not self.storage.shared:
                outcome = await self._lead(key, ttl, compute, compute_timeout, error)
            else:
                # The flight's read, here rather than in `_lead`: a hit runs no more coroutines.
                try:
                    value = await self.storage.read(key)
                except Exception as exc:  # the store is down: no lock, no write
                    outcome = CacheOutcome(await compute(), Lookup.MISS, self._failed("get", exc))
                else:
                    if self._failing:
                        self._recovered()
                    if isinstance(value, str):
                        outcome = CacheOutcome(value, Lookup.HIT)
                    else:
                        outcome = await self._lead(key, ttl, compute, compute_timeout, error)
        except asyncio.CancelledError:
            flight.fail(_LeaderCancelled())
            raise
        except BaseException as exc:
            flight.fail(exc)
            raise
        finally:
            if self._flights.get(key) is flight:  # an invalidation may have dropped it already
                del self._flights[key]
        if flight.future is not None:
            flight.future.set_result(outcome)
        return outcome

    async def _lead(
        self,
        key: str,
        ttl: float,
        compute: Callable[[], Awaitable[str]],
        compute_timeout: float | None,
        error: str | None,
    ) -> CacheOutcome:
        """This process's one execution for `key`, which the store does not hold: acquire,
        compute, write unless invalidated meanwhile, release."""
        storage = self.storage
        try:
            ticket = await storage.acquire(key, compute_timeout)
        except Exception as exc:
            return CacheOutcome(await compute(), Lookup.MISS, self._failed("lock", exc))
        if isinstance(ticket.found, str):
            lookup = Lookup.COALESCED if ticket.waited else Lookup.HIT
            return CacheOutcome(ticket.found, lookup, error)
        generation = self._generation(key)
        try:
            output = await compute()
            if self._generation(key) == generation:  # else invalidated meanwhile: may be stale
                error = await self._write(key, output, ttl, ticket) or error
        finally:
            try:
                await storage.release(key, ticket)
            except Exception as exc:
                self._failed("unlock", exc)
        return CacheOutcome(output, Lookup.MISS, error)

    async def _write(self, key: str, output: str, ttl: float, ticket: Ticket) -> str | None:
        """Store `output`; the error met, if any."""
        try:
            await self.storage.write(key, output, ttl, ticket)
        except Exception as exc:
            return self._failed("set", exc)
        self._recovered()
        return None

    def _generation(self, key: str) -> int:
        """How many times the agent owning `key` was invalidated by this process."""
        return self._generations.get(prefix_of(key), 0)

    async def invalidate(self, *agents: str) -> None:
        """Drop every cached result of each of `agents` (in a shared backend: for every
        process). From the call on, no result computed before it is stored or shared with
        a later call, for any of them, even while the backend is still being cleared."""
        prefixes = [self.agent_prefix(agent) for agent in agents]
        for prefix in prefixes:
            self._generations[prefix] = self._generations.get(prefix, 0) + 1
            if self._near is not None:  # before the store hears of it, or fails to
                self._near.drop(prefix)
            # Calls made from now on must not join an execution that started before the change.
            for key in [key for key in self._flights if key.startswith(prefix)]:
                del self._flights[key]
        try:
            for prefix in prefixes:
                try:
                    await self.storage.invalidate(prefix)
                except Exception as exc:
                    self._failed("invalidate", exc)
                else:
                    self._recovered()
        finally:
            if self._near is not None:
                for prefix in prefixes:
                    self._near.dropped(prefix)

    async def retire(self, *agents: str) -> None:
        """Forget the results of `agents`, whose code changed or went. Their keys name the old
        version, so no later call reaches them: a process's own store frees them now, a
        shared one keeps them for the instances still running that version, until their TTL.
        """
        if not self.storage.shared:
            await self.invalidate(*agents)

    async def open(self) -> None:
        """Get the backend ready ahead of the first call (connect a shared one), so that calls
        made at start do not pay for the connection within their short operation timeout. A
        backend that does not answer is logged and handled like any failure: calls run
        without the cache."""
        try:
            await self.storage.open()
        except Exception as exc:
            self._failed("connect", exc)
        else:
            self._recovered()

    async def close(self) -> None:
        """Release the backend's connections."""
        try:
            await self.storage.close()
        except Exception:
            logger.exception("closing the cache backend failed")

    def _failed(self, operation: str, exc: Exception) -> str:
        """Report a failed (or skipped) backend operation; its error type."""
        error = error_type(exc)
        if not self._failing and not isinstance(exc, CircuitOpen):
            self._failing = True
            logger.warning("cache %s failed (%s: %s); serving without cache", operation, error, exc)
        if self._on_error is not None:
            self._on_error(error)
        return error

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("cache backend answers again")
