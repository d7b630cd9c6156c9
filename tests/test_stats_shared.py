"""The deployment's stats, read from a real redis-server: the live instances' points merged
exactly, each instance once, and without Redis this process's figures, saying so."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from sel_otel import SelApp, Settings, Telemetry, read_stats, stats_reader
from sel_otel import _semconv as names
from sel_otel._commands import StatsReply
from sel_otel._stats_redis import RedisStatsStore
from sel_otel._stats_report import format_report, merge
from sel_otel._stats_shared import DeploymentStats, StateReader, read_states, stats_store
from sel_otel._stats_state import InstanceState, encode
from sel_otel._telemetry import build_resource
from tests.conftest import AgentWriter
from tests.stats_instances import PREFIX, Instance, StoreFactory, feed
from tests.waiting import wait_until

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]


def answering(instance: Instance, store: RedisStatsStore | None) -> DeploymentStats:
    """The deployment's stats as `instance` answers them."""
    return DeploymentStats(
        instance.reader, instance=instance.name, started=instance.started, store=store
    )


# -- the merged read ------------------------------------------------------------------------


async def test_merged_figures_equal_those_of_one_process_fed_every_call(
    make_store: StoreFactory,
) -> None:
    instances = [Instance(name) for name in ("a", "b", "c")]
    single = Instance("single")
    feed(instances, 3000)
    feed([single], 3000)  # the same calls, in the same order, into one process
    store = make_store()
    for instance in instances[1:]:
        instance.publisher(store).publish()
    report = await answering(instances[0], store).report()
    expected = read_stats(single.reader)
    assert [row.agent for row in report.rows] == [row.agent for row in expected]
    for merged, one in zip(report.rows, expected, strict=True):
        assert (merged.calls, merged.cached_calls, merged.errors) == (
            one.calls,
            one.cached_calls,
            one.errors,
        )
        assert merged.bucket_counts == one.bucket_counts
        assert merged.percentile(0.95) == one.percentile(0.95)
        assert merged.total_seconds == pytest.approx(one.total_seconds, rel=1e-12)
    assert sum(row.calls for row in report.rows) == 3000
    assert report.instances[0].instance == "a"  # the answering one first
    assert {f.instance for f in report.instances} == {"a", "b", "c"}
    assert report.shared and report.notes == []
    assert report.coverage().startswith("3 instances, the oldest figures ")


async def test_this_process_counts_with_its_live_figures_not_its_last_published_ones(
    make_store: StoreFactory,
) -> None:
    instance = Instance("a")
    store = make_store()
    instance.call("echo", 0.001)
    instance.publisher(store).publish()
    instance.call("echo", 0.001)
    report = await answering(instance, store).report()
    assert [row.calls for row in report.rows] == [2]
    assert [f.age for f in report.instances] == [0.0]


async def test_repeated_reads_follow_every_new_publish_and_every_restart(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    deployment = answering(Instance("a"), store)
    b = Instance("b")
    b.call("echo", 0.001)
    b.publisher(store).publish()
    first = await deployment.report()
    again = await deployment.report()  # the same payload: the same figures, read anew
    assert [row.calls for row in first.rows] == [row.calls for row in again.rows] == [1]
    assert again.instances[-1].age >= first.instances[-1].age >= 0
    b.call("echo", 0.001)
    b.call("calc", 0.002)
    b.publisher(store).publish()
    changed = await deployment.report()
    assert [(row.agent, row.calls) for row in changed.rows] == [("echo", 2), ("calc", 1)]
    restarted = Instance("b", b.started + 1)
    restarted.call("echo", 0.001)
    restarted.publisher(store).publish()
    after = await deployment.report()  # both lives are live in Redis: the newest counts
    assert [(row.agent, row.calls) for row in after.rows] == [("echo", 1)]
    twin = Instance("c")  # the very same line as b's: counted for each
    twin.call("echo", 0.001)
    twin.publisher(store).publish()
    both = await deployment.report()
    assert [(row.agent, row.calls) for row in both.rows] == [("echo", 2)]
    assert len(both.instances) == 3


def test_a_payload_read_before_is_not_unpacked_again(make_store: StoreFactory) -> None:
    a, b = Instance("a"), Instance("b")
    a.call("echo", 0.001)
    b.call("echo", 0.001)
    store = make_store()
    for instance in (a, b):
        instance.publisher(store).publish()
    reader = StateReader(store)
    first, _ = reader.read()
    again, _ = reader.read()
    assert all(x.points is y.points for x, y in zip(first, again, strict=True))
    b.call("echo", 0.001)
    b.publisher(store).publish()
    changed, _ = reader.read()
    assert [state.instance for state in changed] == ["a", "b"]
    assert changed[0].points is first[0].points  # a published the same figures
    assert [state.points.calls() for state in changed] == [1, 2]


async def test_a_restart_within_the_expiry_counts_the_newest_life_only(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    first, second, other = Instance("pod-1", 100.0), Instance("pod-1", 200.0), Instance("pod-2")
    first.call("echo", 0.001)
    first.call("echo", 0.001)
    second.call("echo", 0.001)
    other.call("echo", 0.001)
    for instance in (second, first, other):  # the old life published last: no matter
        instance.publisher(store).publish()
    states, notes = read_states(store)
    assert len(states) == 3 and notes == []
    report = merge(states)
    assert [row.calls for row in report.rows] == [2]
    assert sorted((f.instance, f.started) for f in report.instances) == [
        ("pod-1", 200.0),
        ("pod-2", 1_700_000_000.0),
    ]


async def test_scope_this_and_the_per_instance_breakdown(make_store: StoreFactory) -> None:
    a, b = Instance("a"), Instance("b")
    for _ in range(3):
        a.call("echo", 0.001)
    b.call("echo", 0.001, error="timeout")
    b.call("calc", 0.002)
    store = make_store()
    b.publisher(store).publish()
    deployment = answering(a, store)
    this = await deployment.report("this")
    assert [row.calls for row in this.rows] == [3] and not this.shared
    assert format_report(this).startswith("_Coverage: this instance only (scope:this)_\n\n**echo**")
    per = await deployment.report("per-instance")
    assert [(f.instance, f.this, f.total.calls) for f in per.instances] == [
        ("a", True, 3),
        ("b", False, 2),
    ]
    text = format_report(per)
    assert "**a** (this instance)\n  Calls: 3 (cached: 0)" in text
    assert "**b** (figures " in text and "Errors: 1 (50.0%)" in text
    one_agent = await deployment.report("per-instance", "calc")
    assert [f.total.calls for f in one_agent.instances] == [0, 1]


async def test_an_instance_with_other_bucket_boundaries_is_left_out_and_named(
    make_store: StoreFactory,
) -> None:
    a = Instance("a")
    a.call("echo", 0.001)
    [point] = a.points()
    other = dataclasses.replace(point, explicit_bounds=(0.1, 1.0), bucket_counts=[1, 0, 0])
    store = make_store()
    store.put("1:odd", encode("odd", 1.0, 60.0, [other]), 60.0)
    report = await answering(a, store).report()
    assert [row.calls for row in report.rows] == [1]
    assert [f.instance for f in report.instances] == ["a"]
    assert len(report.notes) == 1 and "boundaries differ" in report.notes[0]
    assert report.notes[0].endswith(": odd")


async def test_calls_that_found_no_thread_are_told_apart_across_instances(
    make_store: StoreFactory,
) -> None:
    a, b = Instance("a"), Instance("b")
    a.call("echo", 0.001, error=names.ERROR_THREADS_EXHAUSTED)
    b.call("echo", 0.001, error=names.ERROR_THREADS_EXHAUSTED)
    b.call("echo", 0.001, error="timeout")
    store = make_store()
    b.publisher(store).publish()
    [row] = (await answering(a, store).report()).rows
    assert (row.calls, row.errors, row.threads_exhausted) == (3, 3, 2)


#: What an instance of the previous version publishes: JSON lines, a head and a line an agent.
FORMAT_2 = (
    b'{"format":2,"instance":"old","started":1.0,"expiry":60.0,"bounds":[0.1],'
    b'"keys":[["gen_ai.agent.name"]]}\n[[0,[[["echo"],1,0.05,0.05,0.05,[1]]]]]'
)


def forged(instance: str, count: int, *buckets: int) -> bytes:
    """A payload of one point of `count` calls and `buckets` as its first bucket counts."""
    source = Instance(instance)
    source.call("echo", 0.001)
    [point] = source.points()
    rest = [0] * (len(point.bucket_counts) - len(buckets))
    return encode(
        instance,
        1.0,
        60.0,
        [dataclasses.replace(point, count=count, bucket_counts=[*buckets, *rest])],
    )


async def test_an_unreadable_state_is_left_out_and_named(make_store: StoreFactory) -> None:
    a, b = Instance("a"), Instance("b")
    a.call("echo", 0.001)
    b.call("echo", 0.001)
    store = make_store()
    b.publisher(store).publish()
    store.put("1:future", b'{"format": 99}', 60.0)
    store.put("1:old", FORMAT_2, 60.0)  # in a rolling deploy, an instance not yet upgraded
    store.put("1:torn", b"\xff\xfe not even a JSON head", 60.0)
    # together, their first buckets would carry into the second: [0, 1, 0, ...]
    store.put("1:forged-1", forged("forged-1", 2**63, 2**63), 60.0)
    store.put("1:forged-2", forged("forged-2", 2**63, 2**63), 60.0)
    store.put("1:skewed", forged("skewed", 5, 1, 1), 60.0)  # 2 calls in the buckets, not 5
    # earlier lives, of the previous version, of instances that count: not named
    store.put("1:b", FORMAT_2, 60.0)
    store.put("1:a", FORMAT_2, 60.0)
    report = await answering(a, store).report()
    assert [(row.calls, sum(row.bucket_counts)) for row in report.rows] == [(2, 2)]
    assert [f.instance for f in report.instances] == ["a", "b"]
    assert report.notes == [
        "left out, as this version cannot read their figures (another version, or a corrupt "
        "state): forged-1, forged-2, future, old, skewed, torn"
    ]


async def test_a_planted_key_or_a_nested_head_is_one_unreadable_state_not_a_failed_read(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    a = Instance("a")
    a.call("echo", 0.001)
    store = make_store()
    store.put("1:nested", b"[" * 100_000 + b"\n", 60.0)
    store.put("1:hashed", b"replaced below", 60.0)
    raw = redis.Redis.from_url(redis_server.url)
    raw.delete(f"{PREFIX}:1:hashed")
    raw.hset(f"{PREFIX}:1:hashed", "a", "b")  # a key of another type
    raw.close()
    report = await answering(a, store).report()
    assert [row.calls for row in report.rows] == [1]  # this instance's own figures
    assert report.notes == [
        "left out, as this version cannot read their figures (another version, or a corrupt "
        "state): hashed, nested"
    ]


async def test_a_read_only_credential_reads_the_deployment_and_leaves_the_tidying(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    a, b = Instance("a"), Instance("b")
    b.call("echo", 0.001)
    writer = make_store()
    b.publisher(writer).publish()
    writer.put("1:gone", b"expires at once", 0.001)  # a stopped instance: its member stays
    raw = redis.Redis.from_url(redis_server.url)
    raw.acl_setuser(
        "reader", enabled=True, passwords=["+reader-pw"], keys=["~*"], commands=["+@read"]
    )
    raw.close()
    url = redis_server.url.replace("redis://", "redis://reader:reader-pw@")
    reader = RedisStatsStore.from_url(url, PREFIX, timeout=0.5)
    try:
        await wait_until(lambda: _expired(redis_server, "1:gone"), "the state to expire")
        report = await answering(a, reader).report()
    finally:
        reader.close()
    assert [f.instance for f in report.instances] == ["a", "b"]


def _expired(redis_server: RedisServer, member: str) -> bool:
    raw = redis.Redis.from_url(redis_server.url)
    try:
        return not raw.exists(f"{PREFIX}:{member}")
    finally:
        raw.close()


async def test_the_shared_read_runs_in_the_context_of_the_request(
    make_store: StoreFactory,
) -> None:
    """Its spans (a Redis instrumentation's) are the request's: the read sees its context."""
    seen: list[trace.Span] = []

    class Watched(StateReader):
        def read(self) -> tuple[list[InstanceState], list[str]]:
            seen.append(trace.get_current_span())
            return super().read()

    deployment = answering(Instance("a"), make_store())
    deployment.states = Watched(make_store())
    tracer = TracerProvider().get_tracer(__name__)
    with tracer.start_as_current_span("request") as span:
        await deployment.report()
    assert seen == [span]


async def test_when_this_processs_figures_cannot_be_collected_the_read_is_not_left_behind(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    class Broken(DeploymentStats):
        def this(self) -> InstanceState:
            raise RuntimeError("the reader failed")

    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    executor = ThreadPoolExecutor(1)
    loop.set_default_executor(executor)
    instance = Instance("a")
    deployment = Broken(instance.reader, instance="a", started=1.0, store=make_store())
    redis_server.kill()  # the read fails
    with pytest.raises(RuntimeError, match="the reader failed"):
        await deployment.report()
    executor.shutdown(wait=True)  # the read is over, failed
    for _ in range(5):  # what its thread handed the loop is handled
        await asyncio.sleep(0)
    gc.collect()  # what is left of the read is collected
    assert unhandled == []


# -- without Redis --------------------------------------------------------------------------


async def test_without_a_shared_redis_the_figures_are_this_processs_and_say_so() -> None:
    a = Instance("a")
    a.call("echo", 0.001)
    report = await answering(a, None).report()
    assert [row.calls for row in report.rows] == [1]
    assert not report.shared and report.notes == []
    assert format_report(report).startswith("_Coverage: this instance only (no shared Redis)_\n\n")


async def test_with_redis_down_the_figures_are_this_processs_and_say_so(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    a, b = Instance("a"), Instance("b")
    a.call("echo", 0.001)
    b.call("echo", 0.001)
    store = make_store()
    b.publisher(store).publish()
    deployment = answering(a, store)
    assert [row.calls for row in (await deployment.report()).rows] == [2]
    redis_server.kill()
    started = time.monotonic()
    report = await deployment.report()
    assert time.monotonic() - started < 5
    assert [row.calls for row in report.rows] == [1] and not report.shared
    [note] = report.notes
    assert note.startswith("the shared Redis could not be read (ConnectionError)")
    assert format_report(report).startswith(
        f"_Coverage: this instance only (the shared Redis is unreachable)_\n⚠️ {note}\n\n**echo**"
    )
    redis_server.start()
    b.publisher(store).publish()
    assert [row.calls for row in (await deployment.report()).rows] == [2]


# -- assembled as a process is ----------------------------------------------------------------


def telemetry_of_a_process() -> Telemetry:
    """The providers `Telemetry.from_env` builds without exporters: a resource of its own
    (a fresh `service.instance.id`), and the stats reader."""
    resource = build_resource()
    reader = stats_reader()
    return Telemetry(
        TracerProvider(resource=resource),
        MeterProvider(resource=resource, metric_readers=[reader]),
        reader,
    )


async def test_apps_on_one_redis_answer_for_each_other(
    redis_server: RedisServer, write_agent: AgentWriter, agents_dir: Path
) -> None:
    write_agent("echo", "DESCRIPTION='d'\ndef run(q):\n    return q\n")
    settings = Settings(
        agents_dir=agents_dir,
        cache_url=redis_server.url,
        stats_publish_interval=0.05,
        history=False,
    )
    async with (
        SelApp(settings, telemetry_of_a_process()) as first,
        SelApp(settings, telemetry_of_a_process()) as second,
    ):
        for n in range(3):
            await first.commands.handle(f"agent:echo {n}")
        await second.commands.handle("agent:echo second")
        deadline = time.monotonic() + 30
        while True:
            reply = await second.commands.handle("/sel_agent_stats")
            assert isinstance(reply, StatsReply)
            if [row.calls for row in reply.stats.rows] == [4]:
                break
            assert time.monotonic() < deadline, reply.text
            await asyncio.sleep(0.02)
        assert reply.text.startswith("_Coverage: 2 instances, the oldest figures ")
        this = await second.commands.handle("/sel_agent_stats scope:this")
        assert isinstance(this, StatsReply) and [row.calls for row in this.stats.rows] == [1]
    # both published their last figures as they stopped: read as `sel-otel stats` reads them
    store = stats_store(settings)
    assert store is not None
    try:
        states, _ = read_states(store)
    finally:
        store.close()
    assert sorted(state.points.calls() for state in states) == [1, 3]
