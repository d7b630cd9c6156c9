"""Each instance publishes its stats reader's own points to a real redis-server: when it
starts, every interval and when it stops, under a key that expires; a Redis outage is logged
once and outlived."""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import TYPE_CHECKING

import pytest
import redis

from sel_otel import _semconv as names
from sel_otel._stats import COUNT_LIMIT, INSTANCES, AgentStats, Points, add_up, rows_from_points
from sel_otel._stats_publish import EXPIRY_INTERVALS
from sel_otel._stats_redis import RedisStatsStore
from sel_otel._stats_state import FORMAT, decode, encode
from tests.stats_instances import PREFIX, Instance, StoreFactory, feed
from tests.waiting import block_until

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]


def test_the_published_state_is_the_readers_own_points(make_store: StoreFactory) -> None:
    instance = Instance("a")
    feed([instance], 200)
    store = make_store()
    instance.publisher(store).publish()
    [(_, payload, remaining)] = store.read()
    assert 0 < remaining <= 5.0 * EXPIRY_INTERVALS
    # on the wire: a JSON head, then the reader's points in binary columns, grouped by agent,
    # with their attributes as the reader has them
    line, _, body = payload.partition(b"\n")
    head = json.loads(line)
    assert head["format"] == FORMAT and head["bounds"] == list(names.DURATION_BUCKETS)
    count, width = sum(head["sizes"]), len(names.DURATION_BUCKETS) + 1
    numbered = struct.unpack_from(f"<{count}I", body)
    floats = struct.unpack_from(f"<{3 * count}d", body, 4 * count)
    counts = struct.unpack_from(f"<{count}Q", body, 28 * count)
    buckets = list(struct.iter_unpack(f"<{width}Q", body[36 * count :]))
    agents = [
        name for name, size in zip(head["agents"], head["sizes"], strict=True) for _ in range(size)
    ]
    wire = {
        frozenset(
            {**head["attributes"][numbered[n]], names.GEN_AI_AGENT_NAME: agents[n]}.items()
        ): (
            counts[n],
            floats[n],
            floats[count + n],
            floats[2 * count + n],
            list(buckets[n]),
        )
        for n in range(count)
    }
    points = instance.points()
    assert len(wire) == len(points) > 5
    assert len(head["agents"]) == len(
        {(p.attributes or {})[names.GEN_AI_AGENT_NAME] for p in points}
    )
    for point in points:
        assert wire[frozenset((point.attributes or {}).items())] == (
            point.count,
            point.sum,
            point.min,
            point.max,
            list(point.bucket_counts),
        )
    # read back: the same figures per agent as the reader's own
    state = decode(payload, remaining)
    assert (state.instance, state.started) == ("a", instance.started)
    assert 0 <= state.age < 5.0 * EXPIRY_INTERVALS
    expected = rows_from_points(points)
    assert add_up([state.points]) == expected


def rows_of(points: Points) -> dict[str, AgentStats]:
    return {row.agent: row for row in add_up([points])}


def test_counts_far_beyond_32_bits_add_up_exactly() -> None:
    a = Instance("a")
    a.call("echo", 0.001)
    a.call("calc", 0.001, hit=True)
    by_agent = {(point.attributes or {})[names.GEN_AI_AGENT_NAME]: point for point in a.points()}
    echo, calc = by_agent["echo"], by_agent["calc"]
    big = COUNT_LIMIT - 2  # with the call beside it, the highest count a payload may hold
    counts = [0] * 5 + [big, 1] + [0] * 15
    huge = dataclasses.replace(echo, count=big + 1, bucket_counts=counts)
    payload = encode("a", 1.0, 15.0, [huge, calc])
    rows = rows_of(decode(payload, 15.0).points)
    assert rows["echo"] == rows_from_points([huge])[0]
    assert (rows["echo"].calls, rows["echo"].bucket_counts) == (big + 1, counts)
    assert (rows["calc"].calls, rows["calc"].cached_calls) == (1, 1)
    # as many instances of those as add up without a carry: each bucket adds up on its own,
    # within a hair of 2**64, and none spills into the next
    [echo_row] = add_up([decode(payload, 15.0).points] * INSTANCES, "echo")
    assert echo_row.bucket_counts == [0] * 5 + [INSTANCES * big, INSTANCES] + [0] * 15
    assert INSTANCES * big > 2**64 - 2**18
    assert (echo_row.calls, echo_row.cached_calls) == (INSTANCES * (big + 1), 0)


def test_a_point_whose_bucket_counts_could_carry_or_do_not_add_up_is_refused() -> None:
    a = Instance("a")
    a.call("echo", 0.001)
    [point] = a.points()
    zeros = [0] * (len(point.bucket_counts) - 2)

    def payload(count: int, *buckets: int) -> bytes:
        forged = dataclasses.replace(point, count=count, bucket_counts=[*buckets, *zeros])
        return encode("a", 1.0, 15.0, [forged])

    highest = COUNT_LIMIT - 1
    assert rows_of(decode(payload(highest, highest, 0), 15.0).points)["echo"].calls == highest
    assert rows_of(decode(payload(3, 1, 2), 15.0).points)["echo"].bucket_counts[:2] == [1, 2]
    for bad in (
        payload(2**63, 2**63, 0),  # two of them would add up to [0, 1, 0, ...]
        payload(COUNT_LIMIT, COUNT_LIMIT, 0),
        payload(1, 2**63, 2**63),  # adds up to 1 modulo 2**64 - 1
        payload(3, 1, 1),  # one call short in the buckets
        payload(1, 1, 1),  # one too many
    ):
        with pytest.raises(ValueError):
            decode(bad, 15.0)


def test_a_payload_of_another_layout_is_refused() -> None:
    a = Instance("a")
    a.call("echo", 0.001)
    a.call("echo", 0.002, hit=True)
    good = encode("a", 1.0, 15.0, a.points())
    assert rows_of(decode(good, 15.0).points)["echo"].calls == 2
    assert rows_of(decode(encode("a", 1.0, 15.0, []), 15.0).points) == {}
    line, _, body = good.partition(b"\n")
    head = json.loads(line)

    def with_head(**changes: object) -> bytes:
        return json.dumps(head | changes).encode() + b"\n" + body

    assert rows_of(decode(with_head(), 15.0).points)["echo"].cached_calls == 1
    for bad in (
        b"garbage",
        b'{"format": 1}',
        b"[3]",
        with_head(format=2),  # the JSON lines of the previous version
        with_head(format=99),
        good[:-1],  # a byte short
        good + b"\0",
        with_head(sizes=[1]),  # fewer points than there are
        with_head(sizes=[1, 1], agents=["echo", "echo"]),  # an agent twice
        with_head(sizes=[2, 0], agents=["echo", "calc"]),  # an agent without points
        with_head(attributes=head["attributes"][:1]),  # a point of no attribute set
        with_head(attributes=[["not", "a", "mapping"], {}]),
        with_head(bounds=[0.1, 1.0]),  # bucket counts of other boundaries
    ):
        with pytest.raises(ValueError):
            decode(bad, 1.0)


def published_calls(store: RedisStatsStore) -> int:
    states = [decode(payload, left) for _, payload, left in store.read()]
    return sum(state.points.calls() for state in states)


def test_the_publisher_publishes_when_it_starts_and_when_it_is_closed(
    make_store: StoreFactory,
) -> None:
    instance = Instance("a")
    store = make_store()
    publisher = instance.publisher(store, interval=3600)
    publisher.start()
    block_until(lambda: len(store.read()) == 1, "the first publish")  # before any call
    for _ in range(3):
        instance.call("echo", 0.001)
    assert published_calls(store) == 0
    publisher.close(timeout=10)
    assert published_calls(store) == 3


def test_the_publisher_publishes_every_interval(make_store: StoreFactory) -> None:
    instance = Instance("a")
    store = make_store()
    publisher = instance.publisher(store, interval=0.05)
    publisher.start()
    try:
        for calls in (1, 2, 3):
            instance.call("echo", 0.001)
            block_until(lambda: published_calls(store) == calls, "the calls published")  # noqa: B023
    finally:
        publisher.close(timeout=10)


def test_a_state_drops_out_when_it_expires_and_leaves_the_index(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = make_store()
    store.put("1:gone", encode("gone", 1.0, 0.3, []), 0.3)
    store.put("1:kept", encode("kept", 1.0, 60.0, []), 60.0)
    assert {decode(p, r).instance for _, p, r in store.read()} == {"gone", "kept"}
    block_until(
        lambda: [decode(p, r).instance for _, p, r in store.read()] == ["kept"], "only kept left"
    )
    assert redis.Redis.from_url(redis_server.url).smembers(PREFIX) == {b"1:kept"}


def test_each_read_finds_the_states_published_expired_or_replaced_since_the_last(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    store, other = make_store(), make_store()
    store.put("1:a", encode("a", 1.0, 60.0, []), 60.0)
    assert [decode(p, r).instance for _, p, r in store.read()] == ["a"]
    store.put("2:b", encode("b", 2.0, 0.3, []), 0.3)
    store.put("1:a", encode("a", 1.0, 30.0, []), 30.0)
    assert [(decode(p, r).instance, r <= 30) for _, p, r in store.read()] == [
        ("a", True),
        ("b", True),
    ]
    block_until(lambda: [decode(p, r).instance for _, p, r in store.read()] == ["a"], "only a")
    assert redis.Redis.from_url(redis_server.url).smembers(PREFIX) == {b"1:a"}
    assert [decode(p, r).instance for _, p, r in other.read()] == ["a"]


def test_instance_states_live_apart_from_any_agents_cached_results() -> None:
    # the cache's keys of agent A start with "{namespace}:{A}:", A an identifier
    assert not "agent-stats".isidentifier()
    assert PREFIX.endswith(":agent-stats")


def test_a_publisher_outlives_redis_going_away_and_coming_back(
    make_store: StoreFactory, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    instance = Instance("a")
    store = make_store()
    publisher = instance.publisher(store, interval=0.05)
    redis_server.kill()
    publisher.start()
    block_until(lambda: "stats not published to the shared store" in caplog.text, "the error")
    redis_server.start()
    block_until(lambda: len(store.read()) == 1, "a publish once Redis is back")
    publisher.close(timeout=10)
    assert caplog.text.count("stats not published to the shared store") == 1
    assert "stats published to the shared store again" in caplog.text
