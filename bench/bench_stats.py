"""Deployment stats benchmark: reading the merged stats, and what publishing costs an instance.

Starts its own `redis-server` on a free loopback port (or uses `--url`). INSTANCES instances
of AGENTS agents each (cache hits, misses and an error type per agent: 3 histogram points an
agent), recorded as the runtime records its agent-call histogram; all but one publish. Then,
interleaved, REPETITIONS times:
- the merged `/sel_agent_stats` as the remaining instance answers it
  (`DeploymentStats.report()`: its live reader, the others' states read from Redis, decoded
  and merged), per call (target <= 10 ms), after the other instances published, untimed:
  every agent of every instance with a new call or each instance with one new call (every
  state unpacked anew), or nothing new (every state's points kept from the previous read);
  beside it `sel-otel stats`'s path (read, decode and merge every state from scratch, no live
  reader), the floor of the wire format (the Redis read and the decoding of every state
  alone) and `scope:this` (this process's reader alone);
- one publish of an instance while a thread records 1,000 calls/s into its histogram: the
  publishing thread's CPU time (reader collect, encoding, Redis SET), and that as a share of one
  core at the default interval (5 s) and at 1 s (target <= 1 % of one core).
Medians with their range; the load average at the start and at the end.

Run: .venv/bin/python bench/bench_stats.py [--instances 10] [--agents 100] [--repetitions 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import threading
import time

from _common import load_average, redis_server, summary
from opentelemetry.metrics import Histogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from sel_otel import _semconv as names
from sel_otel import stats_reader
from sel_otel._stats import agent_points
from sel_otel._stats_publish import StatsPublisher
from sel_otel._stats_redis import RedisStatsStore
from sel_otel._stats_report import merge
from sel_otel._stats_shared import REDIS_TIMEOUT, DeploymentStats, read_states
from sel_otel._stats_state import InstanceState, decode

READS_PER_ROUND = 20
PUBLISHES_PER_ROUND = 20
CALLS_PER_SECOND = 1_000


class Instance:
    """One process's stats reader and agent-call histogram, as the runtime declares it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reader: InMemoryMetricReader = stats_reader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.histogram: Histogram = self.provider.get_meter(names.SCOPE_NAME).create_histogram(
            names.AGENT_DURATION,
            unit=names.AGENT_DURATION_UNIT,
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS),
        )

    def points(self) -> list[HistogramDataPoint]:
        return list(agent_points(self.reader.get_metrics_data()))

    def record(self, agent: int, rng: random.Random) -> None:
        kind = rng.random()
        attributes: dict[str, str | bool] = {
            names.GEN_AI_OPERATION_NAME: names.INVOKE_AGENT,
            names.GEN_AI_AGENT_NAME: f"agent_{agent:03}",
            names.SEL_CACHE_HIT: kind < 0.6,
        }
        if kind > 0.95:
            attributes[names.ERROR_TYPE] = "timeout"
        self.histogram.record(rng.lognormvariate(-7, 2), attributes)


async def merged_reads(
    stats: DeploymentStats,
    store: RedisStatsStore,
    others: list[tuple[Instance, StatsPublisher]],
    agents: int,
    rng: random.Random,
) -> list[float]:
    """Seconds per read, wall and CPU (every thread): the merged report after every agent of
    every other instance was called, after one call each, after none; sel-otel stats's path,
    the floor of its wire format (Redis read and decoding alone), scope:this."""

    def every_agent() -> None:
        for instance, publisher in others:
            for agent in range(agents):
                instance.record(agent, rng)
            publisher.publish()

    def one_call_each() -> None:
        for instance, publisher in others:
            instance.record(rng.randrange(agents), rng)
            publisher.publish()

    def floor() -> list[InstanceState]:  # every state read and decoded, nothing added up
        return [decode(raw, remaining) for _, raw, remaining in store.read()]

    timings = []
    for before, read in (
        (every_agent, lambda: stats.report()),
        (one_call_each, lambda: stats.report()),
        (None, lambda: stats.report()),
        (None, lambda: asyncio.to_thread(lambda: merge(read_states(store)[0]))),
        (None, lambda: asyncio.to_thread(floor)),
        (None, lambda: stats.report("this")),
    ):
        wall = cpu = 0.0
        for _ in range(READS_PER_ROUND):
            if before is not None:
                before()  # untimed
            start, cpu_start = time.perf_counter(), time.process_time()
            await read()
            wall += time.perf_counter() - start
            cpu += time.process_time() - cpu_start
        timings += [wall / READS_PER_ROUND, cpu / READS_PER_ROUND]
    return timings


def publish_cost(publisher: StatsPublisher, instance: Instance, agents: int) -> tuple[float, float]:
    """CPU and wall seconds of one publish, while a thread records 1,000 calls/s."""
    stop = threading.Event()

    def calls() -> None:
        rng = random.Random(3)
        due = time.monotonic()
        while not stop.is_set():
            instance.record(rng.randrange(agents), rng)
            due += 1 / CALLS_PER_SECOND
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    recorder = threading.Thread(target=calls, daemon=True)
    recorder.start()
    try:
        cpu = wall = 0.0
        for _ in range(PUBLISHES_PER_ROUND):
            time.sleep(0.01)  # calls land between publishes, as they would
            cpu_start, wall_start = time.thread_time(), time.perf_counter()
            publisher.publish()
            cpu += time.thread_time() - cpu_start
            wall += time.perf_counter() - wall_start
    finally:
        stop.set()
        recorder.join()
    return cpu / PUBLISHES_PER_ROUND, wall / PUBLISHES_PER_ROUND


async def main(url: str, count: int, agents: int, repetitions: int) -> None:
    print(f"load average at start: {load_average()}")
    rng = random.Random(7)
    instances = [Instance(f"instance-{n}") for n in range(count)]
    for instance in instances:
        for agent in range(agents):
            for _ in range(40):
                instance.record(agent, rng)
    prefix = f"bench{os.getpid()}:agent-stats"
    store = RedisStatsStore.from_url(url, prefix, timeout=REDIS_TIMEOUT)
    started = time.time()
    publishers = [
        StatsPublisher(i.reader, store, instance=i.name, started=started, interval=5.0)
        for i in instances
    ]
    for publisher in publishers[1:]:
        publisher.publish()
    answering = instances[0]
    stats = DeploymentStats(answering.reader, instance=answering.name, started=started, store=store)
    report = await stats.report()
    points = sum(len(i.points()) for i in instances[1:])
    payload = max(len(raw) for _, raw, _ in store.read())
    print(
        f"{count} instances x {agents} agents: {len(report.rows)} agents merged, "
        f"{report.coverage()}; {points} published points, largest state {payload:,} bytes"
    )
    others = list(zip(instances[1:], publishers[1:], strict=True))
    reads: list[list[float]] = [[] for _ in range(12)]
    cpu, wall = [], []
    for _ in range(repetitions):
        timings = await merged_reads(stats, store, others, agents, rng)
        for kept, value in zip(reads, timings, strict=True):
            kept.append(value)
        p_cpu, p_wall = publish_cost(publishers[0], answering, agents)
        cpu.append(p_cpu)
        wall.append(p_wall)
    store.close()
    labels = (
        f"merged ({count} x {agents}), all new",
        f"merged ({count} x {agents}), 1 call each",
        f"merged ({count} x {agents}), none new",
        "sel-otel stats (read, merge)",
        "floor: Redis read + decode",
        "scope:this (reader alone)",
    )
    for label, walls, cpus in zip(labels, reads[::2], reads[1::2], strict=True):
        print(f"{label:36} wall: {summary(walls, 1e3, 'ms', digits=3)}")
        print(f"{label:36} CPU:  {summary(cpus, 1e3, 'ms', digits=3)}")
    print(f"{'one publish, 1,000 calls/s recorded':36} wall: {summary(wall, 1e3, 'ms', digits=3)}")
    print(f"{'':36} CPU:  {summary(cpu, 1e3, 'ms', digits=3)} (its thread)")
    for interval in (5.0, 1.0):
        share = [value / interval for value in cpu]
        shown = summary(share, 100, "%", digits=3)
        print(f"publishing every {interval:g}s, share of one core: {shown}")
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="an existing Redis (default: start redis-server)")
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--repetitions", type=int, default=7)
    args = parser.parse_args()

    def run(url: str) -> None:
        asyncio.run(main(url, args.instances, args.agents, args.repetitions))

    if args.url:
        run(args.url)
    else:
        with redis_server() as (url, _):
            run(url)
