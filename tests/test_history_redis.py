"""The shared history on a real redis-server: one stream for every instance, trimmed by length
and age, read back merged with the local SQLite file; Redis down or stalled costs entries in
Redis (counted, logged once), never a call."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from opentelemetry import trace

from sel_otel import ConfigError
from sel_otel._history import History, HistoryQuery
from sel_otel._history_redis import RedisHistoryStore
from sel_otel._history_sqlite import SqliteHistoryStore
from tests.conftest import TelemetryFixture
from tests.test_history import dropped, entry, record
from tests.waiting import wait_until

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]

KEY = "sel:history"
DAY = 86_400.0

StoreFactory = Callable[..., RedisHistoryStore]


@pytest.fixture
def redis_store(redis_server: RedisServer) -> Iterator[StoreFactory]:
    stores: list[RedisHistoryStore] = []

    def make(**options: object) -> RedisHistoryStore:
        settings: dict[str, object] = {"timeout": 5.0, "max_len": 10_000, "max_age": DAY}
        store = RedisHistoryStore.from_url(redis_server.url, KEY, **(settings | options))  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def test_entries_are_read_back_newest_first_and_filtered(redis_store: StoreFactory) -> None:
    store = redis_store()
    written = [
        entry(1),
        entry(2, agent="calc", cached=True),
        entry(3, user="bob", outcome="refused", error_type="forbidden"),
    ]
    store.write(written)
    assert store.query(HistoryQuery()) == written[::-1]
    assert store.query(HistoryQuery(agent="calc")) == [written[1]]
    assert store.query(HistoryQuery(user="bob", outcome="refused")) == [written[2]]
    assert store.query(HistoryQuery(limit=1)) == [written[2]]


def test_a_query_pages_through_the_stream_to_find_its_matches(redis_store: StoreFactory) -> None:
    store = redis_store()
    store.write([entry(n, user="rare" if n % 700 == 0 else "common") for n in range(3000)])
    found = store.query(HistoryQuery(user="rare"))
    assert [e.id for e in found] == ["test-2800", "test-2100", "test-1400", "test-700", "test-0"]


def test_a_scan_for_matches_is_bounded(redis_store: StoreFactory) -> None:
    store = redis_store()
    store.max_scan = 1000
    store.write([entry(n, user="rare" if n == 0 else "common") for n in range(3000)])
    assert store.query(HistoryQuery(user="rare")) == []  # beyond the newest 1,000 items


def test_items_of_another_shape_are_skipped_and_logged_once(
    redis_store: StoreFactory, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = redis_store()
    store.write([entry(1)])
    client = redis.Redis.from_url(redis_server.url)
    later_version = [*entry(2), "a field a later version adds"]
    for raw in (
        b"not json",
        b"\xff\xfe",
        json.dumps([1, 2]),
        json.dumps(later_version),
        json.dumps(list({**entry(3)._asdict(), "time": "soon"}.values())),
        json.dumps(list({**entry(4)._asdict(), "agent": None}.values())),
        json.dumps(list({**entry(5)._asdict(), "cached": 1}.values())),
        json.dumps(entry(6, input="x\ud800")),  # a lone surrogate, as an older release wrote
    ):
        client.xadd(KEY, {"e": raw})
    client.xadd(KEY, {"other": "field"})
    client.close()
    for _ in range(2):
        found = store.query(HistoryQuery())
        assert [e.id for e in found] == ["test-6", "test-2", "test-1"]
    assert found[0].input == "x\ufffd"
    assert len([r for r in caplog.records if "another shape" in r.message]) == 1


def test_the_latest_entries_are_those_that_started_last_whatever_their_write_order(
    redis_store: StoreFactory,
) -> None:
    store = redis_store()
    now = time.time()
    quick = entry(1, time=now - 5)
    store.write([quick])
    slow = entry(2, time=now - 20)  # it started first, and ended (was written) last
    store.write([slow])
    assert store.query(HistoryQuery(limit=1)) == [quick]
    assert store.query(HistoryQuery(limit=2)) == [quick, slow]


def test_the_stream_is_followed_in_the_order_of_its_writes(redis_store: StoreFactory) -> None:
    store = redis_store()
    found, cursor = store.written_after(HistoryQuery(), None)
    assert (found, cursor) == ([], "0-0")
    store.write([entry(2), entry(1, agent="calc")])
    found, cursor = store.written_after(HistoryQuery(limit=1), cursor)  # limit: not here
    assert [e.id for e in found] == ["test-2", "test-1"]
    store.write([entry(3)])
    found, after = store.written_after(HistoryQuery(agent="calc"), cursor)
    assert found == [] and after != cursor
    assert store.written_after(HistoryQuery(), after) == ([], after)


def test_the_stream_is_trimmed_to_about_max_len(
    redis_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = redis_store(max_len=100)
    for start in range(0, 2000, 500):
        store.write([entry(n) for n in range(start, start + 500)])
    length = redis.Redis.from_url(redis_server.url).xlen(KEY)
    assert 100 <= length < 400  # approximate: whole stream nodes go


def test_the_stream_is_trimmed_by_age(redis_store: StoreFactory, redis_server: RedisServer) -> None:
    redis_store(max_age=3600.0).write([entry(n) for n in range(300)])
    an_hour_later = redis_store(max_age=3600.0)
    # A second past the hour: entries of the very millisecond the hour is counted from would
    # still be young enough to keep their stream node.
    an_hour_later._clock = lambda: time.time() + 3601.0
    an_hour_later.write([entry(1000)])
    length = redis.Redis.from_url(redis_server.url).xlen(KEY)
    assert length < 100  # approximate: whole stream nodes of older entries go


def test_an_invalid_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid Redis URL"):
        RedisHistoryStore.from_url(
            "redis://:secret@host:notaport", KEY, timeout=1.0, max_len=10, max_age=DAY
        )


# -- instances sharing one Redis --------------------------------------------------------------


def instance(
    name: str,
    tmp_path: Path,
    redis_store: StoreFactory,
    telemetry: TelemetryFixture,
    flush_interval: float = 60.0,
) -> History:
    sqlite = SqliteHistoryStore(tmp_path / name / "history.db", max_age=DAY, max_rows=1000)
    history = History(
        [sqlite, redis_store()],
        instance=name,
        flush_interval=flush_interval,
        meter_provider=telemetry.meter_provider,
    )
    history.open()
    return history


async def test_two_instances_on_one_redis_each_see_the_others_entries(
    tmp_path: Path, redis_store: StoreFactory, telemetry: TelemetryFixture
) -> None:
    first = instance("first", tmp_path, redis_store, telemetry)
    second = instance("second", tmp_path, redis_store, telemetry)
    record(first, 1, agent="calc")
    record(second, 2, agent="clock")
    record(first, 3, agent="calc")
    assert await first.flush() and await second.flush()
    for history in (first, second):
        page = await history.query(HistoryQuery())
        assert page.unavailable == ()
        assert [(e.instance, e.input) for e in page.entries] == [
            ("first", "input 3"),
            ("second", "input 2"),
            ("first", "input 1"),
        ]  # each once, though an instance's own are in its file and in Redis
    page = await second.query(HistoryQuery(agent="calc"))
    assert {e.instance for e in page.entries} == {"first"}
    await first.aclose()
    await second.aclose()


async def test_redis_down_drops_its_entries_and_reads_fall_back_to_the_local_file(
    tmp_path: Path,
    redis_store: StoreFactory,
    redis_server: RedisServer,
    telemetry: TelemetryFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    history = instance("alone", tmp_path, redis_store, telemetry)
    redis_server.kill()
    for n in range(3):
        record(history, n)  # never raises
        assert await history.flush()
    page = await history.query(HistoryQuery())
    assert [e.input for e in page.entries] == ["input 2", "input 1", "input 0"]
    assert page.unavailable == ("redis",)
    failures = [r for r in caplog.records if "history store redis failing" in r.message]
    assert len(failures) == 1
    assert dropped(telemetry) == {("redis", "ConnectionError"): 3}

    redis_server.start()
    record(history, 3)
    assert await history.flush()
    assert len([r for r in caplog.records if "history store redis recovered" in r.message]) == 1
    page = await history.query(HistoryQuery())
    assert page.unavailable == () and len(page.entries) == 4
    await history.aclose()


async def test_a_stalled_redis_holds_up_only_its_own_writer(
    tmp_path: Path,
    redis_store: StoreFactory,
    redis_server: RedisServer,
    telemetry: TelemetryFixture,
) -> None:
    history = instance("stalled", tmp_path, redis_store, telemetry, flush_interval=0.05)
    sqlite = history.reader.stores[0]
    record(history, 0)
    assert await history.flush()  # connected before the stall
    redis_server.pause()
    try:
        for n in range(1, 101):
            record(history, n, span=trace.INVALID_SPAN)  # returns at once: only queued
        # The SQLite writer keeps going while the Redis one waits on the stalled server.
        await wait_until(
            lambda: len(sqlite.query(HistoryQuery(limit=200))) >= 101,
            "the local file to keep being written",
        )
        assert not await history.flush(wait=0.2)
    finally:
        redis_server.resume()
    assert await history.flush()
    page = await history.query(HistoryQuery(limit=200))
    assert page.unavailable == () and len(page.entries) == 101
    await history.aclose()
