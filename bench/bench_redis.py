"""Redis benchmark: a Redis-backed cached call against the Redis round trip it is built on.

Starts its own `redis-server` on a free loopback port (or uses `--url`). Each repetition runs
one process per export mode, alternating (nothing exported: spans discarded after the span
processor; as deployed: OTLP/HTTP to `_sink.py` and the periodic metric reader). In each, the
kinds of call take turns after a warm-up:
- raw GET: a redis-py (asyncio) GET of a cached value, the round-trip floor, on the cache's
  own client (the same connection settings and pool as the hit: a client of redis-py's
  defaults would bound each command again with a socket timeout the hit does without);
- floor: one SDK span plus one histogram record with the runtime's attributes;
- GET in the floor: the floor's span and record around the raw GET, in one call. The sum of
  the two figures above undercounts what they cost together: a call that waits on the
  network runs its span code cold, after the loop slept (15 µs more CPU here). This is
  the least a traced call answered by one GET costs;
- cached call: `await runtime.run(...)` as deployed, a hit answered from the near copy that
  the first hit read from Redis left (`SEL_CACHE_NEAR_ENTRIES`, kept in step by Redis's
  tracking);
- cached call read from Redis: the same with `SEL_CACHE_NEAR_ENTRIES=0`, every hit one trip
  (JSON decoding, span, record), as the first hit of an entry after any change is;
then the throughput of 32 concurrent callers asking for 1,000 inputs, Zipf-distributed (all
cached: a few are asked most of the time, most rarely), with one runtime process and with
two, and with one process reading every hit from Redis; and the throughput of two processes
whose every call is a miss (inputs never asked before: claim, run, store, release), with near
copies and without, so what Redis's tracking pushes to every instance on each write costs
shows. Then, once: a stalled Redis (SIGSTOP), call time with the circuit breaker and without.

Prints median (min-max) of the repetitions: µs per call (wall, and CPU of the process),
the ratios cached / (raw GET + floor) (target <= 1.03), cached / (GET in the floor) and
cached / raw GET, for both kinds of cached call, and calls/s.

Run: .venv/bin/python bench/bench_redis.py [--url redis://host:port/db]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from _common import (
    REPETITIONS,
    Sink,
    child_env,
    interleaved,
    print_header,
    ratios,
    redis_server,
    run_child,
    spread,
    time_kinds,
)
from bench_runtime import otel_floor, telemetry_for
from opentelemetry.trace import SpanKind

from sel_otel import AgentRegistry, AgentRuntime, Settings, Telemetry
from sel_otel import _semconv as names
from sel_otel._app import cache_from_settings
from sel_otel._redis_cache import RedisResultBackend
from sel_otel._telemetry import package_version

CALLS, ROUNDS, WARM_UP = 500, 12, 1_000
CALLERS = 32
KEYS = 1_000
ZIPF_EXPONENT = 1.1
THROUGHPUT_SECONDS = 3.0
MODES = ("nothing exported", "as deployed")
MISSES = ("misses", "misses, no copies")
ECHO_AGENT = "DESCRIPTION = 'echo'\nCACHE_TTL = 3600\ndef run(q):\n    return q\n"


def build_runtime(
    url: str, agents: Path, namespace: str, telemetry: Telemetry, **kw: float | int
) -> AgentRuntime:
    settings = Settings(agents_dir=agents, cache_url=url, cache_namespace=namespace, **kw)  # type: ignore[arg-type]
    registry = AgentRegistry(agents)
    registry.reload()
    return AgentRuntime(
        registry,
        cache_from_settings(settings, telemetry.meter_provider, telemetry.tracer_provider),
        settings=settings,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    )


def zipf_inputs(seed: int) -> list[str]:
    """A long sequence of the `KEYS` inputs, input k asked with a weight of 1 / k^s."""
    weights = [1 / k**ZIPF_EXPONENT for k in range(1, KEYS + 1)]
    return random.Random(seed).choices([f"q{k}" for k in range(KEYS)], weights, k=100_000)


def get_in_floor(
    telemetry: Telemetry, get: Callable[[], Awaitable[object]]
) -> Callable[[], Awaitable[None]]:
    """The floor's span and record (`otel_floor`) around `get`, in one call."""
    tracer = telemetry.tracer_provider.get_tracer(names.SCOPE_NAME, package_version())
    histogram = telemetry.meter_provider.get_meter("floor").create_histogram(
        "floor.composed.duration", unit="s"
    )
    attributes = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "echo",
        "gen_ai.agent.description": "echo",
        "sel.agent.input": "uname -a",
    }
    record_attributes: dict[str, str | bool] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "echo",
        "sel.cache.hit": True,
    }

    async def composed() -> None:
        start = time.perf_counter()
        span = tracer.start_span("invoke_agent echo", kind=SpanKind.INTERNAL, attributes=attributes)
        await get()
        duration = time.perf_counter() - start
        span.set_attributes({"sel.cache.hit": True, "sel.agent.duration_ms": duration * 1e3})
        span.end()
        histogram.record(duration, record_attributes)

    return composed


async def throughput(
    runtime: AgentRuntime, seconds: float, inputs: Iterator[str]
) -> tuple[int, int]:
    """Calls completed by CALLERS concurrent callers in `seconds`, asking for `inputs` in
    turn, and how many of them were answered from the cache (the others met a Redis timeout,
    the breaker it opened, or were misses)."""
    done = hits = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done, hits
        while time.perf_counter() < deadline:
            result = await runtime.run("echo", next(inputs))
            assert result.ok, result
            done += 1
            hits += result.cached

    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return done, hits


def cached_inputs(seed: int) -> Iterator[str]:
    """The cached inputs, Zipf-distributed, for ever."""
    return itertools.cycle(zipf_inputs(seed))


def new_inputs() -> Iterator[str]:
    """Inputs never asked before, by any process: every call a miss."""
    return (f"miss {os.getpid()} {n}" for n in itertools.count())


async def fill(runtime: AgentRuntime) -> None:
    """Every input of the throughput runs cached."""
    for k in range(KEYS):
        await runtime.run("echo", f"q{k}")


async def latency_child(mode: str, url: str, agents: str, namespace: str) -> None:
    """One process: per-call figures of raw GET, floor and cached call, then throughput."""
    telemetry = telemetry_for(mode)
    runtime = build_runtime(url, Path(agents), namespace, telemetry)
    far = build_runtime(url, Path(agents), namespace, telemetry, cache_near_entries=0)
    await runtime.cache.open()
    await far.cache.open()
    await runtime.run("echo", "uname -a")  # fill the cache
    key = runtime.cache.key("echo", "uname -a", version=runtime.registry.get("echo").version)
    backend = runtime.cache.backend
    assert isinstance(backend, RedisResultBackend) and backend.near is not None
    await asyncio.wait_for(backend.near.tracking.wait(), 30)  # turned on in the background
    client = backend.client
    assert isinstance(client, aioredis.Redis) and await client.get(key)
    calls: dict[str, Any] = {
        "raw": lambda: client.get(key),
        "floor": otel_floor(telemetry),
        "composed": get_in_floor(telemetry, lambda: client.get(key)),
        "cached": lambda: runtime.run("echo", "uname -a"),
        "far": lambda: far.run("echo", "uname -a"),
    }
    for call in calls.values():
        for _ in range(WARM_UP):
            await call()
    flush = telemetry.tracer_provider.force_flush
    timed = await time_kinds(calls, calls=CALLS, rounds=ROUNDS, settle=flush)
    timings = {kind: timing.to_json() for kind, timing in timed.items()}
    await fill(runtime)
    done, hits = await throughput(runtime, THROUGHPUT_SECONDS, cached_inputs(seed=1))
    far_done, far_hits = await throughput(far, THROUGHPUT_SECONDS, cached_inputs(seed=1))
    for each in (runtime, far):
        await each.aclose()
        await each.cache.close()
    telemetry.shutdown(timeout=5.0)
    rate, far_rate = done / THROUGHPUT_SECONDS, far_done / THROUGHPUT_SECONDS
    print(
        json.dumps(
            {
                "timings": timings,
                "throughput": rate,
                "hits": hits / done,
                "far_throughput": far_rate,
                "far_hits": far_hits / far_done,
            }
        )
    )


async def throughput_child(
    mode: str, url: str, agents: str, namespace: str, start: str, kind: str
) -> None:
    """One of two throughput processes: wait for the shared start time, run, print the rate.
    `kind`: hits (Zipf-distributed cached inputs), misses, or misses without near copies."""
    telemetry = telemetry_for(mode)
    near = {"cache_near_entries": 0} if kind == "misses, no copies" else {}
    runtime = build_runtime(url, Path(agents), namespace, telemetry, **near)
    await runtime.cache.open()
    if kind == "hits":
        await fill(runtime)
    await asyncio.sleep(max(0.0, float(start) - time.time()))
    inputs = cached_inputs(seed=os.getpid()) if kind == "hits" else new_inputs()
    done, hits = await throughput(runtime, THROUGHPUT_SECONDS, inputs)
    await runtime.aclose()
    await runtime.cache.close()
    telemetry.shutdown(timeout=5.0)
    print(json.dumps({"throughput": done / THROUGHPUT_SECONDS, "hits": hits}))


def two_processes(
    mode: str, url: str, agents: Path, namespace: str, env: dict[str, str], kind: str = "hits"
) -> tuple[float, float]:
    """Calls per second of two processes together (`kind` as `throughput_child` takes), and
    the share answered from the cache."""
    start_at = time.time() + 8.0  # after both have imported, connected and filled the cache
    args = ["--child", "throughput", mode, url, str(agents), namespace, str(start_at), kind]
    children = [
        subprocess.Popen(
            [sys.executable, __file__, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # the cache's warnings on timeouts: counted, not shown
            text=True,
        )
        for _ in range(2)
    ]
    total = hits = 0.0
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        total += result["throughput"]
        hits += result["hits"]
    return total, hits / (total * THROUGHPUT_SECONDS)


async def stalled(url: str, agents: Path, process: subprocess.Popen[bytes]) -> tuple[float, float]:
    """Median call time while Redis is stopped, with the breaker and without it."""
    medians = []
    for retry_after in (2.0, 0.0):
        # cache_retry_after=0 disables the breaker
        namespace = f"stall{uuid.uuid4().hex[:6]}"
        telemetry = telemetry_for("nothing exported")
        runtime = build_runtime(
            url, agents, namespace, telemetry, cache_retry_after=retry_after, cache_near_entries=0
        )  # every call asks the stalled Redis: no copy answers it
        await runtime.run("echo", "x")
        os.kill(process.pid, signal.SIGSTOP)
        try:
            durations = [(await runtime.run("echo", "x")).duration for _ in range(20)]
        finally:
            os.kill(process.pid, signal.SIGCONT)
        medians.append(statistics.median(durations))
        await runtime.aclose()
        await runtime.cache.close()
        telemetry.shutdown(timeout=1.0)
    return medians[0], medians[1]


def main(url: str | None) -> None:
    print_header("bench_redis: cached calls on Redis")
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    together: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    missing: dict[tuple[str, str], list[float]] = {(m, k): [] for m in MODES for k in MISSES}
    with (
        tempfile.TemporaryDirectory() as directory,
        redis_server() as (local_url, process),
        Sink() as sink,
    ):
        url = url or local_url
        agents = Path(directory)
        (agents / "echo.py").write_text(ECHO_AGENT)
        namespace = f"bench{uuid.uuid4().hex[:6]}"
        env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=sink.url)
        for mode in interleaved(MODES, REPETITIONS):
            args = ["latency", mode, url, str(agents), namespace]
            results[mode].append(run_child(Path(__file__), args, env))
            together[mode].append(two_processes(mode, url, agents, namespace, env))
            turn = len(together[mode]) % 2  # which goes first alternates
            for kind in (*MISSES[turn:], *MISSES[:turn]):
                rate, _ = two_processes(mode, url, agents, namespace, env, kind)
                missing[mode, kind].append(rate)
        with_breaker, without_breaker = asyncio.run(stalled(url, agents, process))

    print(f"median (min-max) of {REPETITIONS} repetitions")
    for mode in MODES:

        def series(kind: str, clock: str) -> list[float]:
            return [r["timings"][kind][clock] for r in results[mode]]  # noqa: B023

        print(f"{mode}:")
        for kind, label in (("raw", "raw redis-py GET"), ("floor", "floor (span + record)"),
                            ("composed", "GET in the floor"),
                            ("cached", "cached call on Redis"),
                            ("far", "the same, read from Redis")):  # fmt: skip
            wall, cpu = spread(series(kind, "wall")), spread(series(kind, "cpu"))
            print(f"  {label:26}: wall {wall.show(1e6, 1)} µs  cpu {cpu.show(1e6, 1)} µs")
        for kind, label in (("cached", "cached"), ("far", "read from Redis")):
            for clock in ("wall", "cpu"):
                raw, cached = series("raw", clock), series(kind, clock)
                bottom = [r + f for r, f in zip(raw, series("floor", clock), strict=True)]
                composed = series("composed", clock)
                print(
                    f"  {label}, {clock}: / (raw GET + floor) {ratios(cached, bottom).show(1, 3)}"
                    f" (target <= 1.03); / (GET in the floor) "
                    f"{ratios(cached, composed).show(1, 3)}; / raw GET "
                    f"{ratios(cached, raw).show()}"
                )
        one = spread([r["throughput"] for r in results[mode]])
        one_hits = spread([r["hits"] for r in results[mode]])
        print(f"  throughput, 1 process  : {one.show(1, 0)} calls/s, {one_hits.show(100, 1)} % "
              f"from the cache ({CALLERS} callers, {KEYS:,} Zipf-distributed inputs)")  # fmt: skip
        far = spread([r["far_throughput"] for r in results[mode]])
        far_hits = spread([r["far_hits"] for r in results[mode]])
        print(f"  the same, read from Redis: {far.show(1, 0)} calls/s, {far_hits.show(100, 1)} % "
              "from the cache")  # fmt: skip
        two = spread([rate for rate, _ in together[mode]])
        two_hits = spread([share for _, share in together[mode]])
        print(
            f"  throughput, 2 processes: {two.show(1, 0)} calls/s, {two_hits.show(100, 1)} % "
            "from the cache"
        )
        copies, no_copies = missing[mode, "misses"], missing[mode, "misses, no copies"]
        print(
            f"  misses, 2 processes: near copies {spread(copies).show(1, 0)} calls/s, none "
            f"{spread(no_copies).show(1, 0)} calls/s; ratio {ratios(copies, no_copies).show(1, 3)}"
        )
    for label, seconds in (("breaker", with_breaker), ("no breaker", without_breaker)):
        print(f"stalled Redis, {label:10}: {seconds * 1e3:8.2f} ms/call, median of 20 calls, once")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        if sys.argv[2] == "latency":
            asyncio.run(latency_child(*sys.argv[3:7]))
        else:
            asyncio.run(throughput_child(*sys.argv[3:9]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--url", help="an existing Redis (default: start redis-server)")
        main(parser.parse_args().url)
