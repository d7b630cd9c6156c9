"""Loop-stall benchmark: two instances on one healthy Redis, each event loop stalled 0.3 s
every 2 s, must still execute each key once and never wait a lease for a lock.

Starts its own `redis-server` on a free loopback port. Each repetition runs two runtime
processes on it (the cache from `cache_from_settings`, SEL_* defaults: 0.25 s operation
timeout, 5 s lock lease, breaker retry after 2 s). In each process:
- a background task blocks the event loop with `time.sleep(STALL)` every `STALL_EVERY`
  seconds (each process from its own random phase), as a sync call in an async agent would;
- `CALLERS` callers ask for keys from a window that slides over the key space
  (`KEY_RATE` new keys a second, `WINDOW` keys live at a time), the two processes on the
  same clock: every key starts as a miss that both processes want at once;
- the agent sleeps 20-50 ms and appends its input to a log file: one line per execution.
The TTL (an hour) outlives the run: each key should run exactly once across both processes.

Reports, as median (min-max) over the repetitions: distinct keys executed, executions,
duplicate executions (executions - distinct keys; target 0 with Redis healthy), lock waits
over 1 s (target 0) and the longest lock wait, the longest call, breaker openings and cache
errors (any is a false failure here: Redis is healthy). Stops by itself in about
`REPETITIONS` x (`SECONDS` + 5) seconds.

Run: .venv/bin/python bench/bench_loop_stalls.py [--seconds 20] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import load_average, print_header, redis_server, spread
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from sel_otel import AgentRegistry, AgentRuntime, Settings
from sel_otel import _semconv as names
from sel_otel._app import cache_from_settings

STALL, STALL_EVERY = 0.3, 2.0
CALLERS = 16
KEY_RATE, WINDOW = 20.0, 20
PAUSE = 0.01  # between a caller's calls
SECONDS, REPETITIONS = 20.0, 3
AGENT = """\
import asyncio, os, zlib
DESCRIPTION = "20-50 ms of work, logged"
CACHE_TTL = 3600
TIMEOUT = 10
LOG = {log!r}
async def run(q):
    await asyncio.sleep(0.02 + zlib.crc32(q.encode()) % 31 / 1000)
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (q + "\\n").encode())
    finally:
        os.close(fd)
    return "out " + q
"""


class LockWaits(SpanProcessor):
    """The wait of every `cache lock` span."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if span.name == names.CACHE_LOCK and span.attributes:
            wait = span.attributes.get(names.SEL_CACHE_LOCK_WAIT_MS)
            if isinstance(wait, float | int):
                self.waits.append(float(wait) / 1e3)


async def child(url: str, agents: str, namespace: str, start_at: float, seconds: float) -> None:
    """One instance: callers and loop stalls until `seconds` past `start_at`; prints JSON."""
    settings = Settings(agents_dir=Path(agents), cache_url=url, cache_namespace=namespace)
    locks = LockWaits()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(locks)
    registry = AgentRegistry(Path(agents))
    registry.reload()
    cache = cache_from_settings(settings, tracer_provider=tracer_provider)
    errors: collections.Counter[str] = collections.Counter()
    on_error = cache._on_error

    def count_error(error_type: str) -> None:
        errors[error_type] += 1
        if on_error is not None:
            on_error(error_type)

    cache._on_error = count_error
    breaker = cache.storage.breaker  # type: ignore[attr-defined]
    failure = breaker.failure
    openings = 0

    def count_opening() -> None:
        nonlocal openings
        openings += 1
        failure()

    breaker.failure = count_opening
    await cache.open()
    runtime = AgentRuntime(registry, cache, settings=settings, tracer_provider=tracer_provider)
    durations: list[float] = []
    lookups: collections.Counter[str] = collections.Counter()
    stalls = 0
    await asyncio.sleep(max(0.0, start_at - time.time()))
    deadline = start_at + seconds

    async def staller() -> None:
        nonlocal stalls
        await asyncio.sleep(random.uniform(0, STALL_EVERY))
        while time.time() < deadline:
            time.sleep(STALL)  # noqa: ASYNC251 - the stall: the whole event loop waits
            stalls += 1
            await asyncio.sleep(STALL_EVERY - STALL)

    async def caller(seed: int) -> None:
        rng = random.Random(seed)
        while (now := time.time()) < deadline:
            first = int((now - start_at) * KEY_RATE)
            query = f"k{first + rng.randrange(WINDOW)}"
            result = await runtime.run("work", query)
            assert result.ok, result.error
            durations.append(result.duration)
            lookups["hit" if result.cached else "coalesced" if result.coalesced else "run"] += 1
            await asyncio.sleep(PAUSE)

    await asyncio.gather(staller(), *(caller(seed) for seed in range(CALLERS)))
    await runtime.aclose()
    await cache.close()
    tracer_provider.shutdown()
    print(json.dumps({
        "calls": len(durations),
        "longest_call": max(durations),
        "lock_waits": len(locks.waits),
        "long_lock_waits": sum(wait > 1.0 for wait in locks.waits),
        "longest_lock_wait": max(locks.waits, default=0.0),
        "openings": openings,
        "errors": dict(errors),
        "lookups": dict(lookups),
        "stalls": stalls,
    }))  # fmt: skip


def repetition(url: str, seconds: float) -> dict[str, Any]:
    """Two instances on `url` for `seconds`: their figures, summed or maxed, and the log's."""
    with tempfile.TemporaryDirectory() as directory:
        agents, log = Path(directory) / "agents", Path(directory) / "executions.log"
        agents.mkdir()
        (agents / "work.py").write_text(AGENT.format(log=str(log)))
        namespace = f"stall{uuid.uuid4().hex[:8]}"
        start_at = time.time() + 4.0  # both imported and connected by then
        args = [url, str(agents), namespace, str(start_at), str(seconds)]
        processes = [
            subprocess.Popen(
                [sys.executable, __file__, "--child", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,  # the cache's warnings: counted, not shown
                text=True,
            )
            for _ in range(2)
        ]
        results = []
        try:
            for process in processes:
                out, err = process.communicate(timeout=seconds + 60)
                if process.returncode != 0:
                    raise RuntimeError(f"instance failed:\n{err}")
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for process in processes:  # one failed or hung: the other must not outlive the run
                if process.poll() is None:
                    process.kill()
                    process.wait()
        executions = log.read_text().split() if log.exists() else []
    errors: collections.Counter[str] = collections.Counter()
    for result in results:
        errors.update(result["errors"])
    return {
        "distinct": len(set(executions)),
        "executions": len(executions),
        "duplicates": len(executions) - len(set(executions)),
        "calls": sum(r["calls"] for r in results),
        "long_lock_waits": sum(r["long_lock_waits"] for r in results),
        "longest_lock_wait": max(r["longest_lock_wait"] for r in results),
        "longest_call": max(r["longest_call"] for r in results),
        "openings": sum(r["openings"] for r in results),
        "errors": sum(errors.values()),
        "error_types": dict(errors),
        "stalls": sum(r["stalls"] for r in results),
    }


def main(seconds: float, repetitions: int) -> None:
    print_header("bench_loop_stalls: two instances on a healthy Redis, loops stalled")
    print(
        f"{CALLERS} callers per instance, a {STALL} s loop stall every {STALL_EVERY} s in "
        f"each, {KEY_RATE:.0f} new keys/s ({WINDOW} live), {seconds:.0f} s per repetition",
        flush=True,
    )
    runs = []
    with redis_server() as (url, _):
        for i in range(repetitions):
            run = repetition(url, seconds)
            runs.append(run)
            print(f"  repetition {i + 1}: {json.dumps(run)}; load average {load_average()}",
                  flush=True)  # fmt: skip
    print(f"median (min-max) of {repetitions} repetitions; load average {load_average()}")
    rows = (
        ("distinct keys executed", "distinct", 1, 0),
        ("executions", "executions", 1, 0),
        ("duplicate executions (target 0)", "duplicates", 1, 0),
        ("lock waits over 1 s (target 0)", "long_lock_waits", 1, 0),
        ("longest lock wait, ms", "longest_lock_wait", 1e3, 0),
        ("longest call, ms", "longest_call", 1e3, 0),
        ("breaker openings", "openings", 1, 0),
        ("cache errors", "errors", 1, 0),
        ("calls", "calls", 1, 0),
        ("loop stalls", "stalls", 1, 0),
    )
    for label, field, scale, digits in rows:
        print(f"  {label:32}: {spread([run[field] for run in runs]).show(scale, digits)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        url, agents, namespace, start_at, seconds = sys.argv[2:7]
        asyncio.run(child(url, agents, namespace, float(start_at), float(seconds)))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--seconds", type=float, default=SECONDS, help="per repetition")
        parser.add_argument("--repetitions", type=int, default=REPETITIONS)
        options = parser.parse_args()
        main(options.seconds, options.repetitions)
