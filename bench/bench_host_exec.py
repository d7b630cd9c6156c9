"""host_exec round trip: agent -> httpx -> host-exec service -> `uname -a` process, on loopback.

Each repetition runs three client processes, alternating, each with two host-exec services
of its own (called in turn, as a deployment's several users would):
- full tracing: `Telemetry.from_env()` exporting over OTLP/HTTP to `_sink.py`, the httpx
  instrumentation's client span included, the services exporting there too;
- own spans only: the same, the httpx instrumentation suppressed;
- SDK disabled: the same processes with `OTEL_SDK_DISABLED=true`, services included.

Every call misses the cache. Prints the median round trip (target <= 10 ms) and the client
process's CPU time per call (all its threads over the calls, span export included), as
median (min-max) of the repetitions, and the ratios own spans / SDK disabled (target <=
1.10) and full tracing / SDK disabled (target <= 1.25) of paired repetitions.

Run: .venv/bin/python bench/bench_host_exec.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

from _common import (
    REPETITIONS,
    Sink,
    child_env,
    interleaved,
    print_header,
    ratios,
    run_child,
    spread,
)
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.utils import suppress_http_instrumentation

from sel_otel import (
    AgentRegistry,
    AgentRuntime,
    LRUMemoryCache,
    ResultCache,
    Settings,
    Telemetry,
)
from sel_otel.hostexec._local import LocalHostExec

ROOT = Path(__file__).resolve().parent.parent
CALLS, WARM_UP = 400, 20
PROCESSES = ("full", "own", "disabled")


def runtime_for(telemetry: Telemetry, service: LocalHostExec) -> AgentRuntime:
    """A runtime whose host_exec agent calls `service`, as the CLI wires the embedded one."""
    registry = AgentRegistry(ROOT / "agents")
    registry.reload()
    settings = Settings(host_exec_url=service.url, host_exec_token_file=service.token_file)
    return AgentRuntime(
        registry,
        ResultCache(LRUMemoryCache(500)),
        settings=settings,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    )


async def child(process: str) -> None:
    telemetry = Telemetry.from_env()
    # As the CLI does: the httpx instrumentation reports to the global providers.
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    walls: list[float] = []
    async with LocalHostExec() as first, LocalHostExec() as second:
        runtimes = [runtime_for(telemetry, service) for service in (first, second)]
        own = suppress_http_instrumentation() if process == "own" else contextlib.nullcontext()
        with own:
            for i in range(WARM_UP + CALLS):
                if i == WARM_UP:
                    telemetry.tracer_provider.force_flush()
                    cpu_start = time.process_time()
                runtime = runtimes[i % 2]
                await runtime.cache.invalidate("host_exec")  # every call goes to the host
                start = time.perf_counter()
                result = await runtime.run("host_exec", "uname -a")
                walls.append(time.perf_counter() - start)
                assert result.ok, result.error
        telemetry.tracer_provider.force_flush()
        cpu = (time.process_time() - cpu_start) / CALLS
        for runtime in runtimes:
            await runtime.aclose()
    telemetry.shutdown(timeout=2.0)
    print(json.dumps({"wall": statistics.median(walls[WARM_UP:]), "cpu": cpu}))


def main() -> None:
    print_header("bench_host_exec: uname -a through the host-exec service")
    results: dict[str, list[dict[str, float]]] = {process: [] for process in PROCESSES}
    with Sink() as sink:
        for process in interleaved(PROCESSES, REPETITIONS):
            env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=sink.url)
            if process == "disabled":
                env["OTEL_SDK_DISABLED"] = "true"
            results[process].append(run_child(Path(__file__), [process], env))

    def series(process: str, clock: str) -> list[float]:
        return [r[clock] for r in results[process]]

    print(f"median (min-max) of {REPETITIONS} repetitions; {CALLS} calls in each")
    for process, label in (("full", "full tracing"), ("own", "own spans only"),
                           ("disabled", "SDK disabled")):  # fmt: skip
        wall, cpu = spread(series(process, "wall")), spread(series(process, "cpu"))
        print(f"{label:15}: round trip {wall.show(1e3)} ms (target <= 10)  "
              f"client cpu {cpu.show(1e3, 3)} ms")  # fmt: skip
    for clock in ("wall", "cpu"):
        disabled = series("disabled", clock)
        own, full = ratios(series("own", clock), disabled), ratios(series("full", clock), disabled)
        print(
            f"{clock:4}: own spans / SDK disabled {own.show(1, 3)} (target <= 1.10); "
            f"full / SDK disabled {full.show(1, 3)} (target <= 1.25)"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(child(sys.argv[2]))
    else:
        main()
