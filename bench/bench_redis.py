"""Redis benchmark: a Redis-backed cached call against the Redis round trip it is built on.

Starts its own `redis-server` on a free loopback port (or uses `--url`), then prints medians
from one run:
- a raw redis-py (asyncio) GET of a cached value: the round-trip floor;
- `redis-benchmark -t get -c 1 -P 1` for the same server, when installed (C client floor);
- a cached call end to end (`await runtime.run(...)`, hit in Redis): agent span, `cache get`
  child span, histogram record, JSON decoding; and its ratio to the raw GET (target <= 2);
- throughput of cached calls with one and with two runtime processes (32 callers each);
- a stalled Redis (SIGSTOP): call time with the circuit breaker, and without it.

Run: .venv/bin/python bench/bench_redis.py [--url redis://host:port/db]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis.asyncio as aioredis
from _common import DiscardingExporter, free_port, per_call_seconds
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from sel_otel import AgentRegistry, AgentRuntime, Settings, cache_from_settings, stats_reader

CALLS_PER_ROUND = 1_000
ROUNDS = 9
CALLERS = 32
THROUGHPUT_SECONDS = 3.0
ECHO_AGENT = "DESCRIPTION = 'echo'\nCACHE_TTL = 3600\ndef run(q):\n    return q\n"


@contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed; pass --url")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory, "--logfile", f"{directory}/redis.log"],
        )  # fmt: skip
        try:
            for _ in range(500):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0", process
        finally:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.wait()


def build_runtime(
    url: str,
    agents: Path,
    namespace: str,
    tracer_provider: TracerProvider | None = None,
    **kw: float,
) -> AgentRuntime:
    settings = Settings(agents_dir=agents, cache_url=url, cache_namespace=namespace, **kw)  # type: ignore[arg-type]
    meter_provider = MeterProvider(metric_readers=[stats_reader()])
    registry = AgentRegistry(agents)
    registry.reload()
    return AgentRuntime(
        registry,
        cache_from_settings(settings, meter_provider, tracer_provider),
        settings=settings,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )


async def throughput(runtime: AgentRuntime, seconds: float) -> int:
    """Cached calls completed by CALLERS concurrent callers in `seconds`."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            result = await runtime.run("echo", "uname -a")
            assert result.cached, result
            done += 1

    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return done


async def worker(url: str, agents: str, namespace: str, start_at: float) -> None:
    """One throughput process: wait for the shared start time, run, print the call count."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DiscardingExporter()))
    runtime = build_runtime(url, Path(agents), namespace, tracer_provider)
    await runtime.run("echo", "uname -a")
    await asyncio.sleep(max(0.0, start_at - time.time()))
    print(await throughput(runtime, THROUGHPUT_SECONDS), flush=True)
    await runtime.aclose()
    await runtime.cache.close()
    tracer_provider.shutdown()


def processes_throughput(url: str, agents: Path, namespace: str, count: int) -> list[float]:
    start_at = time.time() + 2.0  # after every process has imported and connected
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, str(agents), namespace, str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    rates = []
    for child in children:
        out, _ = child.communicate(timeout=60)
        rates.append(int(out.split()[-1]) / THROUGHPUT_SECONDS)
    return rates


def redis_benchmark_get(url: str) -> float | None:
    """Seconds per GET measured by redis-benchmark with one client, no pipelining."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    out = subprocess.run(
        [binary, "-h", host, "-p", port, "-t", "get", "-n", "50000", "-c", "1", "-P", "1", "-q"],
        capture_output=True, text=True, timeout=120, check=False,
    ).stdout  # fmt: skip
    for line in out.replace("\r", "\n").splitlines():
        if line.startswith("GET:") and "requests per second" in line:
            return 1 / float(line.split()[1])
    return None


async def stalled(url: str, agents: Path, process: subprocess.Popen[bytes]) -> tuple[float, float]:
    """Median call time while Redis is stopped, with the breaker and without it."""
    medians = []
    for retry_after in (2.0, 0.0):
        # cache_retry_after=0 disables the breaker
        namespace = f"stall{uuid.uuid4().hex[:6]}"
        runtime = build_runtime(url, agents, namespace, cache_retry_after=retry_after)
        await runtime.run("echo", "x")
        os.kill(process.pid, signal.SIGSTOP)
        try:
            durations = [(await runtime.run("echo", "x")).duration for _ in range(20)]
        finally:
            os.kill(process.pid, signal.SIGCONT)
        medians.append(statistics.median(durations))
        await runtime.aclose()
        await runtime.cache.close()
    return medians[0], medians[1]


async def main(url: str | None) -> None:
    with tempfile.TemporaryDirectory() as directory, redis_server() as (local_url, process):
        url = url or local_url
        agents = Path(directory)
        (agents / "echo.py").write_text(ECHO_AGENT)
        namespace = f"bench{uuid.uuid4().hex[:6]}"

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(DiscardingExporter()))
        runtime = build_runtime(url, agents, namespace, tracer_provider)
        await runtime.run("echo", "uname -a")  # fill the cache
        key = runtime.cache.key("echo", "uname -a", version=runtime.registry.get("echo").version)
        client = aioredis.Redis.from_url(url)
        assert await client.get(key)

        async def cached_call() -> None:
            await runtime.run("echo", "uname -a")

        async def raw_get() -> None:
            await client.get(key)

        cached_rounds, raw_rounds = [], []
        for _ in range(3):  # interleaved, so that machine noise hits both alike
            cached_rounds.append(
                await per_call_seconds(cached_call, rounds=ROUNDS, calls_per_round=CALLS_PER_ROUND)
            )
            raw_rounds.append(
                await per_call_seconds(raw_get, rounds=ROUNDS, calls_per_round=CALLS_PER_ROUND)
            )
        cached, raw = statistics.median(cached_rounds), statistics.median(raw_rounds)
        c_get = redis_benchmark_get(url)

        one_process = await throughput(runtime, THROUGHPUT_SECONDS) / THROUGHPUT_SECONDS
        await client.aclose()
        await runtime.aclose()
        await runtime.cache.close()
        tracer_provider.shutdown()
        two_processes = processes_throughput(url, agents, namespace, 2)
        with_breaker, without_breaker = await stalled(url, agents, process)

    print(f"raw redis-py GET        : {raw * 1e6:8.1f} µs/call")
    if c_get is not None:
        print(f"redis-benchmark GET     : {c_get * 1e6:8.1f} µs/call  (C client, 1 connection)")
    print(f"cached call on Redis    : {cached * 1e6:8.1f} µs/call  ({1 / cached:,.0f} calls/s)")
    print(f"ratio cached / raw GET  : {cached / raw:8.2f}  (target <= 2)")
    print(f"throughput, 1 process   : {one_process:8,.0f} calls/s  ({CALLERS} callers)")
    print(
        f"throughput, 2 processes : {sum(two_processes):8,.0f} calls/s  "
        f"({' + '.join(f'{r:,.0f}' for r in two_processes)})"
    )
    print(f"stalled Redis, breaker  : {with_breaker * 1e3:8.2f} ms/call median (20 calls)")
    print(f"stalled Redis, no breaker: {without_breaker * 1e3:7.2f} ms/call median (20 calls)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, agents, namespace, start_at = sys.argv[2:6]
        asyncio.run(worker(url, agents, namespace, float(start_at)))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--url", help="an existing Redis (default: start redis-server)")
        asyncio.run(main(parser.parse_args().url))
