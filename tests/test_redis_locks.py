"""Locks of the shared cache do not outlive their callers: a claim whose answer the caller never
saw, or a release skipped while the breaker was open, blocks the key for a small part of a
lease at most, never for the whole lease.

Against a real `redis-server` (tests/redis_server.py), stalled with SIGSTOP at the exact step
under test. The lease is long (`LEASE`), so that a lock left for a whole lease is plain to see.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import pytest

from sel_otel import ResultCache
from sel_otel._cache import CacheOutcome, Lookup
from sel_otel._redis_cache import RedisResultBackend
from tests.conftest import Counting

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]

LEASE = 10.0
TIMEOUT = 0.25  # SEL_CACHE_TIMEOUT's default

CacheFactory = Callable[..., Awaitable[ResultCache]]


@pytest.fixture
async def make_cache(redis_server: RedisServer) -> AsyncIterator[CacheFactory]:
    """Result caches on the test's Redis, connected and their scripts loaded as at start, each
    one playing a separate instance."""
    caches: list[ResultCache] = []

    async def make(**options: Any) -> ResultCache:
        options.setdefault("lock_lease", LEASE)
        backend = RedisResultBackend.from_url(redis_server.url, timeout=TIMEOUT)
        cache = ResultCache(backend, namespace="locks", **options)
        caches.append(cache)
        await cache.open()
        return cache

    yield make
    for cache in caches:
        await cache.close()


async def test_a_claim_answered_after_its_caller_timed_out_does_not_hold_the_key(
    redis_server: RedisServer, make_cache: CacheFactory
) -> None:
    first, second = await make_cache(retry_after=0.2), await make_cache()
    key = first.key("agent", "q")
    backend = first.backend
    assert isinstance(backend, RedisResultBackend)
    get = backend.get

    async def get_then_stall(*args: Any, **kwargs: Any) -> Any:
        value = await get(*args, **kwargs)
        redis_server.pause()  # the claim that follows the read waits in Redis's socket
        return value

    backend.get = get_then_stall  # type: ignore[method-assign]
    try:
        outcome = await first.get_or_run(key, 60, Counting())
    finally:
        redis_server.resume()  # Redis now takes the lock for a caller that gave up on it
    assert (outcome.output, outcome.cache_error) == ("out", "timeout")

    start = time.monotonic()
    outcome = await second.get_or_run(key, 60, Counting())
    assert outcome.lookup is Lookup.MISS
    assert time.monotonic() - start < LEASE / 4


async def test_a_release_skipped_by_the_open_breaker_is_made_when_redis_answers(
    redis_server: RedisServer, make_cache: CacheFactory
) -> None:
    first, second = await make_cache(retry_after=60.0), await make_cache()
    key = first.key("agent", "q")

    async def compute() -> str:
        # While this holds the key's lock, Redis stalls for another call, which opens the
        # breaker: the holder's write and release come while it is open.
        redis_server.pause()
        try:
            other = await first.get_or_run(first.key("agent", "other"), 60, Counting())
        finally:
            redis_server.resume()
        assert other.cache_error == "timeout"
        return "out"

    outcome = await first.get_or_run(key, 60, compute)
    assert (outcome.output, outcome.cache_error) == ("out", "circuit_open")

    start = time.monotonic()
    outcome = await second.get_or_run(key, 60, Counting())
    assert outcome.lookup is Lookup.MISS
    assert time.monotonic() - start < LEASE / 4


async def test_a_confirmed_claim_holds_the_key_for_the_whole_lease(
    make_cache: CacheFactory,
) -> None:
    first, second = await make_cache(), await make_cache()
    key = first.key("agent", "slow")
    compute = Counting(delay=1.5)  # longer than a claim's first lease, shorter than a renewal
    leader = await _running(first.get_or_run(key, 60, compute), compute)
    outcome = await second.get_or_run(key, 60, compute)
    assert (await leader).lookup is Lookup.MISS
    assert (outcome.lookup, compute.calls) == (Lookup.COALESCED, 1)


async def _running(
    call: Coroutine[Any, Any, CacheOutcome], compute: Counting
) -> asyncio.Task[CacheOutcome]:
    """`call` as a task, once `compute` runs in it (the key's lock is taken)."""
    task = asyncio.ensure_future(call)
    deadline = time.monotonic() + 10
    while compute.calls == 0:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.005)
    return task


async def test_an_invalidation_whose_count_timed_out_still_deletes_the_outputs(
    redis_server: RedisServer, make_cache: CacheFactory
) -> None:
    """The count may have run in Redis though its reply was lost to the timeout: the stored
    outputs are deleted all the same, so no instance goes on serving them."""
    writer, invalidator = await make_cache(), await make_cache()
    key = writer.key("agent", "q")
    assert (await writer.get_or_run(key, 60, Counting("old"))).lookup is Lookup.MISS
    backend = invalidator.backend
    assert isinstance(backend, RedisResultBackend)
    advance = backend.advance_generation

    async def stalled_advance(generation_key: str) -> None:
        redis_server.pause()
        try:
            await advance(generation_key)
        finally:
            redis_server.resume()

    backend.advance_generation = stalled_advance  # type: ignore[method-assign]
    await invalidator.invalidate("agent")

    compute = Counting("new")
    outcome = await writer.get_or_run(key, 60, compute)
    assert (outcome.output, outcome.lookup, compute.calls) == ("new", Lookup.MISS, 1)
