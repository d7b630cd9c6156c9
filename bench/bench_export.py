"""Cached-call cost with the collector down, against nothing exported and the collector up.

Each repetition runs one process per mode, the modes alternating:
- nothing exported: spans go through the span processor to an exporter that discards them;
- collector up: `Telemetry.from_env()` exporting over OTLP/HTTP to `_sink.py` on loopback;
- collector down: the same, to a loopback port where nothing listens.

Metrics are exported every second in the last two, so their export runs during the
measurement. Each process freezes its heap after a short warm-up, as a started app does,
then times two windows of 20,000 calls: the first (with the collector down, the span queue
fills meanwhile: the start of an outage) and the next (steady: the queue full, each new span
dropped as it ends). Prints µs per cached call (wall and whole-process CPU) as median
(min-max) of the repetitions, and the ratios down / nothing exported (target <= 1.1), up /
nothing exported and down / up, of paired repetitions.

Run: .venv/bin/python bench/bench_export.py
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    REPETITIONS,
    Sink,
    child_env,
    free_port,
    interleaved,
    print_header,
    ratios,
    run_child,
    spread,
    time_calls,
)
from bench_runtime import ECHO, telemetry_for

from sel_otel import AgentRegistry, AgentRuntime, LRUMemoryCache, ResultCache
from sel_otel._app import freeze_heap

CALLS, ROUNDS, WARM_UP = 2_000, 10, 2_000
MODES = ("nothing exported", "collector up", "collector down")
WINDOWS = ("first 20,000 calls", "next 20,000 calls")


async def child(mode: str) -> None:
    telemetry = telemetry_for("nothing exported" if mode == MODES[0] else "as deployed")
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "echo.py").write_text(ECHO)
        registry = AgentRegistry(directory)
        registry.reload()
        runtime = AgentRuntime(
            registry,
            ResultCache(LRUMemoryCache(500)),
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
        )
        for _ in range(WARM_UP):
            await runtime.run("echo", "uname -a")
        freeze_heap()  # as a started SelApp does
        # What the calls left queued is exported within the CPU measurement; not with the
        # collector down, where a flush would only wait for the export to give up.
        settle = None if mode == MODES[2] else telemetry.tracer_provider.force_flush
        timings = {}
        for window in WINDOWS:
            timing = await time_calls(
                lambda: runtime.run("echo", "uname -a"), calls=CALLS, rounds=ROUNDS, settle=settle
            )
            timings[window] = timing.to_json()
        await runtime.aclose()
    telemetry.shutdown(timeout=1.0)
    print(json.dumps(timings))


def main() -> None:
    print_header("bench_export: cached call, collector down vs up vs nothing exported")
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with Sink() as sink:
        endpoints = {
            MODES[0]: sink.url,  # unused
            MODES[1]: sink.url,
            MODES[2]: f"http://127.0.0.1:{free_port()}",
        }
        for mode in interleaved(MODES, REPETITIONS):
            env = child_env(
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoints[mode], OTEL_METRIC_EXPORT_INTERVAL="1000"
            )
            results[mode].append(run_child(Path(__file__), [mode], env))

    print(f"median (min-max) of {REPETITIONS} repetitions")
    for window in WINDOWS:

        def series(mode: str, clock: str) -> list[float]:
            return [r[window][clock] for r in results[mode]]  # noqa: B023

        print(f"{window}:")
        for mode in MODES:
            wall, cpu = spread(series(mode, "wall")), spread(series(mode, "cpu"))
            print(f"  cached call, {mode:16}: wall {wall.show(1e6)} µs  cpu {cpu.show(1e6)} µs")
        for clock in ("wall", "cpu"):
            nothing, up, down = (series(mode, clock) for mode in MODES)
            print(
                f"  {clock:4}: down / nothing exported {ratios(down, nothing).show()} "
                f"(target <= 1.1); up / nothing exported {ratios(up, nothing).show()}; "
                f"down / up {ratios(down, up).show()}"
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(child(sys.argv[2]))
    else:
        main()
