"""Instances for the stats tests: a process's telemetry each, recording agent calls as the
runtime does, and stores on a real redis-server (the `make_store` fixture, for the test modules
that use `tests.redis_server`)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint

from sel_otel import _semconv as names
from sel_otel import stats_reader
from sel_otel._stats import agent_points
from sel_otel._stats_publish import StatsPublisher
from sel_otel._stats_redis import RedisStatsStore

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

PREFIX = "test:agent-stats"


class Instance:
    """One process's telemetry: a meter provider with the stats reader, and the agent-call
    histogram declared as the runtime declares it."""

    def __init__(self, name: str, started: float = 1_700_000_000.0) -> None:
        self.name = name
        self.started = started
        self.reader = stats_reader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.histogram = self.provider.get_meter(names.SCOPE_NAME).create_histogram(
            names.AGENT_DURATION,
            unit=names.AGENT_DURATION_UNIT,
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS),
        )

    def call(self, agent: str, seconds: float, *, hit: bool = False, error: str = "") -> None:
        attributes: dict[str, str | bool] = {
            names.GEN_AI_OPERATION_NAME: names.INVOKE_AGENT,
            names.GEN_AI_AGENT_NAME: agent,
            names.SEL_CACHE_HIT: hit,
        }
        if error:
            attributes[names.ERROR_TYPE] = error
        self.histogram.record(seconds, attributes)

    def points(self) -> tuple[HistogramDataPoint, ...]:
        """The agent-call points its stats reader holds now."""
        return tuple(agent_points(self.reader.get_metrics_data()))

    def publisher(self, store: RedisStatsStore, interval: float = 5.0) -> StatsPublisher:
        return StatsPublisher(
            self.reader, store, instance=self.name, started=self.started, interval=interval
        )


StoreFactory = Callable[[], RedisStatsStore]


@pytest.fixture
def make_store(redis_server: RedisServer) -> Iterator[StoreFactory]:
    """A factory of stores on the test's Redis, closed at the end."""
    made: list[RedisStatsStore] = []

    def make() -> RedisStatsStore:
        made.append(RedisStatsStore.from_url(redis_server.url, PREFIX, timeout=0.5))
        return made[-1]

    yield make
    for store in made:
        store.close()


def feed(instances: list[Instance], calls: int, seed: int = 7) -> None:
    """Known calls spread over `instances`: several agents, hits, misses and errors."""
    rng = random.Random(seed)
    for n in range(calls):
        agent = f"agent_{rng.randrange(5)}"
        seconds = rng.lognormvariate(-6, 2)
        kind = rng.random()
        instances[n % len(instances)].call(
            agent, seconds, hit=kind < 0.5, error="timeout" if kind > 0.95 else ""
        )
