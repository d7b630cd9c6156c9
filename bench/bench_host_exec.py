"""host_exec round trip: agent -> httpx -> host-exec service -> `uname -a` process, on loopback.

Each repetition runs three client processes side by side, each with two host-exec services
of its own (called in turn, as a deployment's several users would):
- full tracing: `Telemetry.from_env()` exporting over OTLP/HTTP to `_sink.py`, the httpx
  instrumentation's client span included, the services exporting there too;
- own spans only: the same, the httpx instrumentation suppressed;
- SDK disabled: the same processes with `OTEL_SDK_DISABLED=true`, services included.

The processes take turns of five calls, the order rotating, so that all three are measured
under the same load: on a shared machine the load changes from second to second, and
processes measured one after the other differed by more than the telemetry costs. (CPU
time per call is somewhat higher than in a process running alone: each turn starts with
caches the other processes have used, alike for all three.)

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
import subprocess
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
#: Calls a process makes in a row, its turn.
TURN = 5
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
    """One client process: warms up, says `ready`, then makes one call for each `call` line
    on its input (printing its round trip in seconds) until `done` (printing its CPU time
    per call, the export of its last spans included)."""
    telemetry = Telemetry.from_env()
    # As the CLI does: the httpx instrumentation reports to the global providers.
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    calls = 0
    async with LocalHostExec() as first, LocalHostExec() as second:
        runtimes = [runtime_for(telemetry, service) for service in (first, second)]
        own = suppress_http_instrumentation() if process == "own" else contextlib.nullcontext()
        with own:
            for i in range(WARM_UP):
                await call(runtimes[i % 2])
            telemetry.tracer_provider.force_flush()
            print("ready", flush=True)
            cpu_start = time.process_time()
            # Blocking reads: while the other processes take their turns, this one sleeps.
            while sys.stdin.readline().strip() == "call":
                wall = await call(runtimes[calls % 2])
                calls += 1
                print(wall, flush=True)
        telemetry.tracer_provider.force_flush()
        cpu = (time.process_time() - cpu_start) / calls
        for runtime in runtimes:
            await runtime.aclose()
    telemetry.shutdown(timeout=2.0)
    print(json.dumps({"cpu": cpu}), flush=True)


async def call(runtime: AgentRuntime) -> float:
    """`uname -a` through the host (the cached result dropped first): its round trip."""
    await runtime.cache.invalidate("host_exec")
    start = time.perf_counter()
    result = await runtime.run("host_exec", "uname -a")
    wall = time.perf_counter() - start
    assert result.ok, result.error
    return wall


class Client:
    """A `child` process, driven one call at a time."""

    def __init__(self, process: str, sink: Sink) -> None:
        env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=sink.url)
        if process == "disabled":
            env["OTEL_SDK_DISABLED"] = "true"
        self.walls: list[float] = []
        self._process = subprocess.Popen(
            [sys.executable, __file__, "--child", process],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _line(self) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"a client process exited with {self._process.wait()}")
        return line.strip()

    def _send(self, command: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()

    def ready(self) -> None:
        while self._line() != "ready":
            pass

    def call(self) -> None:
        self._send("call")
        self.walls.append(float(self._line()))

    def done(self) -> dict[str, float]:
        """The median round trip and the CPU time per call."""
        self._send("done")
        result: dict[str, float] = json.loads(self._line())
        self._process.wait()
        return {"wall": statistics.median(self.walls), **result}


def repetition(sink: Sink) -> dict[str, dict[str, float]]:
    """The three processes side by side, taking turns of `TURN` calls (the order rotating), so
    that each is measured under the same load as the others."""
    clients = {process: Client(process, sink) for process in PROCESSES}
    for client in clients.values():
        client.ready()
    for order in interleaved(PROCESSES, CALLS // TURN):
        for _ in range(TURN):
            clients[order].call()
    return {process: client.done() for process, client in clients.items()}


def main() -> None:
    print_header("bench_host_exec: uname -a through the host-exec service")
    results: dict[str, list[dict[str, float]]] = {process: [] for process in PROCESSES}
    with Sink() as sink:
        for _ in range(REPETITIONS):
            for process, result in repetition(sink).items():
                results[process].append(result)

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
