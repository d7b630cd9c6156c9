"""Runtime benchmark: a cached call against the floor of OpenTelemetry itself, with nothing
exported and as deployed.

Each repetition runs one process per export mode, the modes alternating:
- nothing exported: spans go through the span processor of a deployment to an exporter that
  discards them; the stats reader is the only metric reader;
- as deployed: `Telemetry.from_env()` with an OTLP/HTTP endpoint on loopback (`_sink.py`, a
  process answering 200) and the periodic metric reader, as a deployment runs.

In each process, after a warm-up and the heap frozen as a started app freezes it, the kinds
of call take turns, round by round:
- floor: one SDK span plus one histogram record, with the runtime's attributes, awaited;
- cached call: `await runtime.run(...)`, a hit in the memory cache;
- cached call with the execution history on (SQLite, the default of a deployment).

Prints, as median (min-max) of the repetitions: µs per call in wall time and in CPU time (the
whole process: span export and history writing included); the ratio cached / floor (target
<= 1.25) and the runtime's own work, cached - floor (target <= 10 µs); the ratio as deployed /
nothing exported (target <= 1.3); the spans dropped as deployed (target 0); then a registry
lookup (target <= 1 µs) and the executions for 1,000 concurrent identical misses (target 1).

Run: .venv/bin/python bench/bench_runtime.py
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import (
    REPETITIONS,
    DiscardingExporter,
    Sink,
    child_env,
    interleaved,
    print_header,
    ratios,
    run_child,
    spread,
    time_kinds,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from sel_otel import (
    AgentRegistry,
    AgentRuntime,
    LRUMemoryCache,
    ResultCache,
    Settings,
    Telemetry,
    stats_reader,
)
from sel_otel import _semconv as names
from sel_otel._app import freeze_heap
from sel_otel._history_setup import history_from_settings
from sel_otel._metric_data import data_points
from sel_otel._span_processor import PrioritySpanProcessor
from sel_otel._telemetry import package_version

CALLS, ROUNDS, WARM_UP = 1_000, 20, 4_000
MODES = ("nothing exported", "as deployed")
ECHO = "DESCRIPTION = 'echo'\ndef run(q):\n    return q\n"
SLOW = (
    "import asyncio\nDESCRIPTION = 'slow'\nCALLS = [0]\n"
    "async def run(q):\n    CALLS[0] += 1\n    await asyncio.sleep(0.05)\n    return q\n"
)


def telemetry_for(mode: str) -> Telemetry:
    """The providers of `mode`: as deployed, or the same span processor and stats reader with
    nothing exported."""
    if mode == "as deployed":
        return Telemetry.from_env()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(PrioritySpanProcessor(DiscardingExporter()))
    reader = stats_reader()
    return Telemetry(tracer_provider, MeterProvider(metric_readers=[reader]), reader)


def otel_floor(telemetry: Telemetry) -> Callable[[], Awaitable[None]]:
    """What OpenTelemetry itself does for a call: the runtime's span and record, bare."""
    tracer = telemetry.tracer_provider.get_tracer(names.SCOPE_NAME, package_version())
    histogram = telemetry.meter_provider.get_meter("floor").create_histogram(
        "floor.duration", unit="s"
    )

    async def floor() -> None:
        start = time.perf_counter()
        span = tracer.start_span(
            "invoke_agent echo",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": "echo",
                "gen_ai.agent.description": "echo",
                "sel.agent.input": "uname -a",
            },
        )
        duration = time.perf_counter() - start
        span.set_attributes({"sel.cache.hit": True, "sel.agent.duration_ms": duration * 1e3})
        span.end()
        histogram.record(
            duration,
            {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "echo",
             "sel.cache.hit": True},
        )  # fmt: skip

    return floor


def dropped_spans(telemetry: Telemetry) -> tuple[int, int]:
    """Spans the span processors dropped, and all they were handed (their self-metrics)."""
    data = telemetry.stats_reader.get_metrics_data()
    counts = [
        (point.value, names.ERROR_TYPE in (point.attributes or {}))
        for point in data_points(data, "otel.sdk.processor.span.processed")
        if isinstance(point, NumberDataPoint)
    ]
    return int(sum(v for v, dropped in counts if dropped)), int(sum(v for v, _ in counts))


async def child(mode: str) -> None:
    telemetry = telemetry_for(mode)
    floor = otel_floor(telemetry)

    with tempfile.TemporaryDirectory() as directory:
        agents = Path(directory) / "agents"
        agents.mkdir()
        (agents / "echo.py").write_text(ECHO)
        settings = Settings(agents_dir=agents, data_dir=Path(directory), history=True)
        history = history_from_settings(settings, telemetry)
        assert history is not None
        history.open()
        runtimes = []
        for with_history in (False, True):
            registry = AgentRegistry(agents)
            registry.reload()
            runtimes.append(
                AgentRuntime(
                    registry,
                    ResultCache(LRUMemoryCache(500)),
                    settings=settings,
                    tracer_provider=telemetry.tracer_provider,
                    meter_provider=telemetry.meter_provider,
                    history=history if with_history else None,
                )
            )
        plain, recorded = runtimes

        async def settle() -> None:
            telemetry.tracer_provider.force_flush()
            await history.flush(30.0)

        calls: dict[str, Any] = {
            "floor": floor,
            "cached": lambda: plain.run("echo", "uname -a"),
            "history": lambda: recorded.run("echo", "uname -a"),
        }
        for call in calls.values():
            for _ in range(WARM_UP):
                await call()
        await settle()
        freeze_heap()  # as a started SelApp does
        timed = await time_kinds(calls, calls=CALLS, rounds=ROUNDS, settle=settle)
        timings = {kind: timing.to_json() for kind, timing in timed.items()}
        for runtime in runtimes:
            await runtime.aclose()
        history.close()
    telemetry.tracer_provider.force_flush()
    dropped, handled = dropped_spans(telemetry)
    telemetry.shutdown(timeout=5.0)
    print(json.dumps({"timings": timings, "dropped": dropped, "handled": handled}))


async def correctness_checks() -> tuple[float, int, int, int]:
    """A registry lookup in seconds; executions, coalesced and ok of 1,000 identical misses."""
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "slow.py").write_text(SLOW)
        registry = AgentRegistry(directory)
        registry.reload()
        runtime = AgentRuntime(registry, ResultCache(LRUMemoryCache(500)))
        lookup = min(timeit.repeat(lambda: registry.get("slow"), number=100_000, repeat=7))
        results = await asyncio.gather(*(runtime.run("slow", "same") for _ in range(1000)))
        executions = registry.agents["slow"].function.__globals__["CALLS"][0]
        await runtime.aclose()
    coalesced, ok = sum(r.coalesced for r in results), sum(r.ok for r in results)
    return lookup / 100_000, executions, coalesced, ok


def main() -> None:
    print_header("bench_runtime: cached call vs the OpenTelemetry floor")
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with Sink() as sink:
        for mode in interleaved(MODES, REPETITIONS):
            env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=sink.url)
            results[mode].append(run_child(Path(__file__), [mode], env))

    def series(mode: str, kind: str, clock: str) -> list[float]:
        return [r["timings"][kind][clock] for r in results[mode]]

    print(f"median (min-max) of {REPETITIONS} repetitions, µs per call")
    for mode in MODES:
        print(f"{mode}:")
        for kind, label in (("floor", "floor (span + record)"), ("cached", "cached call"),
                            ("history", "cached call, history on")):  # fmt: skip
            wall, cpu = spread(series(mode, kind, "wall")), spread(series(mode, kind, "cpu"))
            print(f"  {label:26}: wall {wall.show(1e6)}  cpu {cpu.show(1e6)}")
        for clock in ("wall", "cpu"):
            cached, floor = series(mode, "cached", clock), series(mode, "floor", clock)
            own = spread([c - f for c, f in zip(cached, floor, strict=True)])
            print(
                f"  ratio cached / floor, {clock:4}: {ratios(cached, floor).show()}  "
                f"(target <= 1.25); runtime's own work {own.show(1e6)} µs (target <= 10)"
            )
        history = spread(
            [h - c for h, c in zip(series(mode, "history", "cpu"), series(mode, "cached", "cpu"),
                                   strict=True)]
        )  # fmt: skip
        print(f"  execution history, cpu    : +{history.show(1e6)} µs per call")
    for clock in ("wall", "cpu"):
        deployed = series("as deployed", "cached", clock)
        bare = series("nothing exported", "cached", clock)
        print(
            f"cached call as deployed / nothing exported, {clock:4}: "
            f"{ratios(deployed, bare).show()}  (target <= 1.3)"
        )
    dropped = [r["dropped"] for r in results["as deployed"]]
    handled = [r["handled"] for r in results["as deployed"]]
    print(
        f"spans dropped as deployed: {sum(dropped)} of {sum(handled)} handed to the processor "
        f"over {REPETITIONS} runs (target 0); per run {dropped}"
    )
    lookup, executions, coalesced, ok = asyncio.run(correctness_checks())
    print(f"registry lookup: {lookup * 1e9:.0f} ns  (target <= 1000)")
    print(f"1,000 concurrent misses: {executions} execution(s), {coalesced} coalesced, {ok} ok")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(child(sys.argv[2]))
    else:
        main()
