"""host_exec round trip: agent → httpx → host-exec service → `uname -a` process, on loopback.

Two phases in separate processes, alternated five times, each with its own local host-exec
service: `traced` (SDK providers in the bot process, httpx instrumentation, and the service
exporting its spans over OTLP to a sink process) and `plain` (no providers anywhere). Each
phase prints the median milliseconds of uncached `uname -a` calls through the runtime; this
script prints the medians and the tracing overhead ratio (target: traced/plain <= 1.05, and
round trip <= 10 ms).

Run: .venv/bin/python bench/bench_host_exec.py
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLS = 300
ROUNDS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def phase() -> None:
    from opentelemetry import metrics, trace

    from sel_otel import AgentRegistry, AgentRuntime, LRUMemoryCache, ResultCache, Telemetry
    from sel_otel.hostexec import LocalHostExec

    telemetry = Telemetry.from_env()
    traced = bool(telemetry.exporters)
    if traced:  # as the CLI does: the httpx instrumentation reports to the global provider
        trace.set_tracer_provider(telemetry.tracer_provider)
        metrics.set_meter_provider(telemetry.meter_provider)
    registry = AgentRegistry(ROOT / "agents")
    registry.reload()
    runtime = AgentRuntime(
        registry,
        ResultCache(LRUMemoryCache(500)),
        tracer_provider=telemetry.tracer_provider if traced else trace.NoOpTracerProvider(),
        meter_provider=telemetry.meter_provider,
    )
    async with LocalHostExec() as service:
        os.environ["HOST_EXEC_URL"], os.environ["HOST_EXEC_TOKEN"] = service.url, service.token
        timings = []
        for i in range(CALLS + 20):
            await runtime.cache.invalidate("host_exec")  # every call goes to the host
            start = time.perf_counter()
            result = await runtime.run("host_exec", "uname -a")
            if i >= 20:  # warm-up: connection set-up, imports
                timings.append(time.perf_counter() - start)
            assert result.ok, result.error
    await runtime.aclose()
    telemetry.shutdown(timeout=1.0)
    print(statistics.median(timings))


def run_phase(traced: bool, sink_port: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HOST_EXEC_"))}
    if traced:
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}"}
    done = subprocess.run(
        [sys.executable, __file__, "--phase"], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_sink.py"), str(sink_port)])
    try:
        time.sleep(0.5)
        traced, plain = [], []
        for _ in range(ROUNDS):
            traced.append(run_phase(True, sink_port))
            plain.append(run_phase(False, sink_port))
    finally:
        sink.terminate()
        sink.wait()
    traced_median, plain_median = statistics.median(traced), statistics.median(plain)
    print(f"uname -a round trip, traced  : {traced_median * 1e3:6.2f} ms  (target <= 10 ms)")
    print(f"uname -a round trip, untraced: {plain_median * 1e3:6.2f} ms")
    print(f"tracing overhead ratio       : {traced_median / plain_median:6.3f}  (target <= 1.05)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--phase"]:
        asyncio.run(phase())
    else:
        main()
