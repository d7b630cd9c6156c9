"""Each instance publishes its stats reader's own points to a real redis-server: when it
starts, every interval and when it stops, under a key that expires; a Redis outage is logged
once and outlived."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import redis

from sel_otel import _semconv as names
from sel_otel._stats import rows_from_points
from sel_otel._stats_publish import EXPIRY_INTERVALS
from sel_otel._stats_redis import RedisStatsStore
from sel_otel._stats_state import decode, encode
from tests.stats_instances import PREFIX, Instance, StoreFactory, feed, stores, wait_for

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]


@pytest.fixture
def make_store(redis_server: RedisServer) -> Iterator[StoreFactory]:
    with stores(redis_server.url) as make:
        yield make


def test_the_published_state_is_the_readers_own_points(make_store: StoreFactory) -> None:
    instance = Instance("a")
    feed([instance], 200)
    store = make_store()
    instance.publisher(store).publish()
    [(payload, remaining)] = store.read()
    assert 0 < remaining <= 5.0 * EXPIRY_INTERVALS
    # on the wire: a head line, then each agent's line of the reader's points, with their
    # attributes, as the reader has them
    head, *agents = (json.loads(line) for line in payload.split(b"\n"))
    assert head["bounds"] == list(names.DURATION_BUCKETS)
    wire = {
        frozenset(zip(head["keys"][group], values, strict=True)): (count, total, low, high, counts)
        for groups in agents
        for group, points in groups
        for values, count, total, low, high, counts in points
    }
    points = instance.points()
    assert len(wire) == len(points) > 5
    assert len(agents) == len({(p.attributes or {})[names.GEN_AI_AGENT_NAME] for p in points})
    for point in points:
        count, total, low, high, counts = wire[frozenset((point.attributes or {}).items())]
        assert (count, total, low, high) == (point.count, point.sum, point.min, point.max)
        assert counts == list(point.bucket_counts)[: len(counts)]
        assert not any(point.bucket_counts[len(counts) :])
    # read back: the same figures per agent as the reader's own
    state = decode(payload, remaining)
    assert (state.instance, state.started) == ("a", instance.started)
    assert 0 <= state.age < 5.0 * EXPIRY_INTERVALS
    expected = rows_from_points(points)
    assert sorted(state.rows) == sorted(row.agent for row in expected)
    for row in expected:
        read = state.rows[row.agent]
        # the same points, added up in another order: the sum to the last bits only
        assert read.total_seconds == pytest.approx(row.total_seconds, rel=1e-12)
        assert dataclasses.replace(read, total_seconds=row.total_seconds) == row


def test_a_payload_of_another_layout_is_refused() -> None:
    good = encode("a", 1.0, 15.0, [])
    assert decode(good, 15.0).rows == {}
    good = good.replace(b'"keys":[]', b'"keys":[["gen_ai.agent.name"]]')
    line = b'[[0,[[["echo"],1,0.5,0.5,0.5,[1]]]]]'
    assert decode(good + b"\n" + line, 15.0).rows["echo"].calls == 1
    for bad in (
        b"garbage",
        b'{"format": 1}',
        good.replace(b'"format":2', b'"format":99'),
        good + b"\n[[1]]",
        good + b"\n" + line + b"," + line,  # two values on one line
        good + b"\n" + line.replace(b"[[0,", b"[[1,"),  # no such group
        good + b"\n" + line + b"\n" + line,  # an agent twice
        good + b"\n" + line.replace(b"[1]]]]]", b"[1" + b",0" * 30 + b"]]]]]"),
    ):
        with pytest.raises(ValueError):
            decode(bad, 1.0)


def published_calls(store: RedisStatsStore) -> int:
    states = [decode(payload, left) for payload, left in store.read()]
    return sum(row.calls for state in states for row in state.rows.values())


def test_the_publisher_publishes_when_it_starts_and_when_it_is_closed(
    make_store: StoreFactory,
) -> None:
    instance = Instance("a")
    store = make_store()
    publisher = instance.publisher(store, interval=3600)
    publisher.start()
    wait_for(lambda: len(store.read()) == 1)  # before any call: the instance is there
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
            wait_for(lambda: published_calls(store) == calls)  # noqa: B023
    finally:
        publisher.close(timeout=10)


def test_a_state_drops_out_when_it_expires_and_leaves_the_index(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = make_store()
    store.put("1:gone", encode("gone", 1.0, 0.3, []), 0.3)
    store.put("1:kept", encode("kept", 1.0, 60.0, []), 60.0)
    assert {decode(p, r).instance for p, r in store.read()} == {"gone", "kept"}
    wait_for(lambda: [decode(p, r).instance for p, r in store.read()] == ["kept"])
    assert redis.Redis.from_url(redis_server.url).smembers(PREFIX) == {b"1:kept"}


def test_each_read_finds_the_states_published_expired_or_replaced_since_the_last(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    store, other = make_store(), make_store()
    store.put("1:a", encode("a", 1.0, 60.0, []), 60.0)
    assert [decode(p, r).instance for p, r in store.read()] == ["a"]
    store.put("2:b", encode("b", 2.0, 0.3, []), 0.3)
    store.put("1:a", encode("a", 1.0, 30.0, []), 30.0)
    assert [(decode(p, r).instance, r <= 30) for p, r in store.read()] == [
        ("a", True),
        ("b", True),
    ]
    wait_for(lambda: [decode(p, r).instance for p, r in store.read()] == ["a"])
    assert redis.Redis.from_url(redis_server.url).smembers(PREFIX) == {b"1:a"}
    assert [decode(p, r).instance for p, r in other.read()] == ["a"]


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
    wait_for(lambda: "stats not published to the shared store" in caplog.text)
    redis_server.start()
    wait_for(lambda: len(store.read()) == 1)
    publisher.close(timeout=10)
    assert caplog.text.count("stats not published to the shared store") == 1
    assert "stats published to the shared store again" in caplog.text
