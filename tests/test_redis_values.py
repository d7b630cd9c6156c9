"""Values planted in the shared Redis cannot hurt a call: a value that is not text, an output
over `SEL_AGENT_MAX_OUTPUT`, a lock without an expiry, a huge value or a key of another type
is a miss, and none of them opens the breaker; nor can two calls share a key by accident.

Against a real `redis-server` (tests/redis_server.py); the values are planted with a plain
redis-py client, as anyone who can reach the database could.
"""

from __future__ import annotations

import asyncio
import functools
import io
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from sel_otel import ResultCache, stats_reader
from sel_otel._cache import Lookup
from sel_otel._commands import CommandHandler
from sel_otel._console import run_console
from sel_otel._redis_cache import RedisResultBackend
from sel_otel._shared_cache import Claim
from tests.conftest import AgentWriter, Counting, RuntimeFactory

if TYPE_CHECKING:
    from tests.redis_server import CacheFactory, RedisServer

pytest_plugins = ["tests.redis_server"]

#: A generous bound for a call that does not wait on a planted lock (it would wait 35 s).
PROMPT = 10.0
MAX_OUTPUT = 1000


@pytest.fixture
def make_cache(redis_caches: CacheFactory) -> CacheFactory:
    """Result caches on the test's Redis, with a small `max_output` and a long breaker."""
    return functools.partial(redis_caches, "values", max_output=MAX_OUTPUT)


async def sent_bytes(raw: aioredis.Redis) -> int:
    """How many bytes Redis has sent to its clients so far."""
    return int((await raw.info("stats"))["total_net_output_bytes"])


async def assert_cached(cache: ResultCache, key: str, output: str) -> None:
    """`key` now answers `output` from the cache: the planted value was replaced."""
    outcome = await cache.get_or_run(key, 60, Counting("not run"))
    assert (outcome.output, outcome.lookup) == (output, Lookup.HIT)


# -- values that are not text ------------------------------------------------------------------


@pytest.mark.parametrize(
    "planted",
    [b'{"output":"\\ud800"}', b'{"output":"ok \xed\xa0\x80"}'],
    ids=["escaped-lone-surrogate", "utf8-encoded-surrogate"],
)
async def test_a_cached_output_that_is_not_text_is_a_miss(
    make_cache: CacheFactory, raw: aioredis.Redis, planted: bytes
) -> None:
    cache = make_cache()
    key = cache.key("agent", "q")
    await raw.set(key, planted)
    outcome = await cache.get_or_run(key, 60, Counting("fresh"))
    assert (outcome.output, outcome.lookup, outcome.cache_error) == ("fresh", Lookup.MISS, None)
    await assert_cached(cache, key, "fresh")


async def test_the_console_answers_every_request_after_a_planted_lone_surrogate(
    redis_server: RedisServer,
    raw: aioredis.Redis,
    write_agent: AgentWriter,
    make_runtime: RuntimeFactory,
) -> None:
    write_agent("double", 'DESCRIPTION = "twice"\ndef run(q):\n    return q * 2\n')
    runtime = make_runtime(cache_url=redis_server.url, history=False)
    agent = runtime.registry.get("double")
    await raw.set(runtime.cache.key("double", "ab", version=agent.version), b'{"output":"\\ud800"}')
    written = io.BytesIO()
    stdout = io.TextIOWrapper(written, encoding="utf-8")  # strict, as a terminal's is
    commands = CommandHandler(runtime, stats_reader())
    failures = await run_console(
        commands, io.StringIO("agent:double ab\nagent:double cd\n"), stdout
    )
    stdout.flush()
    assert failures == 0
    assert written.getvalue().decode() == "abab\ncdcd\n"


# -- outputs over SEL_AGENT_MAX_OUTPUT -----------------------------------------------------------


@pytest.mark.parametrize("max_output", [MAX_OUTPUT, 100_000], ids=["one-read", "two-reads"])
async def test_a_cached_output_over_the_max_output_is_a_miss(
    make_cache: CacheFactory, raw: aioredis.Redis, max_output: int
) -> None:
    # 100,000 characters are more than one read's window: the whole is asked for in a second trip
    cache = make_cache(max_output=max_output)
    longest, too_long = cache.key("agent", "longest"), cache.key("agent", "too long")
    await raw.set(longest, f'{{"output":"{"x" * max_output}"}}')
    await raw.set(too_long, f'{{"output":"{"x" * (max_output + 1)}"}}')
    await assert_cached(cache, longest, "x" * max_output)
    outcome = await cache.get_or_run(too_long, 60, Counting("fresh"))
    assert (outcome.output, outcome.lookup, outcome.cache_error) == ("fresh", Lookup.MISS, None)


async def test_every_output_within_the_max_output_is_served_again(
    make_cache: CacheFactory,
) -> None:
    # Control characters take 6 bytes each in the JSON: still within the bytes checked first.
    writer, reader = make_cache(), make_cache()
    for output in ("\x1b" * MAX_OUTPUT, "🎉" * MAX_OUTPUT, "ü" * MAX_OUTPUT):
        key = writer.key("agent", output[0])
        assert (await writer.get_or_run(key, 60, Counting(output))).lookup is Lookup.MISS
        await assert_cached(reader, key, output)


async def test_a_20_mb_value_is_a_miss_and_never_sent(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    cache = make_cache()
    key = cache.key("agent", "q")
    await raw.set(key, f'{{"output":"{"x" * 20_000_000}"}}')
    before = await sent_bytes(raw)
    outcome = await cache.get_or_run(key, 60, Counting("fresh"))
    assert (outcome.output, outcome.lookup, outcome.cache_error) == ("fresh", Lookup.MISS, None)
    assert await sent_bytes(raw) - before < 100_000


# -- values that would stall every call --------------------------------------------------------


@pytest.mark.parametrize("value", [None, b"garbage"], ids=["no-value", "invalid-value"])
async def test_a_lock_without_an_expiry_counts_as_expired(
    make_cache: CacheFactory, raw: aioredis.Redis, value: bytes | None
) -> None:
    cache = make_cache(lock_lease=5.0)
    key = cache.key("agent", "q")
    if value is not None:
        await raw.set(key, value)
    await raw.set(key + ":lock", "planted")  # no expiry: no process of ours took it
    compute = Counting("fresh")
    start = time.monotonic()
    outcome = await asyncio.wait_for(cache.get_or_run(key, 60, compute, compute_timeout=30), PROMPT)
    assert time.monotonic() - start < PROMPT / 2
    assert (outcome.output, outcome.lookup, compute.calls) == ("fresh", Lookup.MISS, 1)
    assert await raw.exists(key + ":lock") == 0  # taken over, then released as ours
    await assert_cached(cache, key, "fresh")


async def test_a_live_lock_is_still_waited_for(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    cache = make_cache()
    key = cache.key("agent", "q")
    await raw.set(key + ":lock", "another instance", px=400)
    compute = Counting("fresh")
    start = time.monotonic()
    await cache.get_or_run(key, 60, compute, compute_timeout=30)
    assert time.monotonic() - start >= 0.3  # until its lease ran out
    assert compute.calls == 1


@pytest.mark.parametrize("plant", ["50 MB of garbage", "a list"])
async def test_a_huge_value_or_another_type_is_a_miss_that_keeps_the_breaker_closed(
    make_cache: CacheFactory, raw: aioredis.Redis, plant: str
) -> None:
    cache = make_cache()
    key, other = cache.key("agent", "q"), cache.key("another_agent", "q")
    if plant == "a list":
        await raw.rpush(key, b"x" * 1000)
    else:
        await raw.set(key, b"\xff" * 50_000_000)
    before = await sent_bytes(raw)
    outcome = await cache.get_or_run(key, 60, Counting("fresh"))
    assert (outcome.output, outcome.lookup, outcome.cache_error) == ("fresh", Lookup.MISS, None)
    assert await sent_bytes(raw) - before < 100_000
    await assert_cached(cache, key, "fresh")
    # The breaker stayed closed: another agent's calls still use the cache.
    assert (await cache.get_or_run(other, 60, Counting("other"))).cache_error is None
    await assert_cached(cache, other, "other")


async def test_a_claim_never_sends_a_huge_value(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    backend = make_cache().backend
    assert isinstance(backend, RedisResultBackend)
    await raw.set("values:agent:k", b"\xff" * 50_000_000)
    before = await sent_bytes(raw)
    claimed = await backend.claim(
        "values:agent:k", "values:agent:k:lock", "values:agent:~generation", "token", 5.0
    )
    assert claimed.outcome is Claim.ACQUIRED
    assert await sent_bytes(raw) - before < 100_000


# -- keys ----------------------------------------------------------------------------------------


async def test_parts_holding_the_old_separator_make_different_keys(
    make_cache: CacheFactory,
) -> None:
    cache = make_cache()
    one = cache.key("agent", "w", user="u\x00v", version="1")
    other = cache.key("agent", "v\x00w", user="u", version="1")
    assert one != other
    assert cache.key("agent", "q", version="1\x00") != cache.key("agent", "\x00q", version="1")
    assert cache.key("agent", "q", version="1") != cache.key("agent", "q", version="2")
    await cache.get_or_run(one, 60, Counting("u\\0v's answer"))
    outcome = await cache.get_or_run(other, 60, Counting("u's answer"))
    assert (outcome.output, outcome.lookup) == ("u's answer", Lookup.MISS)
