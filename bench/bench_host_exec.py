"""host_exec round trip: agent → httpx → host-exec service → `uname -a` process, on loopback.

Traced and untraced calls are interleaved in one process, so that machine noise hits both
alike. Two local host-exec services run side by side: one exports its spans over OTLP to a
sink process, one has no exporter. A traced call goes through a runtime with SDK providers
(BatchSpanProcessor, OTLP export to the sink), the instrumented httpx client and the traced
service; an untraced call through a runtime with no-op providers, with the httpx
instrumentation suppressed, to the untraced service. Every call misses the cache.

Prints the median round trip of each (target <= 10 ms) and their ratio (target <= 1.05).

Run: .venv/bin/python bench/bench_host_exec.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import free_port
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.utils import suppress_http_instrumentation

from sel_otel import AgentRegistry, AgentRuntime, LRUMemoryCache, ResultCache, Telemetry
from sel_otel.hostexec import LocalHostExec

ROOT = Path(__file__).resolve().parent.parent
PAIRS, WARM_UP = 600, 30


def runtime(tracer_provider: trace.TracerProvider, telemetry: Telemetry) -> AgentRuntime:
    registry = AgentRegistry(ROOT / "agents")
    registry.reload()
    return AgentRuntime(
        registry,
        ResultCache(LRUMemoryCache(500)),
        tracer_provider=tracer_provider,
        meter_provider=telemetry.meter_provider,
    )


async def timed_call(agent_runtime: AgentRuntime, url: str, token: str) -> float:
    os.environ["HOST_EXEC_URL"], os.environ["HOST_EXEC_TOKEN"] = url, token
    await agent_runtime.cache.invalidate("host_exec")  # every call goes to the host
    start = time.perf_counter()
    result = await agent_runtime.run("host_exec", "uname -a")
    elapsed = time.perf_counter() - start
    assert result.ok, result.error
    return elapsed


async def main(sink_port: int) -> None:
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
    telemetry = Telemetry.from_env()
    # As the CLI does: the httpx instrumentation reports to the global providers.
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    traced_runtime = runtime(telemetry.tracer_provider, telemetry)
    plain_runtime = runtime(trace.NoOpTracerProvider(), telemetry)
    untraced_service = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    async with LocalHostExec() as traced, LocalHostExec(settings=untraced_service) as plain:
        traced_times, plain_times = [], []
        for i in range(PAIRS + WARM_UP):
            traced_time = await timed_call(traced_runtime, traced.url, traced.token)
            with suppress_http_instrumentation():
                plain_time = await timed_call(plain_runtime, plain.url, plain.token)
            if i >= WARM_UP:  # connection set-up, imports
                traced_times.append(traced_time)
                plain_times.append(plain_time)
    for agent_runtime in (traced_runtime, plain_runtime):
        await agent_runtime.aclose()
    telemetry.shutdown(timeout=1.0)
    traced_median, plain_median = statistics.median(traced_times), statistics.median(plain_times)
    print(f"uname -a round trip, traced  : {traced_median * 1e3:6.2f} ms  (target <= 10 ms)")
    print(f"uname -a round trip, untraced: {plain_median * 1e3:6.2f} ms")
    print(f"tracing overhead ratio       : {traced_median / plain_median:6.3f}  (target <= 1.05)")


if __name__ == "__main__":
    port = free_port()
    sink = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_sink.py"), str(port)])
    try:
        time.sleep(0.5)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main(port))
    finally:
        sink.terminate()
        sink.wait()
