"""Near copies of a shared Redis cache's entries (`_near_cache.py`): a hit read once from Redis
is answered from memory after that, and Redis's own tracking drops the copy whenever the entry
changes, by any instance; a silent or lost Redis drops them all.

Against a real `redis-server` (tests/redis_server.py); "another instance" is a second cache on
the same Redis and namespace, with its own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from sel_otel import ResultCache
from sel_otel._cache import Lookup
from sel_otel._cache_backend import MISS
from sel_otel._near_cache import NearCache
from sel_otel._redis_cache import RedisResultBackend
from tests.conftest import AgentWriter, Counting, RuntimeFactory
from tests.waiting import wait_until

if TYPE_CHECKING:
    from tests.redis_server import CacheFactory, RedisServer

pytest_plugins = ["tests.redis_server"]

NAMESPACE = "near"
MAX_OUTPUT = 1000


def near_of(cache: ResultCache) -> NearCache:
    backend = cache.backend
    assert isinstance(backend, RedisResultBackend) and backend.near is not None
    return backend.near


@pytest.fixture
def make_cache(redis_caches: CacheFactory) -> CacheFactory:
    """Caches of one namespace on the test's Redis, keeping near copies."""
    return functools.partial(redis_caches, NAMESPACE, max_output=MAX_OUTPUT, near_entries=50)


async def opened(cache: ResultCache) -> ResultCache:
    """`cache`, connected, once Redis tracks its copies."""
    await cache.open()
    await wait_until(lambda: near_of(cache).live, "tracking to be on")
    return cache


async def redis_reads(raw: aioredis.Redis) -> int:
    """Reads of a key that Redis has answered with a value, so far."""
    return int((await raw.info("stats"))["keyspace_hits"])


async def copied(cache: ResultCache, key: str, output: str) -> None:
    """Read `key` through `cache` (a hit in Redis) until a read leaves a copy in its memory: a
    read that the push of an earlier write (the test's own) overtook keeps none."""

    async def read_copies() -> bool:
        outcome = await cache.get_or_run(key, 60, Counting("not run"))
        assert (outcome.output, outcome.lookup) == (output, Lookup.HIT)
        return cache.peek(key) == output

    await wait_until(read_copies, "a read to leave a copy")


@contextlib.asynccontextmanager
async def invalidating(cache: ResultCache, server: RedisServer) -> AsyncIterator[None]:
    """Within: `cache` invalidates the results of "agent", held up by a stopped Redis after
    its first step; at the end Redis resumes and the invalidation is over."""
    server.pause()
    try:
        invalidation = asyncio.create_task(cache.invalidate("agent"))
        await asyncio.sleep(0)  # the invalidation's first step, up to its first trip to Redis
        yield
    finally:
        server.resume()
    await invalidation


# -- hits ---------------------------------------------------------------------------------------


async def test_a_hit_read_once_from_redis_is_then_answered_without_it(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    writer, reader = await opened(make_cache()), await opened(make_cache())
    key = writer.key("agent", "q")
    assert reader.peek(key) is MISS
    await writer.get_or_run(key, 60, Counting("out"))
    await copied(reader, key, "out")
    reads = await redis_reads(raw)
    assert [reader.peek(key) for _ in range(20)] == ["out"] * 20
    assert await redis_reads(raw) == reads


async def test_a_runtime_on_redis_answers_repeated_hits_from_memory(
    redis_server: RedisServer,
    raw: aioredis.Redis,
    write_agent: AgentWriter,
    make_runtime: RuntimeFactory,
) -> None:
    write_agent("double", 'DESCRIPTION = "twice"\ndef run(q):\n    return q * 2\n')
    runtimes = [make_runtime(cache_url=redis_server.url) for _ in range(2)]
    for runtime in runtimes:
        await runtime.cache.open()
        await wait_until(lambda r=runtime: near_of(r.cache).live, "tracking to be on")  # type: ignore[misc]
    first, second = runtimes
    assert not (await first.run("double", "ab")).cached

    async def answered_from_memory() -> bool:
        reads = await redis_reads(raw)
        assert (await second.run("double", "ab")).cached
        return await redis_reads(raw) == reads

    await wait_until(answered_from_memory, "a hit answered without Redis")
    reads = await redis_reads(raw)
    results = [await second.run("double", "ab") for _ in range(10)]
    assert {(r.output, r.cached) for r in results} == {("abab", True)}
    assert await redis_reads(raw) == reads


async def test_no_copy_without_tracking_every_hit_reads_redis(
    redis_caches: CacheFactory, raw: aioredis.Redis
) -> None:
    cache = redis_caches(NAMESPACE)  # near_entries=0
    await cache.open()
    key = cache.key("agent", "q")
    await cache.get_or_run(key, 60, Counting("out"))
    reads = await redis_reads(raw)
    for _ in range(3):
        assert (await cache.get_or_run(key, 60, Counting("not run"))).lookup is Lookup.HIT
        assert cache.peek(key) is MISS
    assert await redis_reads(raw) == reads + 3


# -- changes --------------------------------------------------------------------------------------


async def test_an_invalidation_by_another_instance_drops_the_copy(
    make_cache: CacheFactory,
) -> None:
    first, second = await opened(make_cache()), await opened(make_cache())
    key = first.key("agent", "q")
    await first.get_or_run(key, 60, Counting("old"))
    await copied(second, key, "old")
    await first.invalidate("agent")
    await wait_until(lambda: second.peek(key) is MISS, "the copy to be dropped")
    outcome = await second.get_or_run(key, 60, Counting("new"))
    assert (outcome.output, outcome.lookup) == ("new", Lookup.MISS)


async def test_an_instance_drops_its_own_copies_before_redis_hears_of_the_invalidation(
    make_cache: CacheFactory, redis_server: RedisServer
) -> None:
    cache = await opened(make_cache())
    key = cache.key("agent", "q")
    await cache.get_or_run(key, 60, Counting("old"))
    await copied(cache, key, "old")
    async with invalidating(cache, redis_server):
        assert cache.peek(key) is MISS


async def test_no_read_keeps_a_copy_while_its_agent_is_being_invalidated(
    make_cache: CacheFactory, redis_server: RedisServer
) -> None:
    # Until Redis has deleted the agent's keys, a read may find the value about to go; the
    # push of its deletion may come after the invalidation is over.
    cache = await opened(make_cache())
    near = near_of(cache)
    key = cache.key("agent", "q")
    async with invalidating(cache, redis_server):
        session = near.reading(key)
        await near.keep(key, "old", 60_000, session)
        assert cache.peek(key) is MISS
    await wait_until(lambda: near.live, "tracking to be on")
    session = near.reading(key)
    await near.keep(key, "new", 60_000, session)
    assert cache.peek(key) == "new"


async def test_a_read_sent_during_an_invalidation_and_answered_after_it_keeps_no_copy(
    make_cache: CacheFactory, redis_server: RedisServer
) -> None:
    cache = await opened(make_cache())
    near = near_of(cache)
    key = cache.key("agent", "q")
    async with invalidating(cache, redis_server):
        session = near.reading(key)  # a read sent now, behind the invalidation's steps
    await near.keep(key, "old", 60_000, session)  # its reply, after the invalidation
    assert cache.peek(key) is MISS


async def test_a_value_written_by_another_instance_replaces_the_copy(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    cache = await opened(make_cache())
    key = cache.key("agent", "q")
    await raw.set(key, b'{"output":"old"}', ex=60)
    await copied(cache, key, "old")
    await raw.set(key, b'{"output":"new"}', ex=60)
    await wait_until(lambda: cache.peek(key) is MISS, "the copy to be dropped")
    await copied(cache, key, "new")


async def test_a_copy_goes_when_its_entry_expires_in_redis(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    cache = await opened(make_cache())
    key = cache.key("agent", "q")
    await raw.set(key, b'{"output":"short-lived"}', px=300)
    await copied(cache, key, "short-lived")
    await wait_until(lambda: cache.peek(key) is MISS, "the copy to expire")
    assert await raw.exists(key) == 0


async def test_a_copy_is_kept_only_as_long_as_its_entry(redis_server: RedisServer) -> None:
    # Without Redis telling of the expiry (it is never asked): the copy's own timer.
    client = aioredis.Redis.from_url(redis_server.url)
    near = NearCache("near:", client.connection_pool.make_connection, max_size=10)
    session = near.session = 1  # as if tracking were on
    near.reading("near:k")
    await near.keep("near:k", "out", 200, session)
    assert near.lookup("near:k") == "out"
    await wait_until(lambda: near.lookup("near:k") is MISS, "the copy to expire")
    near.reading("near:none")
    await near.keep("near:none", None, -2, session)
    assert near.lookup("near:none") is MISS
    await client.aclose()


async def test_a_read_whose_key_changes_in_flight_keeps_no_copy(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    # The push for the change may come before the read's reply, which holds the old value.
    cache = await opened(make_cache())
    near = near_of(cache)
    key, marker = cache.key("agent", "q"), cache.key("agent", "marker")
    await raw.set(marker, b'{"output":"m"}', ex=60)
    await copied(cache, marker, "m")
    session = near.reading(key)
    await raw.set(key, b'{"output":"new"}', ex=60)
    await raw.delete(marker)  # pushed after the change: once it is heard, so is the change
    await wait_until(lambda: cache.peek(marker) is MISS, "the pushes to be heard")
    await near.keep(key, "old", 60_000, session)
    assert cache.peek(key) is MISS
    # The same read, with no change meanwhile, keeps its copy.
    session = near.reading(key)
    await near.keep(key, "new", 60_000, session)
    assert cache.peek(key) == "new"


async def test_the_copies_of_a_flushed_database_are_dropped(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    cache = await opened(make_cache())
    key = cache.key("agent", "q")
    await raw.set(key, b'{"output":"old"}', ex=60)
    await copied(cache, key, "old")
    await raw.flushdb()
    await wait_until(lambda: cache.peek(key) is MISS, "the copy to be dropped")


# -- Redis away ---------------------------------------------------------------------------------


async def test_a_killed_redis_drops_every_copy_until_it_tracks_them_again(
    make_cache: CacheFactory, redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    cache = await opened(make_cache())
    key = cache.key("agent", "q")
    await raw.set(key, b'{"output":"old"}', ex=60)
    await copied(cache, key, "old")
    redis_server.kill()
    await wait_until(lambda: not near_of(cache).live, "tracking to be lost")
    assert cache.peek(key) is MISS
    redis_server.start()  # empty: the copy would be stale
    await wait_until(lambda: near_of(cache).live, "tracking to be on again")
    assert cache.peek(key) is MISS
    async with aioredis.Redis.from_url(redis_server.url) as client:  # `raw`'s connection is gone
        await client.set(key, b'{"output":"new"}', ex=60)
    await copied(cache, key, "new")


async def test_a_silent_redis_drops_every_copy_within_two_heartbeats(
    make_cache: CacheFactory, redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    # Another instance's invalidation could be waiting, unsent, in the stopped server.
    cache = await opened(make_cache())
    key = cache.key("agent", "q")
    await raw.set(key, b'{"output":"old"}', ex=60)
    await copied(cache, key, "old")
    redis_server.pause()
    try:
        await wait_until(lambda: not near_of(cache).live, "tracking to be lost")
        assert cache.peek(key) is MISS
    finally:
        redis_server.resume()
    await wait_until(lambda: near_of(cache).live, "tracking to be on again")


async def test_a_health_check_in_the_url_does_not_keep_copies_of_a_silent_redis(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    # redis-py's own health check would wait for its PING with no bound, and eat pushes.
    backend = RedisResultBackend.from_url(
        f"{redis_server.url}?health_check_interval=1",
        timeout=1.0,
        near_prefix=f"{NAMESPACE}:",
        near_entries=50,
    )
    cache = await opened(ResultCache(backend, namespace=NAMESPACE))
    key = cache.key("agent", "q")
    await raw.set(key, b'{"output":"old"}', ex=60)
    await copied(cache, key, "old")
    redis_server.pause()
    try:
        await wait_until(lambda: not near_of(cache).live, "tracking to be lost")
        assert cache.peek(key) is MISS
    finally:
        redis_server.resume()
    await cache.close()


async def test_a_busy_redis_loses_tracking_for_a_while_only(
    make_cache: CacheFactory, redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    # A long script makes Redis answer BUSY to everyone: not a refusal to track.
    cache = await opened(make_cache())
    near = near_of(cache)
    await raw.config_set("busy-reply-threshold", 100)
    busy = "local s = redis.call('TIME')[1] while redis.call('TIME')[1] - s < 3 do end"
    async with aioredis.Redis.from_url(redis_server.url) as blocker:
        script = asyncio.ensure_future(blocker.eval(busy, 0))
        await wait_until(lambda: not near.live, "tracking to be lost")
        await script
    await wait_until(lambda: near.live, "tracking to be on again")


async def test_keys_are_read_back_in_the_encoding_of_the_url(
    redis_server: RedisServer,
) -> None:
    url = f"{redis_server.url}?encoding=latin-1"
    backend = RedisResultBackend.from_url(
        url, timeout=1.0, near_prefix=f"{NAMESPACE}:", near_entries=50
    )
    cache = await opened(ResultCache(backend, namespace=NAMESPACE))
    key = cache.key("café", "q")
    async with aioredis.Redis.from_url(url) as client:
        await client.set(key, b'{"output":"old"}', ex=60)
        await copied(cache, key, "old")
        await client.set(key, b'{"output":"new"}', ex=60)
    await wait_until(lambda: cache.peek(key) is MISS, "the copy to be dropped")
    await cache.close()


async def test_a_redis_that_refuses_tracking_keeps_no_copies_and_is_still_used(
    redis_server: RedisServer, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await raw.acl_setuser(
        "untracked", enabled=True, passwords=["+pw"], keys=["~*"], commands=["+@all", "-client"]
    )
    await refused(f"redis://untracked:pw@127.0.0.1:{redis_server.port}/0", caplog)


async def test_a_redis_without_resp3_keeps_no_copies_and_is_still_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis before 6.0 knows no HELLO: a server with HELLO renamed away answers the same. The
    # cache's own connections speak RESP2 there, as the URL says (redis-py's default is 3).
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path, options=["--rename-command", "HELLO", ""])
    server.start()
    try:
        await refused(f"{server.url}?protocol=2", caplog)
    finally:
        server.kill()


async def refused(url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A cache on `url` logs that Redis refuses tracking, stops trying, and still serves hits
    from Redis."""
    backend = RedisResultBackend.from_url(
        url, timeout=1.0, near_prefix=f"{NAMESPACE}:", near_entries=50
    )
    cache = ResultCache(backend, namespace=NAMESPACE)
    near = near_of(cache)
    with caplog.at_level(logging.WARNING, logger="sel_otel._near_cache"):
        await cache.open()
        await wait_until(lambda: near._task is not None and near._task.done(), "tracking to end")
    assert "refuses tracking" in caplog.text
    key = cache.key("agent", "q")
    await cache.get_or_run(key, 60, Counting("out"))
    outcome = await cache.get_or_run(key, 60, Counting("not run"))
    assert (outcome.output, outcome.lookup, outcome.cache_error) == ("out", Lookup.HIT, None)
    assert cache.peek(key) is MISS
    await cache.close()


# -- planted values -----------------------------------------------------------------------------


@pytest.mark.parametrize("plant", ["a huge value", "a list", "a lone surrogate"])
async def test_a_planted_value_read_for_a_copy_is_a_miss_and_never_sent(
    make_cache: CacheFactory, raw: aioredis.Redis, plant: str
) -> None:
    cache = await opened(make_cache())
    key = cache.key("agent", "q")
    if plant == "a list":
        await raw.rpush(key, b"x" * 1000)
    elif plant == "a huge value":
        await raw.set(key, b"\xff" * 50_000_000)
    else:
        await raw.set(key, b'{"output":"\\ud800"}')
    before = int((await raw.info("stats"))["total_net_output_bytes"])
    outcome = await cache.get_or_run(key, 60, Counting("fresh"))
    assert (outcome.output, outcome.lookup, outcome.cache_error) == ("fresh", Lookup.MISS, None)
    assert int((await raw.info("stats"))["total_net_output_bytes"]) - before < 100_000
    assert cache.peek(key) is MISS
    await copied(cache, key, "fresh")


def left_on_a_closed_loop(near: NearCache) -> None:
    """Turn `near`'s tracking on in a loop closed at once, its task pending and forgotten."""
    loop = asyncio.new_event_loop()
    loop.run_until_complete(started(near))
    loop.close()


async def started(near: NearCache) -> None:
    near.start()
    await asyncio.wait_for(near.tracking.wait(), 30)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # loop 1's
def test_tracking_started_again_on_a_new_loop_hears_the_changes(
    redis_server: RedisServer,
) -> None:
    # The task left pending on a closed loop tracks nothing: a new one must start.
    client = aioredis.Redis.from_url(redis_server.url)
    near = NearCache("near:", client.connection_pool.make_connection, max_size=10)
    left_on_a_closed_loop(near)

    async def on_a_new_loop() -> None:
        async with aioredis.Redis.from_url(redis_server.url) as writer:
            await started(near)
            near.reading("near:k")
            await near.keep("near:k", "old", 60_000, near.session)
            assert near.lookup("near:k") == "old"
            await writer.set("near:k", b"new")
            await wait_until(lambda: near.lookup("near:k") is MISS, "the copy to be dropped")
        gc.collect()  # the first loop's task is finalized by now
        assert near.live
        await near.close()

    asyncio.run(on_a_new_loop())
