"""The result cache: LRU bound, TTL, single-flight, invalidation, backend failures as misses."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from sel_otel import LRUMemoryCache, ResultCache
from sel_otel._cache import Lookup
from sel_otel._cache_backend import MISS

from .conftest import Counting, Listing
from .waiting import wait_until, within


async def test_lru_evicts_the_least_recently_used_entry_at_the_bound() -> None:
    evicted: list[int] = []
    backend = LRUMemoryCache(3, on_evict=lambda: evicted.append(1))
    for key in "abc":
        await backend.set(key, key.upper())
    assert await backend.get("a") == "A"  # a becomes most recently used
    await backend.set("d", "D")
    assert await backend.get("b", default=MISS) is MISS
    assert [await backend.get(k) for k in "acd"] == ["A", "C", "D"]
    assert len(evicted) == 1


async def test_eviction_cancels_the_evicted_keys_expiry_timer() -> None:
    backend = LRUMemoryCache(1)
    await backend.set("a", "old", ttl=0.05)
    await backend.set("b", "B")  # evicts a; its timer must go with it
    await backend.set("a", "new")  # evicts b; a has no TTL now
    await asyncio.sleep(0.1)
    assert await backend.get("a") == "new"


async def test_clear_cancels_timers_so_a_key_set_again_survives() -> None:
    backend = LRUMemoryCache(10)
    await backend.set("k", "old", ttl=0.05)
    await backend.clear()
    await backend.set("k", "new")
    await asyncio.sleep(0.1)
    assert await backend.get("k") == "new"


async def test_entries_expire_after_their_ttl() -> None:
    ttl = 0.05
    cache = ResultCache(LRUMemoryCache(10))
    attempts = itertools.count()

    async def store_and_read_back() -> tuple[str, Counting, list[Lookup]]:
        key, compute = cache.key("agent", f"q{next(attempts)}"), Counting()
        lookups = [(await cache.get_or_run(key, ttl, compute)).lookup for _ in range(2)]
        return key, compute, lookups

    key, compute, lookups = await within(ttl, store_and_read_back, "a read within the TTL")
    assert lookups == [Lookup.MISS, Lookup.HIT]
    # Not a guess: the loop runs the entry's expiry timer, due first, before this sleep's.
    await asyncio.sleep(2 * ttl)
    assert (await cache.get_or_run(key, ttl, compute)).lookup is Lookup.MISS
    assert compute.calls == 2


async def test_zero_ttl_bypasses_the_cache() -> None:
    cache = ResultCache(LRUMemoryCache(10))
    compute = Counting()
    for _ in range(2):
        assert (await cache.get_or_run("k", 0, compute)).lookup is Lookup.BYPASS
    assert compute.calls == 2


async def test_an_empty_string_is_a_hit_not_a_miss() -> None:
    cache = ResultCache(LRUMemoryCache(10))
    compute = Counting(output="")
    await cache.get_or_run("k", 60, compute)
    outcome = await cache.get_or_run("k", 60, compute)
    assert (outcome.output, outcome.lookup, compute.calls) == ("", Lookup.HIT, 1)


def test_keys_differ_by_agent_user_and_input_but_not_surrounding_space() -> None:
    cache = ResultCache(LRUMemoryCache(10), namespace="ns")
    key = cache.key("a", "uname -a")
    assert key.startswith("ns:a:") and len(key) == len("ns:a:") + 32
    assert cache.key("a", "  uname -a\n") == key
    assert (
        len(
            {
                key,
                cache.key("b", "uname -a"),
                cache.key("a", "uname"),
                cache.key("a", "uname -a", "u1"),
            }
        )
        == 4
    )


async def test_failures_are_not_cached_and_reach_the_caller() -> None:
    cache = ResultCache(LRUMemoryCache(10))
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"):
            await cache.get_or_run("k", 60, failing)
    assert calls == 2


async def test_concurrent_identical_misses_execute_once() -> None:
    cache = ResultCache(LRUMemoryCache(10))
    compute = Counting(delay=0.05)
    outcomes = await asyncio.gather(*(cache.get_or_run("k", 60, compute) for _ in range(1000)))
    assert compute.calls == 1
    assert {o.output for o in outcomes} == {"out"}
    lookups = [o.lookup for o in outcomes]
    assert lookups.count(Lookup.MISS) == 1 and lookups.count(Lookup.COALESCED) == 999


async def test_concurrent_callers_share_the_leaders_failure() -> None:
    cache = ResultCache(LRUMemoryCache(10))
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise ValueError("shared")

    results = await asyncio.gather(
        *(cache.get_or_run("k", 60, failing) for _ in range(5)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, ValueError) for r in results)


async def test_followers_take_over_when_the_leader_is_cancelled() -> None:
    cache = ResultCache(LRUMemoryCache(10))
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()  # the leader's execution: runs until cancelled
        return "out"

    leader = asyncio.create_task(cache.get_or_run("k", 60, compute))
    await wait_until(lambda: calls == 1, "the leader to execute")
    follower = asyncio.create_task(cache.get_or_run("k", 60, compute))
    await asyncio.sleep(0)  # one turn of the loop: the follower joins the leader's execution
    leader.cancel()
    outcome = await follower
    assert leader.cancelled()
    assert (outcome.output, outcome.lookup, calls) == ("out", Lookup.MISS, 2)


async def test_invalidate_drops_only_that_agents_entries() -> None:
    cache = ResultCache(LRUMemoryCache(10))
    compute = Counting()
    for agent in ("a", "b"):
        await cache.get_or_run(cache.key(agent, "q"), 60, compute)
    await cache.invalidate("a")
    assert (await cache.get_or_run(cache.key("a", "q"), 60, compute)).lookup is Lookup.MISS
    assert (await cache.get_or_run(cache.key("b", "q"), 60, compute)).lookup is Lookup.HIT


class BrokenBackend(LRUMemoryCache):
    """A backend whose storage fails, as an unreachable server would."""

    async def _get(self, *args: Any, **kwargs: Any) -> object:
        raise ConnectionError("backend down")

    async def _set(self, *args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("backend down")


async def test_backend_failures_are_misses_reported_once_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[str] = []
    cache = ResultCache(BrokenBackend(10), on_error=errors.append)
    compute = Counting()
    outcomes = [await cache.get_or_run("k", 60, compute) for _ in range(3)]
    assert [o.output for o in outcomes] == ["out"] * 3
    assert {o.cache_error for o in outcomes} == {"ConnectionError"}
    assert compute.calls == 3
    assert errors == ["ConnectionError"] * 6  # a get and a set per call
    assert len([r for r in caplog.records if "serving without cache" in r.message]) == 1


async def test_a_result_computed_across_an_invalidation_is_not_stored() -> None:
    cache = ResultCache(LRUMemoryCache(10))
    key = cache.key("files", "ls")
    started, finish = asyncio.Event(), asyncio.Event()

    async def slow_listing() -> str:
        started.set()
        await finish.wait()
        return "files: ['a']"  # read before the invalidation below

    listing = asyncio.create_task(cache.get_or_run(key, 60, slow_listing))
    await started.wait()
    await cache.invalidate("files")  # e.g. `rm a` ran meanwhile
    finish.set()
    assert (await listing).output == "files: ['a']"
    fresh = Counting("files: []")
    outcome = await cache.get_or_run(key, 60, fresh)
    assert (outcome.output, outcome.lookup, fresh.calls) == ("files: []", Lookup.MISS, 1)
    assert (await cache.get_or_run(key, 60, fresh)).lookup is Lookup.HIT  # stored this time


async def test_a_call_after_an_invalidation_does_not_join_an_execution_from_before_it() -> None:
    cache = ResultCache(LRUMemoryCache(10))
    key = cache.key("files", "ls")
    listing = Listing("a", "b", delay=0.05)
    before = asyncio.create_task(cache.get_or_run(key, 60, listing))
    await listing.started.wait()
    listing.files.remove("a")  # `rm a` ran,
    await cache.invalidate("files")  # and invalidated the agent's results
    after = await cache.get_or_run(key, 60, listing)
    assert (after.output, after.lookup) == ("files: ['b']", Lookup.MISS)
    assert (await before).output == "files: ['a', 'b']"  # asked before the change
    assert (await cache.get_or_run(key, 60, listing)).output == "files: ['b']"


async def test_invalidating_several_agents_detaches_all_their_calls_before_any_clear() -> None:
    cache = ResultCache(LRUMemoryCache(10))
    backend = cache.backend
    assert isinstance(backend, LRUMemoryCache)
    clear = backend.clear

    async def slow_clear(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.05)  # as a shared backend's round trip
        return await clear(*args, **kwargs)

    backend.clear = slow_clear
    version = "old"
    started = asyncio.Event()

    async def compute() -> str:
        snapshot = version
        started.set()
        await asyncio.sleep(0.2)
        return snapshot

    key = cache.key("second", "q")
    old_call = asyncio.create_task(cache.get_or_run(key, 60, compute))
    await started.wait()
    version = "new"
    invalidation = asyncio.create_task(cache.invalidate("first", "second"))
    await asyncio.sleep(0.01)  # it is clearing "first" now
    new_call = await cache.get_or_run(key, 60, compute)
    assert (new_call.output, new_call.lookup) == ("new", Lookup.MISS)
    await invalidation
    assert (await old_call).output == "old"
