"""What a cache shared by several processes adds: one execution per key across processes, a
circuit breaker, and a span per backend operation.

`SharedCache` implements the `CacheBackend` steps over the primitives of a `SharedBackend`
(`RedisResultBackend` in `_redis_cache.py`, which implements each primitive as one atomic
script). The protocol, for a key `K` of an agent whose keys start with `P`:

- `K` holds the output (JSON `{"output": ...}`) with the agent's TTL as its expiry;
  `K:lock` holds the token of the process computing `K`; `P~generation` counts the agent's
  invalidations by any process, from a random start (a count restarting from 0 after an
  eviction or a restart could repeat one that a computation in flight read). Anything else
  found there (planted text, an integer INCR cannot count from, a key of another type) is
  replaced with a fresh random start by the next `claim` or `advance_generation`, and
  logged: like an invalidation, that moves on from every generation a computation holds.
- Within a process, concurrent callers of `K` send one `read` (single-flight, `_cache.py`).
- On a miss, `claim` returns `K`'s output, else takes `K:lock` (SET NX PX with a random
  token) for a first lease of a few operation timeouts, with the generation then. Once the
  answer is in, the holder extends the lease to `lock_lease` (`extend_lock`, by token), so
  that a claim whose answer never reached its caller (it timed out, but ran in Redis) blocks
  the key for that first lease only. The holder renews the lease every third of it while the
  agent runs, then `store`s the output, which sets `K` only if the generation is still the
  one claimed, so that no result computed before any process's invalidation is stored, and
  releases the lock by token (`release_lock`). A release that fails or that the breaker
  skips, and the token of a claim that failed, are released by token in the background as
  soon as Redis answers again.
- A caller that finds the lock held claims again (2 ms, growing to 20 ms) until the output
  appears (a coalesced call) or it takes the lock, released without an output (the agent
  failed) or expired (its holder died: the key is blocked at most one lease; a lock without
  an expiry is none of ours and counts as expired). It waits at
  most the agent's timeout plus one lease (`lock_wait` when the timeout is unknown), then
  runs the agent itself.
- An invalidation advances `P~generation`, then deletes `P*` by SCAN and UNLINK (never a
  lock or a generation); one that fails is done again in the background, as a release is,
  as soon as Redis answers again.

A backend failure opens the breaker: for `retry_after` seconds the steps raise
`CircuitOpen` without trying the backend (calls run without the cache), then one call probes
it and a success closes the breaker. An invalidation is always tried. Each operation is a
short child span (`cache get`, `cache lock`, `cache set`, `cache invalidate`), except hits
faster than `slow_hit`: that span would cost a third of a hit, and the agent span times it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import _semconv as names
from ._cache_backend import MISS, CircuitOpen, Ticket, _Miss, error_type, prefix_of
from ._telemetry import package_version

if TYPE_CHECKING:
    from ._near_cache import NearCache

logger = logging.getLogger(__name__)

#: Appended to a key to name its single-flight lock.
LOCK_SUFFIX: Final = ":lock"

#: Appended to an agent's key prefix to name the count of that agent's invalidations.
GENERATION_KEY: Final = "~generation"

#: Default seconds a single-flight lock lives unless its holder renews it (`lock_lease`).
LOCK_LEASE: Final = 5.0

#: Default longest wait for another process's execution when the agent's timeout is unknown
#: (`lock_wait`).
LOCK_WAIT: Final = 35.0

#: Default shortest hit, in seconds, that records a span (`slow_hit`).
SLOW_HIT: Final = 0.005

#: Longest pause between two claims of a key whose lock another process holds.
LOCK_POLL_MAX: Final = 0.02

#: A claim's first lease, in operation timeouts (at most `lock_lease`): time enough for the
#: claim's answer to come back and the holder's extension of the lease to reach the store.
FIRST_LEASE_TIMEOUTS: Final = 4

#: Locks left to release by token in the background, at most; beyond, the oldest are left to
#: their leases.
MAX_ORPHANS: Final = 10_000

#: Pause between two tries of work left to the background, while the store does not answer.
ORPHAN_RETRY: Final = 0.05

#: What the background does once the store answers again (`SharedCache._later`).
_RELEASE, _INVALIDATE = "release the lock", "invalidate"


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
    """The primitives of the protocol above, each one atomic in the store."""

    #: Attributes of its spans (`db.system.name`, `server.address`, ...).
    db_attributes: Mapping[str, str | int]
    #: Seconds one operation may take (None: unbounded).
    timeout: float | None
    #: Copies of entries kept in this process while the store tracks them, or None.
    near: NearCache | None

    async def get(self, key: str, default: Any = None) -> Any:
        """The output stored under `key`, else `default`."""
        ...

    async def clear(self, namespace: str) -> Any:
        """Delete every key that starts with `namespace` but locks and generations; the count
        deleted."""
        ...

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
        `generation`; False when it did."""
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
        """Open a connection and prepare the scripts ahead of the first call."""
        ...

    async def close(self) -> Any:
        """Release the connections."""
        ...


class _Breaker:
    """Skip a failing backend for `retry_after` seconds, then let one call probe it."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        #: When the backend is tried again (monotonic clock); 0.0 while the breaker is closed,
        #: which callers may test first, sparing themselves a call on every operation.
        self.open_until = 0.0

    def check(self) -> None:
        """Raise `CircuitOpen` while the backend is skipped."""
        if not self.open_until:
            return
        now = time.monotonic()
        if now < self.open_until:
            raise CircuitOpen
        self.open_until = now + self.retry_after  # this caller probes; the others still skip

    def failure(self) -> None:
        if self.retry_after > 0:
            self.open_until = time.monotonic() + self.retry_after

    def success(self) -> None:
        self.open_until = 0.0


class SharedCache:
    """The `CacheBackend` steps over a `SharedBackend`, as the module docstring describes."""

    shared = True

    def __init__(
        self,
        backend: SharedBackend,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        lock_lease: float = LOCK_LEASE,
        lock_wait: float = LOCK_WAIT,
        retry_after: float = 0.0,
        slow_hit: float = SLOW_HIT,
    ) -> None:
        self.backend = backend
        self.lock_lease = lock_lease
        self.lock_wait = lock_wait
        self.first_lease = min(lock_lease, FIRST_LEASE_TIMEOUTS * (backend.timeout or lock_lease))
        self.breaker = _Breaker(retry_after)
        self._slow_hit_ns = int(slow_hit * 1e9)
        self._tracer = trace.get_tracer(names.SCOPE_NAME, package_version(), tracer_provider)
        self._db_attributes = dict(backend.db_attributes)
        self._keepers: dict[str, asyncio.Task[None]] = {}
        #: Work left to the background, oldest first, by (what, the token or prefix): the lock
        #: key or prefix it is about, and the work; and the task doing it.
        self._later_work: dict[tuple[str, str], tuple[str, Callable[[], Awaitable[object]]]] = {}
        self._worker: asyncio.Task[None] | None = None

    async def read(self, key: str) -> str | _Miss:
        """Read `key`; its `cache get` span is recorded afterwards, for misses, failures and
        hits slower than `slow_hit` only, so that a fast hit costs no span."""
        breaker = self.breaker
        if breaker.open_until:
            breaker.check()
        start = time.time_ns()
        try:
            value = await self.backend.get(key, MISS)
        except Exception as exc:
            self._failed(self._past_span(names.CACHE_GET, "GET", start), exc).end()
            raise
        if breaker.open_until:
            breaker.success()
        hit = isinstance(value, str)
        if not hit or time.time_ns() - start >= self._slow_hit_ns:
            span = self._past_span(names.CACHE_GET, "GET", start)
            span.set_attribute(names.SEL_CACHE_HIT, hit)
            span.end()
        return value if hit else MISS

    async def acquire(self, key: str, compute_timeout: float | None) -> Ticket:
        """Claim `key` until its output appears or its lock is ours, waiting for another
        process's execution at most `compute_timeout` plus one lease."""
        wait = self.lock_wait if compute_timeout is None else compute_timeout + self.lock_lease
        lock_key, generation_key = key + LOCK_SUFFIX, prefix_of(key) + GENERATION_KEY
        token = secrets.token_hex(16)
        start = time.monotonic()
        delay = 0.002
        waited = False
        with self._span(names.CACHE_LOCK, "EVALSHA") as span:
            while True:
                self.breaker.check()
                try:
                    claimed = await self.backend.claim(
                        key, lock_key, generation_key, token, self.first_lease
                    )
                except Exception as exc:
                    self._failed(span, exc)
                    self._orphaned(lock_key, token)  # the claim may have run all the same
                    raise
                except asyncio.CancelledError:
                    self._orphaned(lock_key, token)
                    raise
                self.breaker.success()
                if claimed.outcome is not Claim.HELD or time.monotonic() - start >= wait:
                    break
                waited = True
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, LOCK_POLL_MAX)
            span.set_attribute(names.SEL_CACHE_LOCK_ACQUIRED, claimed.outcome is Claim.ACQUIRED)
            span.set_attribute(names.SEL_CACHE_HIT, isinstance(claimed.outcome, str))
            span.set_attribute(names.SEL_CACHE_LOCK_WAIT_MS, (time.monotonic() - start) * 1e3)
        if isinstance(claimed.outcome, str):
            return Ticket(claimed.outcome, waited, claimed.generation)
        if claimed.outcome is Claim.HELD:  # waited `wait` for a live holder: run anyway
            return Ticket(generation=claimed.generation)
        renew_in = self.lock_lease / 3
        try:
            if not await self.backend.extend_lock(lock_key, token, self.lock_lease):
                logger.debug("lock %s expired before its claim was answered", lock_key)
                return Ticket(generation=claimed.generation)
        except Exception as exc:
            logger.debug("extending lock %s failed: %r", lock_key, exc)
            renew_in = self.first_lease / 2  # try again before the first lease runs out
        except asyncio.CancelledError:  # the caller is gone: so is its claim
            self._orphaned(lock_key, token)
            raise
        self._keepers[token] = asyncio.create_task(self._keep_lock(lock_key, token, renew_in))
        return Ticket(generation=claimed.generation, token=token)

    async def write(self, key: str, output: str, ttl: float, ticket: Ticket) -> bool:
        """Store `output` unless any process invalidated its agent since `ticket` was taken."""
        self.breaker.check()
        with self._span(names.CACHE_SET, "EVALSHA") as span:
            generation_key = prefix_of(key) + GENERATION_KEY
            try:
                stored = await self.backend.store(
                    key, output, ttl, generation_key, ticket.generation
                )
            except Exception as exc:
                self._failed(span, exc)
                raise
            span.set_attribute(names.SEL_CACHE_STORED, stored)
        self.breaker.success()
        return stored

    async def release(self, key: str, ticket: Ticket) -> None:
        """Stop renewing the lock and delete it by token; while the breaker is open, or when
        that fails, it is released in the background once the store answers."""
        token, lock_key = ticket.token, key + LOCK_SUFFIX
        if token is None:
            return
        keeper = self._keepers.pop(token, None)
        try:
            if keeper is not None:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
            self.breaker.check()
            await self.backend.release_lock(lock_key, token)
        except CircuitOpen:
            self._orphaned(lock_key, token)
            return
        except Exception:
            self.breaker.failure()
            self._orphaned(lock_key, token)
            raise
        except BaseException:  # cancelled (again) on the way: released all the same, later
            self._orphaned(lock_key, token)
            raise
        self.breaker.success()

    async def invalidate(self, prefix: str) -> None:
        """Count one more invalidation, then delete the agent's outputs (deleted even when the
        count failed, before the failure is raised). Never skipped by the breaker: a stale
        result outliving a mutating command is worse than one timeout. One that fails is done
        again in the background until the store answers (`_invalidate_again`)."""
        try:
            await self._invalidate(prefix)
        except Exception:
            self._later(_INVALIDATE, prefix, prefix, lambda: self._invalidate_again(prefix))
            raise

    async def _invalidate(self, prefix: str) -> None:
        with self._span(names.CACHE_INVALIDATE, "SCAN") as span:
            try:
                try:
                    await self.backend.advance_generation(prefix + GENERATION_KEY)
                except Exception:
                    # It may have run in Redis all the same (a reply lost to a timeout), and
                    # the outputs are to go either way: delete them, then report the failure.
                    await self.backend.clear(namespace=prefix)
                    raise
                deleted = await self.backend.clear(namespace=prefix)
            except Exception as exc:
                self._failed(span, exc)
                raise
            span.set_attribute(names.SEL_CACHE_DELETED, int(deleted))
        self.breaker.success()

    async def open(self) -> None:
        """Connect and load the scripts ahead of the first call."""
        try:
            await self.backend.connect()
        except Exception:
            self.breaker.failure()
            raise
        self.breaker.success()

    async def close(self) -> None:
        """Stop the work left to the background (locks left behind are freed by their leases;
        invalidations not done again are logged), and disconnect."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        work_left = self._later_work.items()
        prefixes = sorted(about for (what, _), (about, _) in work_left if what == _INVALIDATE)
        if prefixes:
            logger.warning(
                "cache invalidation not done for %s: results stay until their TTL",
                ", ".join(prefixes),
            )
        await self.backend.close()

    def _orphaned(self, lock_key: str, token: str) -> None:
        """Release `lock_key` by `token` in the background, as soon as the store answers."""
        self._later(_RELEASE, token, lock_key, lambda: self.backend.release_lock(lock_key, token))

    def _later(
        self, what: str, key: str, about: str, work: Callable[[], Awaitable[object]]
    ) -> None:
        """Do `work` (`what`, for the lock key or prefix `about`; once for each `key`) in the
        background, trying again while the store is away. Beyond `MAX_ORPHANS` pieces of work,
        the oldest locks to release are left to their leases."""
        self._later_work[what, key] = (about, work)
        if what == _RELEASE and len(self._later_work) > MAX_ORPHANS:
            oldest = next(pending for pending in self._later_work if pending[0] == _RELEASE)
            del self._later_work[oldest]
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work_later())

    async def _work_later(self) -> None:
        """The work left to the background, one piece at a time, oldest first. The breaker does
        not apply, and no span is made: no call waits for this."""
        while self._later_work:
            pending, (about, work) = next(iter(self._later_work.items()))
            try:
                await work()
            except Exception as exc:
                logger.debug("%s %s failed again: %r", pending[0], about, exc)
                await asyncio.sleep(ORPHAN_RETRY)
            else:
                if self._later_work.get(pending, (None, None))[1] is work:
                    del self._later_work[pending]

    async def _invalidate_again(self, prefix: str) -> None:
        await self.backend.advance_generation(prefix + GENERATION_KEY)
        await self.backend.clear(namespace=prefix)
        logger.warning("cache invalidation of %s done, late", prefix)

    async def _keep_lock(self, lock_key: str, token: str, renew_in: float) -> None:
        """Renew the lease in `renew_in` seconds, then every third of it while the agent runs;
        stop once it is lost."""
        while True:
            await asyncio.sleep(renew_in)
            renew_in = self.lock_lease / 3
            try:
                if not await self.backend.extend_lock(lock_key, token, self.lock_lease):
                    logger.debug("lock %s expired while its agent ran", lock_key)
                    return
            except Exception as exc:  # the lease runs out by itself if the backend stays away
                logger.debug("renewing lock %s failed: %r", lock_key, exc)

    def _failed(self, span: trace.Span, exc: Exception) -> trace.Span:
        """Open the breaker and mark `span` failed."""
        self.breaker.failure()
        error = error_type(exc)
        span.set_status(Status(StatusCode.ERROR, error))
        span.set_attribute(names.ERROR_TYPE, error)
        return span

    def _past_span(self, name: str, operation: str, start_ns: int) -> trace.Span:
        return self._tracer.start_span(
            name,
            kind=SpanKind.INTERNAL,
            attributes={**self._db_attributes, names.DB_OPERATION_NAME: operation},
            start_time=start_ns,
        )

    @contextlib.contextmanager
    def _span(self, name: str, operation: str) -> Iterator[trace.Span]:
        with self._tracer.start_as_current_span(
            name,
            kind=SpanKind.INTERNAL,
            attributes={**self._db_attributes, names.DB_OPERATION_NAME: operation},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span
