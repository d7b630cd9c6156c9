"""The shared cache on Redis: safe values, namespaced invalidation, one execution across
processes, and calls that never fail when Redis dies or stalls.

Every test runs against a real `redis-server` on a loopback port (tests/redis_server.py); the
ones marked by the `redis_url` fixture run a second time against testcontainers' Redis where
a Docker engine answers. Runtime processes are real child processes
(`tests.redis_server.RuntimeProcess`); agents count their executions in a file.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection

from sel_otel import AgentRuntime, ConfigError, ResultCache, SelApp, Settings, Telemetry
from sel_otel._app import cache_from_settings
from sel_otel._cache import Lookup
from sel_otel._redis_cache import OutputSerializer, RedisResultBackend
from tests.conftest import (
    AgentWriter,
    Counting,
    Listing,
    RuntimeFactory,
    TelemetryFixture,
    free_port,
)
from tests.waiting import block_until, wait_until, within

if TYPE_CHECKING:
    from tests.redis_server import RedisServer, RuntimeProcess

pytest_plugins = ["tests.redis_server"]  # redis_server, redis_container_url

TIMEOUT = 0.25  # SEL_CACHE_TIMEOUT's default, for the tests of a stalled Redis
#: The operation timeout of the other tests: on a loaded machine a process can wait longer than
#: TIMEOUT for its turn, and its call would then run without the cache.
AMPLE_TIMEOUT = 10.0
SLOW_HIT = 0.005  # ResultCache's: a hit that takes longer gets a span

COUNTER_AGENT = """
    import os, time
    DESCRIPTION = "appends its input to a file, sleeps the seconds after the first word"
    CACHE_TTL = 60
    INVALIDATED_BY = {"reset"}
    def run(query):
        with open(os.environ["SEL_TEST_COUNT_FILE"], "a") as f:
            f.write(query + "\\n")
        word, _, delay = query.partition(" ")
        time.sleep(float(os.environ.get("SEL_TEST_DELAY") or delay or 0))
        return f"result of {word}"
"""


@pytest.fixture(params=["redis-server", "testcontainers"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """A Redis URL: the local redis-server, then testcontainers' Redis (skips without Docker)."""
    if request.param == "redis-server":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    return str(request.getfixturevalue("redis_container_url"))


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def count_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "executions.txt"
    path.touch()
    monkeypatch.setenv("SEL_TEST_COUNT_FILE", str(path))
    return path


def executions(count_file: Path, query: str | None = None) -> int:
    lines = count_file.read_text().splitlines()
    return len([line for line in lines if query is None or line == query])


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


CacheFactory = Callable[..., ResultCache]


@pytest.fixture
async def make_cache(redis_url: str, namespace: str) -> AsyncIterator[CacheFactory]:
    """Result caches on the test's Redis: each one plays a separate instance."""
    caches: list[ResultCache] = []

    def make(**options: Any) -> ResultCache:
        url = options.pop("url", redis_url)
        options.setdefault("namespace", namespace)
        options.setdefault("retry_after", 0.2)
        cache = ResultCache(RedisResultBackend.from_url(url, timeout=AMPLE_TIMEOUT), **options)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        await cache.close()


# -- configuration ---------------------------------------------------------------------------


async def test_url_password_db_and_timeouts_reach_the_connection_pool() -> None:
    backend = RedisResultBackend.from_url("redis://app:s3cret@10.1.2.3:6380/3", timeout=0.2)
    try:
        options = backend.client.connection_pool.connection_kwargs
        assert (options["host"], options["port"], options["db"]) == ("10.1.2.3", 6380, 3)
        assert (options["username"], options["password"]) == ("app", "s3cret")
        assert options["socket_connect_timeout"] == 0.2
        assert options["socket_timeout"] is None  # each operation is bounded as a whole
        assert backend.timeout == 0.2
        assert "s3cret" not in repr(backend)
    finally:
        await backend.close()


async def test_rediss_selects_tls_connections() -> None:
    backend = RedisResultBackend.from_url("rediss://:pw@cache.example:6390", timeout=0.2)
    try:
        pool = backend.client.connection_pool
        assert pool.connection_class is SSLConnection
        assert pool.connection_kwargs["db"] == 0
    finally:
        await backend.close()


def test_other_schemes_and_unsafe_namespaces_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unsupported scheme 'memcached'"):
        cache_from_settings(Settings(cache_url="memcached://localhost"))
    with pytest.raises(ConfigError, match="SEL_CACHE_NAMESPACE"):
        cache_from_settings(Settings(cache_url="redis://localhost", cache_namespace="a:b*"))
    with pytest.raises(ConfigError) as error:
        RedisResultBackend.from_url("http://u:hunter2@h/0", timeout=0.1)
    assert "hunter2" not in str(error.value)


class _Executes:
    """Unpickling this creates a marker file: proof that a payload was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_the_serializer_round_trips_strings_and_rejects_everything_else(tmp_path: Path) -> None:
    serializer = OutputSerializer()
    for output in ("", "plain", 'quotes " and \\ and \n', "ünïcode ✓ 🎉"):
        assert serializer.loads(serializer.dumps(output)) == output
    marker = tmp_path / "executed"
    for planted in (
        b"\xff\xfe\x00garbage",
        b"42",
        b'"bare string"',
        b'["output"]',
        b'{"output": 1}',
        b'{"output": "x", "extra": 1}',
        b"[" * 100_000,
        pickle.dumps(_Executes(marker)),
    ):
        assert serializer.loads(planted) is None, planted[:20]
    assert not marker.exists()
    with pytest.raises(TypeError):
        serializer.dumps(42)  # type: ignore[arg-type]


# -- one process -----------------------------------------------------------------------------


async def test_results_are_json_with_the_ttl_as_redis_expiry(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    cache = make_cache()
    key = cache.key("agent", "q")
    compute = Counting("ünï")
    assert (await cache.get_or_run(key, 30, compute)).lookup is Lookup.MISS
    assert await raw.get(key) == '{"output":"ünï"}'.encode()
    assert 29_000 < await raw.pttl(key) <= 30_000
    assert await raw.exists(key + ":lock") == 0  # released
    assert (await cache.get_or_run(key, 30, compute)).lookup is Lookup.HIT
    assert compute.calls == 1


async def test_entries_expire_in_redis_after_their_ttl(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    ttl = 0.2
    cache = make_cache()

    async def store_and_read_back() -> tuple[str, Counting, list[Lookup], int]:
        key, compute = cache.key("agent", uuid.uuid4().hex), Counting()
        lookups = [(await cache.get_or_run(key, ttl, compute)).lookup for _ in range(2)]
        return key, compute, lookups, await raw.pttl(key)

    key, compute, lookups, pttl = await within(ttl, store_and_read_back, "a read within the TTL")
    assert lookups == [Lookup.MISS, Lookup.HIT]
    assert 0 < pttl <= ttl * 1000  # Redis expires it at the TTL

    async def expired() -> bool:
        return not await raw.exists(key)

    await wait_until(expired, "Redis to expire the entry")
    assert (await cache.get_or_run(key, ttl, compute)).lookup is Lookup.MISS
    assert compute.calls == 2


async def test_instances_share_hits_within_a_namespace_only(make_cache: CacheFactory) -> None:
    first, second, other_deployment = make_cache(), make_cache(), make_cache(namespace="other")
    compute = Counting()
    await first.get_or_run(first.key("a", "q"), 60, compute)
    assert (await second.get_or_run(second.key("a", "q"), 60, compute)).lookup is Lookup.HIT
    outcome = await other_deployment.get_or_run(other_deployment.key("a", "q"), 60, compute)
    assert outcome.lookup is Lookup.MISS
    assert compute.calls == 2


async def _command_calls(raw: aioredis.Redis) -> dict[str, int]:
    stats = await raw.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_invalidation_scans_and_unlinks_only_that_agents_keys(
    make_cache: CacheFactory, raw: aioredis.Redis, namespace: str
) -> None:
    cache, serializer = make_cache(), OutputSerializer()
    async with raw.pipeline(transaction=False) as pipe:
        for i in range(1_234):  # more than two SCAN/UNLINK batches
            pipe.set(cache.key("x", f"q{i}"), serializer.dumps("v"), ex=60)
        pipe.set(cache.key("xy", "q"), serializer.dumps("v"))  # an agent whose name extends x
        pipe.set(cache.key("y", "q"), serializer.dumps("v"))
        pipe.set(f"other:x:{'0' * 32}", serializer.dumps("v"))  # another deployment
        pipe.set("unrelated", "keep")
        await pipe.execute()
    await raw.config_resetstat()

    await cache.invalidate("x")

    # Only the count of x's invalidations is left: results stored before it never come back.
    assert [k async for k in raw.scan_iter(match=f"{namespace}:x:*")] == [
        f"{namespace}:x:~generation".encode()
    ]
    generation = await raw.get(f"{namespace}:x:~generation")
    assert generation is not None and int(generation) > 0  # counted from a random start
    assert await raw.exists(cache.key("xy", "q"), cache.key("y", "q"), "unrelated") == 3
    assert await raw.exists(f"other:x:{'0' * 32}") == 1
    calls = await _command_calls(raw)
    assert calls.get("scan", 0) >= 3 and calls.get("unlink", 0) >= 3
    assert "keys" not in calls and "flushdb" not in calls and "flushall" not in calls


async def test_an_unprefixed_clear_is_refused_rather_than_flushing_the_database(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    cache = make_cache()
    await raw.set("someone-elses", "data")
    assert isinstance(cache.backend, RedisResultBackend)
    with pytest.raises(ValueError, match="refusing"):
        await cache.backend.clear()
    assert await raw.get("someone-elses") == b"data"


@pytest.mark.parametrize(
    "planted",
    [b"\xff\x00garbage", b"[1, 2]", b'{"output": 7}', b"PICKLE"],
    ids=["garbage-bytes", "json-list", "json-non-string", "pickle-payload"],
)
async def test_a_planted_invalid_value_is_a_miss_and_never_executed(
    make_cache: CacheFactory, raw: aioredis.Redis, tmp_path: Path, planted: bytes
) -> None:
    marker = tmp_path / "executed"
    if planted == b"PICKLE":
        planted = pickle.dumps(_Executes(marker))
    cache = make_cache()
    key = cache.key("agent", "q")
    await raw.set(key, planted)
    compute = Counting("fresh")
    outcome = await cache.get_or_run(key, 60, compute)
    assert (outcome.output, outcome.lookup, outcome.cache_error) == ("fresh", Lookup.MISS, None)
    assert not marker.exists()
    assert await raw.get(key) == b'{"output":"fresh"}'  # replaced by a valid value
    assert (await cache.get_or_run(key, 60, compute)).lookup is Lookup.HIT


async def test_concurrent_misses_in_two_instances_execute_once(make_cache: CacheFactory) -> None:
    first, second = make_cache(), make_cache()
    compute = Counting(delay=0.2)
    key = first.key("agent", "same")
    outcomes = await asyncio.gather(
        *(cache.get_or_run(key, 60, compute) for cache in (first, second) for _ in range(50))
    )
    assert compute.calls == 1
    assert {o.output for o in outcomes} == {"out"}
    lookups = [o.lookup for o in outcomes]
    assert lookups.count(Lookup.MISS) == 1
    assert set(lookups) <= {Lookup.MISS, Lookup.COALESCED, Lookup.HIT}


async def test_a_result_computed_across_another_instances_invalidation_is_not_stored(
    make_cache: CacheFactory,
) -> None:
    first, second = make_cache(), make_cache()  # two bot instances on one Redis
    key = first.key("files", "ls")
    listing = Listing("a", "b", delay=0.1)
    before = asyncio.create_task(first.get_or_run(key, 60, listing))
    await listing.started.wait()
    listing.files.remove("a")  # `rm a` ran on the second instance,
    await second.invalidate("files")  # which invalidated the agent's results everywhere
    assert (await before).output == "files: ['a', 'b']"
    after = await second.get_or_run(key, 60, listing)
    assert (after.output, after.lookup) == ("files: ['b']", Lookup.MISS)
    assert (await first.get_or_run(key, 60, listing)).lookup is Lookup.HIT  # stored this time


def _files_listing(
    make_cache: CacheFactory, namespace: str
) -> tuple[ResultCache, RedisResultBackend, str, str]:
    """A cache, its Redis backend, the key of `files ls` and the files agent's generation key."""
    cache = make_cache()
    assert isinstance(cache.backend, RedisResultBackend)
    return cache, cache.backend, cache.key("files", "ls"), f"{namespace}:files:~generation"


async def test_a_generation_lost_to_eviction_never_lets_a_stale_result_in(
    make_cache: CacheFactory, raw: aioredis.Redis, namespace: str
) -> None:
    cache, backend, key, generation_key = _files_listing(make_cache, namespace)
    claimed = await backend.claim(key, key + ":lock", generation_key, "token", 5.0)
    await cache.invalidate("files")  # `rm a` while the listing above was computed
    await raw.delete(generation_key)  # evicted by allkeys-lru, or Redis restarted empty
    assert not await backend.store(key, "stale", 60, generation_key, claimed.generation)
    assert await raw.get(key) is None
    fresh = await backend.claim(key, key + ":lock", generation_key, "other", 5.0)
    assert await backend.store(key, "fresh", 60, generation_key, fresh.generation)


async def test_an_invalidation_that_failed_is_done_again_once_redis_answers(
    redis_server: RedisServer, namespace: str
) -> None:
    backend = RedisResultBackend.from_url(redis_server.url, timeout=0.2)
    cache = ResultCache(backend, namespace=namespace, retry_after=0.2)
    compute = Counting()
    key = cache.key("files", "ls /srv")
    await cache.get_or_run(key, 3600, compute)
    redis_server.pause()  # a failover, a fork: Redis stalls past the operation timeout
    try:
        await cache.invalidate("files")  # `rm /srv/a`: the deletion times out
    finally:
        redis_server.resume()
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await wait_until(lambda: _gone(raw, key), "the invalidation to be done again")
    finally:
        await raw.aclose()
    another_instance = RedisResultBackend.from_url(redis_server.url, timeout=0.2)
    other = ResultCache(another_instance, namespace=namespace)
    assert (await other.get_or_run(key, 3600, compute)).lookup is Lookup.MISS  # no stale hit
    for each in (cache, other):
        await each.close()


async def test_a_call_cancelled_twice_leaves_no_lock_behind(
    redis_server: RedisServer, namespace: str
) -> None:
    backend = RedisResultBackend.from_url(redis_server.url, timeout=0.25)
    cache = ResultCache(backend, namespace=namespace, lock_lease=30.0)
    await cache.open()
    key = cache.key("agent", "q")
    running = asyncio.Event()

    async def compute() -> str:
        running.set()
        await asyncio.sleep(3600)
        return "never"

    call = asyncio.create_task(cache.get_or_run(key, 60, compute, compute_timeout=60))
    await running.wait()
    call.cancel()
    await asyncio.sleep(0)  # the call is releasing its lock...
    call.cancel()  # ...when a caller's own timeout cancels it again
    with pytest.raises(asyncio.CancelledError):
        await call
    raw = aioredis.Redis.from_url(redis_server.url)
    try:  # released in the background: the key is not blocked for the 30 s lease
        await wait_until(lambda: _gone(raw, key + ":lock"), "the lock to be released")
    finally:
        await raw.aclose()
    await cache.close()


async def _gone(raw: aioredis.Redis, key: str) -> bool:
    return not await raw.exists(key)


async def test_an_invalidation_after_a_lost_generation_never_counts_back_to_a_held_one(
    make_cache: CacheFactory, raw: aioredis.Redis, namespace: str
) -> None:
    cache, backend, key, generation_key = _files_listing(make_cache, namespace)
    await cache.invalidate("files")  # the first count of this agent
    claimed = await backend.claim(key, key + ":lock", generation_key, "token", 5.0)
    await raw.delete(generation_key)  # lost, then counted anew by the next invalidation:
    await cache.invalidate("files")  # it must not come back to the value just claimed
    assert not await backend.store(key, "stale", 60, generation_key, claimed.generation)
    assert await raw.get(key) is None


async def test_concurrent_identical_calls_in_one_process_send_one_read(
    make_cache: CacheFactory,
) -> None:
    cache = make_cache()
    reads = 0
    backend = cache.backend
    assert isinstance(backend, RedisResultBackend)
    backend_get = backend.get

    async def counted_get(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await backend_get(*args, **kwargs)

    backend.get = counted_get  # type: ignore[method-assign]
    key = cache.key("agent", "same")
    compute = Counting(delay=0.05)
    misses = await asyncio.gather(*(cache.get_or_run(key, 60, compute) for _ in range(20)))
    assert (reads, compute.calls) == (1, 1)
    assert [o.lookup for o in misses].count(Lookup.MISS) == 1
    hits = await asyncio.gather(*(cache.get_or_run(key, 60, compute) for _ in range(20)))
    assert reads == 2  # one more read for all twenty hits
    assert {o.lookup for o in hits} == {Lookup.HIT}


async def test_the_lease_is_renewed_while_a_long_agent_runs(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    lease = 1.0  # renewed every third of it: a renewal may come 0.6 s late, whatever the load
    first, second = make_cache(lock_lease=lease), make_cache(lock_lease=lease)
    finish = asyncio.Event()
    calls = 0

    async def long_agent() -> str:
        nonlocal calls
        calls += 1
        await finish.wait()
        return "out"

    key = first.key("agent", "slow")
    leader = asyncio.create_task(first.get_or_run(key, 60, long_agent))
    await wait_until(lambda: calls == 1, "the leader to take the lock and run the agent")
    follower = asyncio.create_task(second.get_or_run(key, 60, long_agent))
    lease_left: list[int] = []

    async def renewed_past_its_lease() -> bool:
        """Four renewals, each seen as a rise of the lock's expiry: the lock outlived its
        first lease (a third of a lease apart)."""
        lease_left.append(await raw.pttl(key + ":lock"))
        return sum(b > a for a, b in itertools.pairwise(lease_left)) >= 4

    await wait_until(renewed_past_its_lease, "the leader's lock to be renewed four times")
    finish.set()
    assert min(lease_left) > 0  # held all along
    assert (await leader).lookup is Lookup.MISS
    assert ((await follower).lookup, calls) == (Lookup.COALESCED, 1)


async def test_a_dead_lock_holder_blocks_the_key_no_longer_than_its_lease(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    cache = make_cache(lock_lease=5.0)
    key = cache.key("agent", "q")
    await raw.set(key + ":lock", "token-of-a-dead-process", px=600)
    compute = Counting()
    start = time.monotonic()
    outcome = await cache.get_or_run(key, 60, compute)
    waited = time.monotonic() - start
    assert (outcome.lookup, compute.calls) == (Lookup.MISS, 1)
    assert 0.5 < waited < 3.0  # the dead holder's 0.6 s, not this cache's 5 s lease


async def test_a_live_holder_is_waited_for_at_most_lock_wait(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    cache = make_cache(lock_wait=0.3)
    key = cache.key("agent", "q")
    await raw.set(key + ":lock", "a-holder-that-never-ends", px=60_000)
    start = time.monotonic()
    outcome = await cache.get_or_run(key, 60, Counting())
    assert outcome.lookup is Lookup.MISS
    assert time.monotonic() - start >= 0.3  # lock_wait,
    assert await raw.get(key + ":lock") == b"a-holder-that-never-ends"  # not the holder's end


# -- through the runtime: spans, metrics, faults ---------------------------------------------


@pytest.fixture
def redis_runtime(make_runtime: RuntimeFactory, namespace: str) -> Callable[..., AgentRuntime]:
    """Runtimes on a Redis URL, built like `make_runtime`'s with the test's telemetry."""

    def make(url: str, **settings: Any) -> AgentRuntime:
        settings.setdefault("cache_retry_after", 0.2)
        settings.setdefault("cache_timeout", AMPLE_TIMEOUT)
        return make_runtime(cache_url=url, cache_namespace=namespace, **settings)

    return make


async def test_cache_operations_are_child_spans_of_the_agent_span(
    redis_server: RedisServer,
    redis_runtime: Callable[..., AgentRuntime],
    write_agent: AgentWriter,
    telemetry: TelemetryFixture,
    count_file: Path,
) -> None:
    write_agent("counter", COUNTER_AGENT)
    runtime = redis_runtime(redis_server.url)
    assert (await runtime.run("counter", "a")).cached is False
    # A hit that took less than SLOW_HIT in all: its read was faster still.
    fast_hit = await within(SLOW_HIT, lambda: runtime.run("counter", "a"), "a fast hit")
    assert fast_hit.cached is True

    first, *_, second = telemetry.finished("invoke_agent counter")
    children = {
        span.context.trace_id: [s for s in telemetry.finished() if s.parent is not None]
        for span in (first, second)
    }
    miss_children = [s for s in children[first.context.trace_id] if s.parent == first.context]
    assert [s.name for s in miss_children] == ["cache get", "cache lock", "cache set"]
    get, lock, put = miss_children
    for span in miss_children:
        assert span.kind.name == "INTERNAL"
        assert span.attributes["db.system.name"] == "redis"
        assert span.attributes["server.port"] == redis_server.port
    assert get.attributes["db.operation.name"] == "GET" and get.attributes["sel.cache.hit"] is False
    assert lock.attributes["sel.cache.lock.acquired"] is True
    assert put.attributes["db.operation.name"] == "EVALSHA"
    assert put.attributes["sel.cache.stored"] is True
    hit_children = [s for s in children[second.context.trace_id] if s.parent == second.context]
    assert hit_children == []  # a fast hit costs no span: the agent span times it
    assert executions(count_file) == 1


def _request_waits_at(port: int) -> bool:
    """True when a connection to `port` on 127.0.0.1 holds bytes that its server has not read:
    a request sent to a paused Redis."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _, state, queues = line.split()[1:5]
        unread = int(queues.partition(":")[2], 16)  # tx_queue:rx_queue, in hex
        if state == "01" and int(local.rpartition(":")[2], 16) == port and unread:  # established
            return True
    return False


async def test_a_slow_hit_is_a_child_span_with_its_real_duration(
    redis_server: RedisServer,
    redis_runtime: Callable[..., AgentRuntime],
    write_agent: AgentWriter,
    telemetry: TelemetryFixture,
    count_file: Path,
) -> None:
    write_agent("counter", COUNTER_AGENT)
    runtime = redis_runtime(redis_server.url)
    await runtime.run("counter", "a")
    redis_server.pause()
    try:
        call = asyncio.create_task(runtime.run("counter", "a"))
        await wait_until(lambda: _request_waits_at(redis_server.port), "the hit's read to wait")
        stalled_since = time.monotonic()
        await asyncio.sleep(0.05)  # how long Redis stalls the read: at least this
        stall = time.monotonic() - stalled_since
    finally:
        redis_server.resume()
    assert (await call).cached is True
    agent_span = telemetry.finished("invoke_agent counter")[-1]
    (get,) = [s for s in telemetry.finished("cache get") if s.parent == agent_span.context]
    assert get.attributes["sel.cache.hit"] is True
    assert (get.end_time - get.start_time) / 1e9 >= stall  # the read's real time, stall included
    assert agent_span.start_time <= get.start_time <= get.end_time <= agent_span.end_time


async def test_a_dead_redis_never_fails_a_call_and_hits_resume_after_restart(
    redis_server: RedisServer,
    redis_runtime: Callable[..., AgentRuntime],
    write_agent: AgentWriter,
    telemetry: TelemetryFixture,
    count_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_agent("counter", COUNTER_AGENT)
    retry_after = 1.0  # far longer than a call: the breaker is seen skipping Redis
    runtime = redis_runtime(redis_server.url, cache_retry_after=retry_after)
    assert (await runtime.run("counter", "a")).ok
    redis_server.kill()

    results = [await runtime.run("counter", "a") for _ in range(20)]
    assert all(r.ok and r.output == "result of a" and not r.cached for r in results)
    spans = telemetry.finished("invoke_agent counter")[1:]
    assert spans[0].attributes["sel.cache.error"] in {"ConnectionError", "timeout"}
    assert {s.attributes["sel.cache.error"] for s in spans[1:]} >= {"circuit_open"}
    errors = {p.attributes["error.type"]: p.value for p in telemetry.points("sel.cache.errors")}
    assert sum(errors.values()) >= 20 and errors.get("circuit_open", 0) >= 10
    assert len([r for r in caplog.records if "serving without cache" in r.message]) == 1

    redis_server.start()
    await asyncio.sleep(retry_after)  # a lower bound: then the next call probes Redis again
    assert (await runtime.run("counter", "a")).cached is False  # the restart lost the data
    assert (await runtime.run("counter", "a")).cached is True
    assert len([r for r in caplog.records if "answers again" in r.message]) == 1


async def test_a_stalled_redis_costs_one_timeout_then_calls_skip_it(
    redis_server: RedisServer,
    redis_runtime: Callable[..., AgentRuntime],
    write_agent: AgentWriter,
    telemetry: TelemetryFixture,
    count_file: Path,
) -> None:
    write_agent("counter", COUNTER_AGENT)
    retry_after = 2.0  # far longer than the calls below: the breaker stays open for them all
    runtime = redis_runtime(redis_server.url, cache_retry_after=retry_after, cache_timeout=TIMEOUT)
    assert (await runtime.run("counter", "a")).ok
    redis_server.pause()
    try:
        results = [await runtime.run("counter", "a") for _ in range(10)]
    finally:
        redis_server.resume()
    assert all(r.ok and r.output == "result of a" for r in results)
    assert results[0].duration > TIMEOUT * 0.8  # the first one meets the timeout,
    calls = telemetry.finished("invoke_agent counter")[1:]
    operations = [[s for s in telemetry.finished() if s.parent == c.context] for c in calls]
    (timed_out,) = operations[0]  # one operation, one timeout: nothing more is sent
    assert (timed_out.name, timed_out.attributes["error.type"]) == ("cache get", "timeout")
    # Breaker open: the others skip Redis, no operation and so no wait.
    assert [c.attributes["sel.cache.error"] for c in calls[1:]] == ["circuit_open"] * 9
    assert operations[1:] == [[]] * 9
    await asyncio.sleep(retry_after)  # a lower bound: then the next call probes Redis again
    for _ in range(3):
        last = await runtime.run("counter", "a")
    assert last.cached is True


async def test_warm_up_fills_redis_for_every_instance(
    redis_server: RedisServer,
    redis_runtime: Callable[..., AgentRuntime],
    agents_dir: Path,
    write_agent: AgentWriter,
    namespace: str,
    count_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_agent("counter", COUNTER_AGENT)
    settings = Settings(
        agents_dir=agents_dir,
        cache_url=redis_server.url,
        cache_namespace=namespace,
        cache_timeout=AMPLE_TIMEOUT,
        cache_warmup=(("counter", "warm"),),
    )
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    telemetry = Telemetry.from_env()
    try:
        async with SelApp(settings, telemetry):
            pass
    finally:
        telemetry.shutdown()
    other_instance = redis_runtime(redis_server.url)
    assert (await other_instance.run("counter", "warm")).cached is True
    assert executions(count_file) == 1


# -- separate processes ----------------------------------------------------------------------


@pytest.fixture
def spawn(
    agents_dir: Path, write_agent: AgentWriter, namespace: str, count_file: Path
) -> Iterator[Callable[..., RuntimeProcess]]:
    """Start runtime processes on a Redis URL; all share the namespace and the count file."""
    from tests.redis_server import RuntimeProcess

    write_agent("counter", COUNTER_AGENT)
    processes: list[RuntimeProcess] = []

    def start(url: str, env: dict[str, str] | None = None, **config: Any) -> RuntimeProcess:
        config = {
            "url": url,
            "namespace": namespace,
            "agents_dir": str(agents_dir),
            "timeout": AMPLE_TIMEOUT,  # no test here is about a slow Redis
            **config,
        }
        env = {"SEL_TEST_COUNT_FILE": str(count_file), **(env or {})}
        process = RuntimeProcess(config, env)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.close()


def test_two_processes_share_hits(
    redis_url: str, spawn: Callable[..., RuntimeProcess], count_file: Path
) -> None:
    first, second = spawn(redis_url), spawn(redis_url)
    (miss,) = first.call({"op": "run", "agent": "counter", "query": "q"})
    (hit,) = second.call({"op": "run", "agent": "counter", "query": "q"})
    assert (miss["cached"], hit["cached"]) == (False, True)
    assert hit["output"] == miss["output"] == "result of q"
    assert executions(count_file) == 1


def test_concurrent_misses_in_three_processes_execute_once(
    redis_url: str, spawn: Callable[..., RuntimeProcess], count_file: Path
) -> None:
    processes = [spawn(redis_url) for _ in range(3)]
    for process in processes:
        process.send({"op": "run", "agent": "counter", "query": "same 0.5", "n": 40})
    results = [r for process in processes for r in process.results()]
    assert len(results) == 120
    assert {r["output"] for r in results} == {"result of same"}
    assert {r["error"] for r in results} == {None}
    assert executions(count_file) == 1
    assert sum(not r["cached"] and not r["coalesced"] for r in results) == 1


def test_invalidation_by_one_process_is_seen_by_the_other(
    redis_server: RedisServer, spawn: Callable[..., RuntimeProcess], count_file: Path
) -> None:
    first, second = spawn(redis_server.url), spawn(redis_server.url)
    first.call({"op": "run", "agent": "counter", "query": "q"})
    assert second.call({"op": "run", "agent": "counter", "query": "q"})[0]["cached"] is True
    first.call({"op": "run", "agent": "counter", "query": "reset"})
    (after,) = second.call({"op": "run", "agent": "counter", "query": "q"})
    assert after["cached"] is False
    assert executions(count_file, "q") == 2


def _hitting(server: RedisServer, namespace: str, queries: int) -> None:
    """Wait until every query's result is stored, then until calls go on finding them: reads
    that find a key, once no result is missing, are hits (not a generation or a lock)."""

    def stats() -> tuple[int, int]:
        with redis.Redis.from_url(server.url) as client:
            keys = client.keys(f"{namespace}:counter:*")
            results = [k for k in keys if len(k.rpartition(b":")[2]) == 32]  # no lock, no count
            return len(results), int(client.info("stats")["keyspace_hits"])

    block_until(lambda: stats()[0] == queries, "every query's result to be stored")
    hits = stats()[1]
    block_until(lambda: stats()[1] >= hits + 20, "calls to find the stored results")


def test_redis_killed_mid_load_and_restarted_every_call_succeeds_and_hits_resume(
    redis_server: RedisServer,
    spawn: Callable[..., RuntimeProcess],
    namespace: str,
    count_file: Path,
) -> None:
    # Every call reads Redis (no near copies), so that its hits show in Redis's stats.
    processes = [spawn(redis_server.url, retry_after=0.2, near=0) for _ in range(2)]
    queries = [f"q{i} 0.005" for i in range(5)]
    for process in processes:
        # Longer than the steps below, which wait for what each needs, not for a time.
        process.send({"op": "load", "agent": "counter", "queries": queries, "seconds": 4.0})
    _hitting(redis_server, namespace, len(queries))
    redis_server.kill()
    executed = executions(count_file)
    block_until(lambda: executions(count_file) >= executed + 20, "calls while Redis is down")
    redis_server.start()
    _hitting(redis_server, namespace, len(queries))  # the restart lost them: stored again
    runs = [process.results(timeout=30) for process in processes]
    assert all(r["error"] is None and r["output"] for results in runs for r in results)
    hits = [[bool(r["cached"]) for r in results] for results in runs]
    assert any(False in cached[cached.index(True) :] for cached in hits)  # a miss after hits
    for cached in hits:
        assert cached[-len(queries) :] == [True] * len(queries)  # every query hits again


def test_a_lock_holder_process_killed_mid_run_frees_the_key_after_its_lease(
    redis_server: RedisServer, spawn: Callable[..., RuntimeProcess], count_file: Path
) -> None:
    holder = spawn(redis_server.url, lease=1.0, env={"SEL_TEST_DELAY": "60"})
    waiter = spawn(redis_server.url, lease=1.0, env={"SEL_TEST_DELAY": "0.05"})
    holder.send({"op": "run", "agent": "counter", "query": "q"})
    block_until(lambda: executions(count_file) == 1, "the holder to take the lock and run")
    holder.process.kill()
    holder.process.wait()
    start = time.monotonic()
    (result,) = waiter.call({"op": "run", "agent": "counter", "query": "q"})
    waited = time.monotonic() - start
    assert (result["error"], result["cached"]) == (None, False)
    assert executions(count_file, "q") == 2
    assert 0.5 < waited < 1.0 + 1.0  # blocked by the dead holder's lease, and no longer


async def test_open_connects_ahead_and_reports_a_redis_that_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    up = cache_from_settings(Settings(cache_url=redis_server.url, cache_timeout=AMPLE_TIMEOUT))
    await up.open()
    assert not caplog.records
    await up.close()
    port = free_port()  # nothing listens there
    down = cache_from_settings(Settings(cache_url=f"redis://127.0.0.1:{port}/0"))
    await down.open()
    assert "cache connect failed" in caplog.text
    compute = Counting()
    outcome = await down.get_or_run(down.key("a", "q"), 60, compute)
    assert (outcome.output, outcome.cache_error) == ("out", "circuit_open")
    await down.close()
