"""Cached-call cost with the collector down vs up (target ratio <= 1.1).

Two phases in separate processes, alternated three times: `up` exports over OTLP/HTTP to a
sink process that answers 200; `down` exports to a port where nothing listens. Each phase
prints its median µs per cached call; this script prints both medians and their ratio.

Run: .venv/bin/python bench/bench_export.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port, per_call_seconds

HERE = Path(__file__).resolve().parent
CALLS, ROUNDS = 2_000, 9


async def phase() -> None:
    from sel_otel import AgentRegistry, AgentRuntime, LRUMemoryCache, ResultCache, Telemetry

    telemetry = Telemetry.from_env()
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "echo.py").write_text("DESCRIPTION='e'\ndef run(q):\n    return q\n")
        registry = AgentRegistry(directory)
        registry.reload()
        runtime = AgentRuntime(
            registry,
            ResultCache(LRUMemoryCache(500)),
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
        )
        await runtime.run("echo", "uname -a")
        seconds = await per_call_seconds(
            lambda: runtime.run("echo", "uname -a"), rounds=ROUNDS, calls_per_round=CALLS
        )
        await runtime.aclose()
    telemetry.shutdown(timeout=1.0)
    print(seconds)


def run_phase(endpoint: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "1000"}
    done = subprocess.run(
        [sys.executable, __file__, "--phase"], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, str(HERE / "_sink.py"), str(sink_port)])
    try:
        time.sleep(0.5)
        up, down = [], []
        for _ in range(3):
            up.append(run_phase(f"http://127.0.0.1:{sink_port}"))
            down.append(run_phase(f"http://127.0.0.1:{free_port()}"))
    finally:
        sink.terminate()
        sink.wait()
    up_median, down_median = statistics.median(up), statistics.median(down)
    print(f"cached call, collector up  : {up_median * 1e6:7.2f} µs/call")
    print(f"cached call, collector down: {down_median * 1e6:7.2f} µs/call")
    print(f"ratio down / up            : {down_median / up_median:7.2f}  (target <= 1.1)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--phase"]:
        asyncio.run(phase())
    else:
        main()
