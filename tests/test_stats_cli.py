"""`sel-otel stats` as a script runs it: a real process reading what instances published to a
real redis-server, as text or JSON, without starting agents."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from sel_otel import read_stats
from tests.conftest import CLI, cli_environment
from tests.stats_instances import Instance, StoreFactory, feed

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]

NAMESPACE = "test"  # the stores of tests.stats_instances publish under "test:agent-stats"


def sel_otel_stats(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "stats", *args],
        capture_output=True,
        text=True,
        env=cli_environment(SEL_CACHE_NAMESPACE=NAMESPACE, **env),
        timeout=60,
        check=False,
    )


@pytest.fixture
def published(make_store: StoreFactory) -> list[Instance]:
    """Two instances' known calls, published; and a third process fed all of them."""
    instances = [Instance("replica-a"), Instance("replica-b")]
    feed(instances, 400)
    store = make_store()
    for instance in instances:
        instance.publisher(store).publish()
    single = Instance("single")
    feed([single], 400)
    return [*instances, single]


def test_json_is_the_merged_view_of_every_instance(
    published: list[Instance], redis_server: RedisServer, tmp_path: Path
) -> None:
    done = sel_otel_stats(
        "--json", SEL_STATS_REDIS_URL=redis_server.url, SEL_DATA_DIR=str(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["instances_covered"] == 2 and report["notes"] == []
    assert report["coverage"].startswith("2 instances, the oldest figures ")
    assert 0 <= report["oldest_age_seconds"] < 15
    expected = read_stats(published[-1].reader)
    assert [row["agent"] for row in report["agents"]] == [row.agent for row in expected]
    for row, one in zip(report["agents"], expected, strict=True):
        assert (row["calls"], row["cached_calls"], row["errors"]) == (
            one.calls,
            one.cached_calls,
            one.errors,
        )
        assert row["p95_seconds"] == one.percentile(0.95)
    assert sorted(i["instance"] for i in report["instances"]) == ["replica-a", "replica-b"]
    assert sum(i["total"]["calls"] for i in report["instances"]) == 400
    assert list(tmp_path.iterdir()) == []  # no history, no runtime: nothing written


def test_text_per_instance_one_instance_and_one_agent(
    published: list[Instance], redis_server: RedisServer
) -> None:
    url = redis_server.url
    text = sel_otel_stats(SEL_CACHE_URL=url)  # the cache's Redis, by default
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("_Coverage: 2 instances, the oldest figures ")
    assert "\n\n**agent_" in text.stdout
    per = sel_otel_stats("--scope", "per-instance", SEL_STATS_REDIS_URL=url)
    assert "**replica-a** (figures " in per.stdout and "**replica-b** (figures " in per.stdout
    one = json.loads(
        sel_otel_stats("--instance", "replica-b", "--json", SEL_STATS_REDIS_URL=url).stdout
    )
    assert [i["instance"] for i in one["instances"]] == ["replica-b"]
    assert sum(row["calls"] for row in one["agents"]) == 200
    agent = json.loads(sel_otel_stats("agent_1", "--json", SEL_STATS_REDIS_URL=url).stdout)
    assert [row["agent"] for row in agent["agents"]] == ["agent_1"]


def test_without_a_shared_redis_or_with_it_down_it_says_so_and_fails(
    redis_server: RedisServer,
) -> None:
    missing = sel_otel_stats()
    assert missing.returncode == 1 and "no shared Redis" in missing.stderr
    redis_server.kill()
    down = sel_otel_stats(SEL_STATS_REDIS_URL=redis_server.url)
    assert down.returncode == 1
    assert "the shared stats could not be read: ConnectionError" in down.stderr
    bad = sel_otel_stats(SEL_STATS_REDIS_URL="redis://:x@host:notaport")
    assert bad.returncode == 2 and "invalid Redis URL" in bad.stderr


def test_an_instance_whose_state_it_cannot_read_is_named(
    published: list[Instance], make_store: StoreFactory, redis_server: RedisServer
) -> None:
    make_store().put("1:replica-c", b'{"format": 99}', 60.0)  # a later version's
    note = (
        "left out, as this version cannot read their figures (another version, or a corrupt "
        "state): replica-c"
    )
    url = redis_server.url
    every = json.loads(sel_otel_stats("--json", SEL_STATS_REDIS_URL=url).stdout)
    assert every["notes"] == [note] and every["instances_covered"] == 2
    other = json.loads(
        sel_otel_stats("--instance", "replica-b", "--json", SEL_STATS_REDIS_URL=url).stdout
    )
    assert other["notes"] == [] and other["instances_covered"] == 1
    asked = json.loads(
        sel_otel_stats("--instance", "replica-c", "--json", SEL_STATS_REDIS_URL=url).stdout
    )
    assert asked["notes"] == [note] and asked["instances_covered"] == 0
