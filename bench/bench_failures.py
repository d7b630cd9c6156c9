"""Failure benchmark: event-loop time of a failed agent call, alone and shared.

In a process of its own per repetition (a TracerProvider with a batch processor and a
discarding exporter, every span sampled; the stats reader; the memory cache), it measures
the CPU time of the event loop's thread:

- per call, for sequential calls of an async agent that returns (the reference) and of one
  that raises (each call a failure of its own);
- for one failure shared by 1,000 concurrent callers (and one success shared alike): from
  the moment the agent is let go to the moment every caller has its result, in all and
  per caller.

Target: a failed call <= 0.3 ms, flat in the number of callers.

Run: .venv/bin/python bench/bench_failures.py [--baseline PATH]
`--baseline` names another checkout (`git worktree add /tmp/old HEAD~3`, say) whose
`sel_otel` is measured the same way, interleaved with this one's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    REPETITIONS,
    DiscardingExporter,
    checkouts,
    child_env,
    interleaved,
    load_average,
    print_header,
    run_child,
    spread,
)

SEQUENTIAL = 300
SHARED = 1000

AGENTS = {
    "fine": (
        "import asyncio\nDESCRIPTION = 'returns'\nCACHEABLE = False\nGATE = asyncio.Event()\n"
        "async def run(q):\n    if q == 'shared':\n        await GATE.wait()\n    return q\n"
    ),
    "failing": (
        "import asyncio\nDESCRIPTION = 'raises'\nGATE = asyncio.Event()\n"
        "async def run(q):\n    if q == 'shared':\n        await GATE.wait()\n"
        "    raise ValueError(f'cannot handle {q}')\n"
    ),
}


async def child() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from sel_otel import AgentRegistry, AgentRuntime, LRUMemoryCache, ResultCache, stats_reader

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DiscardingExporter()))
    meter_provider = MeterProvider(metric_readers=[stats_reader()])
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory:
        for name, source in AGENTS.items():
            (Path(directory) / f"{name}.py").write_text(source)
        registry = AgentRegistry(directory)
        registry.reload()
        runtime = AgentRuntime(
            registry,
            ResultCache(LRUMemoryCache(500)),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        for agent in AGENTS:  # warm up: imports, caches of the first call
            for i in range(20):
                await runtime.run(agent, f"warm {i}")
        for agent in AGENTS:
            start = time.thread_time()
            for i in range(SEQUENTIAL):
                result = await runtime.run(agent, f"input {i}")
            figures[f"{agent} alone"] = (time.thread_time() - start) / SEQUENTIAL
            assert result.ok is (agent == "fine"), result
        for agent in AGENTS:
            gate: asyncio.Event = registry.get(agent).function.__globals__["GATE"]
            calls = [asyncio.create_task(runtime.run(agent, "shared")) for _ in range(SHARED)]
            for _ in range(3):  # every call reaches the one execution and waits on it
                await asyncio.sleep(0)
            start = time.thread_time()
            gate.set()
            results = await asyncio.gather(*calls)
            figures[f"{agent} shared"] = time.thread_time() - start
            assert all(r.ok is (agent == "fine") for r in results)
        await runtime.aclose()
    tracer_provider.shutdown()
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure alike")
    parser.add_argument("--repetitions", type=int, default=REPETITIONS)
    args = parser.parse_args()
    print_header("bench_failures: event-loop CPU time of failed agent calls")
    compared = checkouts(args.baseline)
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in compared}
    for variant in interleaved(list(compared), args.repetitions):
        env = child_env(PYTHONPATH=str(compared[variant]))
        runs[variant].append(run_child(Path(__file__), [], env))

    def series(variant: str, figure: str, scale: float = 1.0) -> Any:
        return spread([run[figure] * scale for run in runs[variant]])

    print(f"median (min-max) of {args.repetitions} repetitions, ms of the loop's CPU time")
    for variant in compared:
        print(f"{variant} ({compared[variant]}):")
        print(
            f"  success, per call                  : {series(variant, 'fine alone').show(1e3, 3)}"
        )
        print(
            f"  failure, per call (1 caller)       : "
            f"{series(variant, 'failing alone').show(1e3, 3)}  (target <= 0.3)"
        )
        print(
            f"  success shared by {SHARED:,} callers : "
            f"{series(variant, 'fine shared').show(1e3, 1)} in all, "
            f"{series(variant, 'fine shared', 1 / SHARED).show(1e3, 3)} per caller"
        )
        print(
            f"  failure shared by {SHARED:,} callers : "
            f"{series(variant, 'failing shared').show(1e3, 1)} in all, "
            f"{series(variant, 'failing shared', 1 / SHARED).show(1e3, 3)} per caller"
        )
    print(f"at the end: load average {load_average()} (1, 5, 15 min)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(child())
    else:
        main()
