"""host_exec round trip: agent → httpx → host-exec service → `uname -a` process, on loopback.

Three kinds of call are interleaved in one process, in an order that rotates every round, so
that machine noise and order effects hit all alike; each kind has a service process of its
own. Every call misses the cache.

- traced: a runtime with SDK providers (BatchSpanProcessor, OTLP export to a sink process),
  the instrumented httpx client, and a host-exec service that exports its spans to the sink;
- own spans: the same, with the httpx instrumentation suppressed: the agent span and the
  service's spans without the instrumentation's client span;
- untraced: a runtime with no-op providers, the httpx instrumentation suppressed, and a
  service with no exporter.

Prints the median round trip of each (target <= 10 ms), the tracing overhead ratio traced /
untraced (target <= 1.05) and its cost per call, and the client process's median CPU time
per call of each (all its threads, so span export is included), which shows what the httpx
instrumentation costs on its own.

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
from dataclasses import dataclass, field
from pathlib import Path

from _common import free_port
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.utils import suppress_http_instrumentation

from sel_otel import AgentRegistry, AgentRuntime, LRUMemoryCache, ResultCache, Telemetry
from sel_otel.hostexec import LocalHostExec

ROOT = Path(__file__).resolve().parent.parent
ROUNDS, WARM_UP = 600, 30


@dataclass
class Variant:
    """One kind of call and what its calls measured."""

    runtime: AgentRuntime
    service: LocalHostExec
    httpx_traced: bool
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    async def call(self, record: bool) -> None:
        os.environ["HOST_EXEC_URL"] = self.service.url
        os.environ["HOST_EXEC_TOKEN"] = self.service.token
        await self.runtime.cache.invalidate("host_exec")  # every call goes to the host
        instrumentation = (
            contextlib.nullcontext() if self.httpx_traced else suppress_http_instrumentation()
        )
        with instrumentation:
            cpu_start, start = time.process_time(), time.perf_counter()
            result = await self.runtime.run("host_exec", "uname -a")
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        assert result.ok, result.error
        if record:
            self.wall.append(wall)
            self.cpu.append(cpu)


def runtime(tracer_provider: trace.TracerProvider, telemetry: Telemetry) -> AgentRuntime:
    registry = AgentRegistry(ROOT / "agents")
    registry.reload()
    return AgentRuntime(
        registry,
        ResultCache(LRUMemoryCache(500)),
        tracer_provider=tracer_provider,
        meter_provider=telemetry.meter_provider,
    )


def ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1e3


async def main(sink_port: int) -> None:
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
    telemetry = Telemetry.from_env()
    # As the CLI does: the httpx instrumentation reports to the global providers.
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    traced_runtime = runtime(telemetry.tracer_provider, telemetry)
    plain_runtime = runtime(trace.NoOpTracerProvider(), telemetry)
    untraced_service = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    # A service each, so that each sits idle as long between its calls as the others do.
    async with (
        LocalHostExec() as traced,
        LocalHostExec() as own,
        LocalHostExec(settings=untraced_service) as plain,
    ):
        variants = [
            Variant(traced_runtime, traced, httpx_traced=True),
            Variant(traced_runtime, own, httpx_traced=False),
            Variant(plain_runtime, plain, httpx_traced=False),
        ]
        for i in range(ROUNDS + WARM_UP):
            for variant in variants[i % 3 :] + variants[: i % 3]:
                await variant.call(record=i >= WARM_UP)  # warm-up: connections, imports
    for agent_runtime in (traced_runtime, plain_runtime):
        await agent_runtime.aclose()
    telemetry.shutdown(timeout=1.0)
    full, own, untraced = variants
    print(f"uname -a round trip, traced    : {ms(full.wall):6.2f} ms  (target <= 10 ms)")
    print(f"uname -a round trip, own spans : {ms(own.wall):6.2f} ms  (httpx instrumentation off)")
    print(f"uname -a round trip, untraced  : {ms(untraced.wall):6.2f} ms")
    ratio = statistics.median(full.wall) / statistics.median(untraced.wall)
    own_ratio = statistics.median(own.wall) / statistics.median(untraced.wall)
    print(f"tracing overhead ratio         : {ratio:6.3f}  (target <= 1.05)")
    print(f"  per call                     : {ms(full.wall) - ms(untraced.wall):6.2f} ms")
    print(f"  without the httpx span       : {own_ratio:6.3f}")
    print(
        f"client CPU per call            : traced {ms(full.cpu):.3f} ms, own spans "
        f"{ms(own.cpu):.3f} ms, untraced {ms(untraced.cpu):.3f} ms"
    )
    print(f"  httpx instrumentation        : {ms(full.cpu) - ms(own.cpu):.3f} ms per call")


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
