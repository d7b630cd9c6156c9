"""A generation key planted in the shared Redis cannot hurt a call nor let a stale result in.

Whatever an agent's `~generation` key holds instead of a count (text, an integer INCR cannot
count from, an empty string, bytes that are not UTF-8, a key of another type), the next
script that reads it replaces it with a fresh random count and logs it once: calls answer
the agent's real output and are cached again, an invalidation still clears every result,
and a result computed before the value was planted is never stored.

Against a real `redis-server` (tests/redis_server.py); the values are planted with a plain
redis-py client, as anyone who can reach the database could.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from sel_otel import ResultCache
from sel_otel._cache import Lookup
from sel_otel._redis_cache import RedisResultBackend
from sel_otel._shared_cache import GENERATION_KEY, LOCK_SUFFIX
from tests.conftest import Counting

if TYPE_CHECKING:
    from tests.redis_server import CacheFactory

pytest_plugins = ["tests.redis_server"]

NAMESPACE = "generations"

Plant = Callable[[aioredis.Redis, str], Awaitable[Any]]


async def _a_list(raw: aioredis.Redis, key: str) -> None:
    await raw.delete(key)
    await raw.rpush(key, "1", "2")


async def _a_hash(raw: aioredis.Redis, key: str) -> None:
    await raw.delete(key)
    await raw.hset(key, "generation", "1")


#: What may be planted at a generation key: every one of them made INCR, GET or a caller's
#: decode fail before.
PLANTS: dict[str, Plant] = {
    "not-an-integer": lambda raw, key: raw.set(key, "abc"),
    "beyond-int64": lambda raw, key: raw.set(key, "99999999999999999999"),
    "int64-max": lambda raw, key: raw.set(key, str(2**63 - 1)),  # INCR would overflow
    "leading-zero": lambda raw, key: raw.set(key, "042"),
    "empty-string": lambda raw, key: raw.set(key, ""),
    "not-utf8": lambda raw, key: raw.set(key, b"\xff\xfe"),
    "1-mb-string": lambda raw, key: raw.set(key, b"7" * 1_000_000),
    "a-list": _a_list,
    "a-hash": _a_hash,
}

plants = pytest.mark.parametrize("plant", PLANTS.values(), ids=PLANTS.keys())


@pytest.fixture
def make_cache(redis_caches: CacheFactory) -> CacheFactory:
    """Result caches on the test's Redis with a long breaker, each one playing a separate
    instance."""
    return functools.partial(redis_caches, NAMESPACE)


def generation_key(cache: ResultCache, agent: str = "agent") -> str:
    return cache.agent_prefix(agent) + GENERATION_KEY


async def assert_runs_and_caches(cache: ResultCache, key: str, output: str) -> None:
    """A call of `key` runs the agent without a cache error, and the next one is a hit."""
    compute = Counting(output)
    outcome = await cache.get_or_run(key, 60, compute)
    assert (outcome.output, outcome.lookup, outcome.cache_error) == (output, Lookup.MISS, None)
    assert compute.calls == 1
    outcome = await cache.get_or_run(key, 60, Counting("not run"))
    assert (outcome.output, outcome.lookup, outcome.cache_error) == (output, Lookup.HIT, None)


def repairs_logged(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "sel_otel._redis_cache" and key in record.getMessage()
    ]


async def assert_a_count(raw: aioredis.Redis, key: str) -> int:
    """The generation key now holds a count that INCR can go on from."""
    value = await raw.get(key)
    assert value is not None and value.isdigit() and int(value) < 2**63 - 1
    return int(value)


@plants
async def test_a_call_after_a_planted_generation_runs_the_agent_and_is_cached(
    make_cache: CacheFactory,
    raw: aioredis.Redis,
    plant: Plant,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = make_cache()
    key, generations = cache.key("agent", "q"), generation_key(cache)
    await plant(raw, generations)
    with caplog.at_level(logging.WARNING):
        await assert_runs_and_caches(cache, key, "real output")
        await cache.invalidate("agent")
        await assert_runs_and_caches(cache, key, "after the change")
    await assert_a_count(raw, generations)
    logged = repairs_logged(caplog, generations)
    assert len(logged) == 1 and "replaced" in logged[0], logged
    # The breaker stayed closed: another agent's calls still use the cache.
    await assert_runs_and_caches(cache, cache.key("another_agent", "q"), "other")


@plants
async def test_an_invalidation_over_a_planted_generation_clears_every_result(
    make_cache: CacheFactory, raw: aioredis.Redis, plant: Plant
) -> None:
    # Another instance without a breaker reads after the invalidation: a result left behind
    # would be served to it, stale.
    cache, other = make_cache(), make_cache(retry_after=0.0)
    key = cache.key("agent", "q")
    await assert_runs_and_caches(cache, key, "before the change")
    await plant(raw, generation_key(cache))
    await cache.invalidate("agent")
    assert await raw.exists(key) == 0
    await assert_runs_and_caches(other, key, "after the change")


@plants
async def test_a_result_computed_before_a_planted_generation_and_an_invalidation_is_not_stored(
    make_cache: CacheFactory, raw: aioredis.Redis, plant: Plant
) -> None:
    # The invalidation comes from another instance: only the shared generation can tell the
    # computation in flight that its result may be stale.
    cache, other = make_cache(), make_cache()
    key = cache.key("agent", "q")
    started, proceed = asyncio.Event(), asyncio.Event()

    async def listing() -> str:
        started.set()
        await proceed.wait()
        return "stale"

    call = asyncio.ensure_future(cache.get_or_run(key, 60, listing))
    await asyncio.wait_for(started.wait(), 30)
    await plant(raw, generation_key(cache))
    await other.invalidate("agent")
    proceed.set()
    outcome = await call
    assert (outcome.output, outcome.cache_error) == ("stale", None)
    assert await raw.exists(key) == 0
    await assert_runs_and_caches(other, key, "fresh")


@plants
async def test_a_generation_planted_while_a_call_runs_drops_its_result_without_an_error(
    make_cache: CacheFactory, raw: aioredis.Redis, plant: Plant
) -> None:
    cache = make_cache()
    key = cache.key("agent", "q")

    async def planting() -> str:
        await plant(raw, generation_key(cache))
        return "computed"

    outcome = await cache.get_or_run(key, 60, planting)
    assert (outcome.output, outcome.lookup, outcome.cache_error) == ("computed", Lookup.MISS, None)
    assert await raw.exists(key) == 0  # its generation is unknown: it may predate a change
    await assert_runs_and_caches(cache, key, "again")


@plants
async def test_a_repaired_generation_never_counts_back_to_one_a_call_holds(
    make_cache: CacheFactory, raw: aioredis.Redis, plant: Plant
) -> None:
    backend = make_cache().backend
    assert isinstance(backend, RedisResultBackend)
    key = f"{NAMESPACE}:agent:k"
    generations = f"{NAMESPACE}:agent:{GENERATION_KEY}"
    held = await backend.claim(key, key + LOCK_SUFFIX, generations, "held", 5.0)
    await backend.release_lock(key + LOCK_SUFFIX, "held")
    await plant(raw, generations)
    await backend.advance_generation(generations)
    assert await assert_a_count(raw, generations) != int(held.generation)
    assert not await backend.store(key, "stale", 60, generations, held.generation)
    fresh = await backend.claim(key, key + LOCK_SUFFIX, generations, "fresh", 5.0)
    assert fresh.generation.isdigit() and fresh.generation != held.generation
    assert await backend.store(key, "fresh", 60, generations, fresh.generation)


@pytest.mark.parametrize("plant", [PLANTS["a-list"], PLANTS["a-hash"]], ids=["a-list", "a-hash"])
async def test_a_lock_replaced_by_another_type_while_held_keeps_the_breaker_closed(
    make_cache: CacheFactory, raw: aioredis.Redis, plant: Plant
) -> None:
    cache = make_cache()
    key = cache.key("agent", "q")

    async def planting() -> str:
        await plant(raw, key + LOCK_SUFFIX)
        return "computed"

    outcome = await cache.get_or_run(key, 60, planting)
    assert (outcome.output, outcome.cache_error) == ("computed", None)
    # The release found no lock of ours and gave up on it, without counting a failure.
    await assert_runs_and_caches(cache, cache.key("another_agent", "q"), "other")
