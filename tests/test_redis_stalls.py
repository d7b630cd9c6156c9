"""A blocked event loop never fails a healthy Redis: an operation whose reply came in while the
loop was blocked past its deadline returns that reply, and the deadlines still bound every
operation Redis does not answer.

A loop stall (a sync call in an async agent) used to end in a timeout although Redis had
answered: after the stall, the loop ran the reply's socket callback and the expired timer in
the same iteration, and the timer's cancellation reached the task before its wake-up. The
breaker then opened and the other instance ran the same key.

Against a real `redis-server` (tests/redis_server.py). The stall is deterministic: once an
operation's command is sent, the loop is blocked (a blocking sleep, in the operation's own
task) until Redis has executed that command, then past the operation's deadline: just past
it, or by more than a tenth of the timeout (a deadline the loop reaches that late is moved on,
once, so that an operation of two round trips gets its second).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
import redis

from sel_otel import ResultCache
from sel_otel._cache import Lookup
from sel_otel._redis_cache import READ_WINDOW, RedisResultBackend
from sel_otel._shared_cache import Claim
from tests.conftest import Counting

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]

TIMEOUT = 0.25  # SEL_CACHE_TIMEOUT's default
#: How far past an operation's deadline the loop stays blocked: just past it, or long past.
JUST_PAST, LONG_PAST = 0.005, 0.5 * TIMEOUT


@pytest.fixture
async def backend(redis_server: RedisServer) -> AsyncIterator[RedisResultBackend]:
    backend = RedisResultBackend.from_url(redis_server.url, timeout=TIMEOUT)
    await backend.connect()
    yield backend
    await backend.close()


def command_calls(url: str, command: str) -> int:
    """How many times Redis has executed `command` (INFO commandstats)."""
    with redis.Redis.from_url(url) as probe:
        stats = probe.info("commandstats").get(f"cmdstat_{command.lower()}", {})
        return int(stats.get("calls", 0))


def stall_after_sending(
    backend: RedisResultBackend, url: str, command: str, past: float = LONG_PAST
) -> list[float]:
    """Once, when `command` is next sent: block the event loop until Redis has executed it
    (so its reply is in the socket) and `past` seconds past the operation's deadline. Returns
    the list the stall's end time is appended to."""
    client = backend.client
    parse = client.parse_response
    executed = command_calls(url, command)
    ended: list[float] = []

    async def parse_response(connection: Any, command_name: str | bytes, **options: Any) -> Any:
        if str(command_name).upper() == command.upper() and not ended:
            sent = time.monotonic()  # the loop's clock; the operation started just before
            deadline = sent + 30
            while command_calls(url, command) <= executed:  # the loop stays blocked
                assert time.monotonic() < deadline, f"Redis never executed {command}"
                time.sleep(0.001)  # noqa: ASYNC251 - the stall itself
            time.sleep(max(0.0, sent + TIMEOUT + past - time.monotonic()))  # noqa: ASYNC251
            ended.append(time.monotonic())
            client.parse_response = parse
        return await parse(connection, command_name, **options)

    client.parse_response = parse_response
    return ended


def when_sent(backend: RedisResultBackend) -> asyncio.Event:
    """An event set when the backend next waits for a reply: its command has been sent."""
    client = backend.client
    parse = client.parse_response
    sent = asyncio.Event()

    async def parse_response(*args: Any, **options: Any) -> Any:
        sent.set()
        client.parse_response = parse
        return await parse(*args, **options)

    client.parse_response = parse_response
    return sent


OPERATIONS: dict[str, tuple[str, Callable[[RedisResultBackend], Awaitable[object]], object]] = {
    "get": ("GETRANGE", lambda b: b.get("k:hit"), "stored"),
    "claim": (
        "EVALSHA",
        lambda b: b.claim("k:new", "k:new:lock", "k~generation", "token", 5.0),
        Claim.ACQUIRED,
    ),
    "store": ("EVALSHA", lambda b: b.store("k:hit", "new", 60, "k~generation", "7"), True),
    "extend_lock": ("EVALSHA", lambda b: b.extend_lock("k:held:lock", "mine", 5.0), True),
    "release_lock": ("EVALSHA", lambda b: b.release_lock("k:held:lock", "mine"), True),
    "advance_generation": ("EVALSHA", lambda b: b.advance_generation("k~generation"), None),
}


@pytest.mark.parametrize("past", [JUST_PAST, LONG_PAST], ids=["just-past", "long-past"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_an_operation_answered_while_the_loop_was_blocked_past_its_deadline_succeeds(
    redis_server: RedisServer, backend: RedisResultBackend, operation: str, past: float
) -> None:
    with redis.Redis.from_url(redis_server.url) as setup:
        setup.set("k:hit", '{"output":"stored"}')
        setup.set("k~generation", "7")
        setup.set("k:held:lock", "mine", px=60_000)
    command, call, expected = OPERATIONS[operation]
    stalled = stall_after_sending(backend, redis_server.url, command, past)
    answer = await call(backend)
    assert stalled, "the loop was not blocked"
    if operation == "claim":
        assert answer is not None and getattr(answer, "outcome", None) is expected
    else:
        assert answer == expected


async def test_a_hit_read_across_a_loop_stall_is_a_hit_and_leaves_the_breaker_closed(
    redis_server: RedisServer, backend: RedisResultBackend
) -> None:
    errors: list[str] = []
    cache = ResultCache(backend, namespace="stalls", retry_after=60.0, on_error=errors.append)
    key = cache.key("agent", "q")
    await cache.get_or_run(key, 60, Counting("out"))
    stalled = stall_after_sending(backend, redis_server.url, "GETRANGE")
    outcome = await cache.get_or_run(key, 60, Counting("other"))
    assert stalled
    assert (outcome.output, outcome.lookup, outcome.cache_error) == ("out", Lookup.HIT, None)
    # An open breaker would skip Redis for a minute: the next call would run the agent.
    outcome = await cache.get_or_run(key, 60, Counting("other"))
    assert (outcome.output, outcome.lookup, errors) == ("out", Lookup.HIT, [])


async def test_a_claim_answered_across_a_loop_stall_runs_the_key_once_across_instances(
    redis_server: RedisServer,
) -> None:
    caches = []
    for _ in range(2):
        backend = RedisResultBackend.from_url(redis_server.url, timeout=TIMEOUT)
        caches.append(ResultCache(backend, namespace="stalls", retry_after=60.0))
        await caches[-1].open()
    first, second = caches
    try:
        key = first.key("agent", "q")
        compute = Counting("out")
        assert isinstance(first.backend, RedisResultBackend)
        stalled = stall_after_sending(first.backend, redis_server.url, "EVALSHA")  # the claim
        outcome = await first.get_or_run(key, 60, compute)
        assert stalled
        assert (outcome.lookup, outcome.cache_error) == (Lookup.MISS, None)
        outcome = await second.get_or_run(key, 60, compute)
        assert (outcome.output, outcome.lookup, compute.calls) == ("out", Lookup.HIT, 1)
    finally:
        for cache in caches:
            await cache.close()


async def test_a_second_round_trip_after_a_loop_stall_gets_its_time(
    redis_server: RedisServer, backend: RedisResultBackend
) -> None:
    """A value larger than the first read's window takes two round trips: the loop, blocked
    past the deadline during the first, must still let the second one run."""
    output = "x" * READ_WINDOW
    with redis.Redis.from_url(redis_server.url) as setup:
        setup.set("k:large", backend.serializer.dumps(output))
    stalled = stall_after_sending(backend, redis_server.url, "GETRANGE")
    assert await backend.get("k:large") == output
    assert stalled


async def test_an_operation_redis_does_not_answer_times_out_at_its_deadline(
    redis_server: RedisServer, backend: RedisResultBackend
) -> None:
    redis_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await backend.get("k")
        took = time.monotonic() - start
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the deadline's cancel is undone
    finally:
        redis_server.resume()
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 2.0  # a loaded machine may run the loop late
    assert await backend.get("k") is None  # and the backend works on


async def test_a_loop_blocked_past_the_deadline_of_an_unanswered_operation_delays_it_once(
    redis_server: RedisServer, backend: RedisResultBackend
) -> None:
    """A deadline the loop reached late is moved one timeout on, once: the operation then
    times out, after at most two timeouts and the stall."""
    redis_server.pause()
    try:
        loop = asyncio.get_running_loop()
        sent = when_sent(backend)
        start = loop.time()
        operation = asyncio.ensure_future(backend.get("k"))
        await sent.wait()
        time.sleep(TIMEOUT + LONG_PAST)  # noqa: ASYNC251 - the loop blocked past the deadline
        stall_end = loop.time()
        with pytest.raises(TimeoutError):
            await operation
        end = loop.time()
    finally:
        redis_server.resume()
    assert end - stall_end >= TIMEOUT * 0.9  # the deadline moved on after the stall,
    assert end - start < 3 * TIMEOUT + LONG_PAST + 2.0  # and only once


async def test_a_cancellation_from_elsewhere_stays_a_cancellation(
    redis_server: RedisServer, backend: RedisResultBackend
) -> None:
    redis_server.pause()
    try:
        sent = when_sent(backend)
        operation = asyncio.ensure_future(backend.get("k"))
        await sent.wait()
        operation.cancel()
        with pytest.raises(asyncio.CancelledError):
            await operation
    finally:
        redis_server.resume()
    assert await backend.get("k") is None
