"""What opentelemetry-instrumentation-httpx costs per request, apart from everything else.

One process sends `GET /healthz` to a local host-exec service (no exporter) with three
`httpx.AsyncClient`s, interleaved: not instrumented; instrumented with a no-op tracer
provider (the instrumentation's own work when nothing is recorded); instrumented with an SDK
tracer provider whose BatchSpanProcessor discards the spans (recording, without export).
Meter providers are no-op alike. Prints the median client CPU time per request of each.

Run: .venv/bin/python bench/bench_httpx_instrumentation.py
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
from _common import DiscardingExporter
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from sel_otel.hostexec._local import LocalHostExec

REQUESTS, WARM_UP = 3000, 200


async def cpu_per_request(client: httpx.AsyncClient, url: str) -> float:
    start = time.process_time()
    response = await client.get(url)
    elapsed = time.process_time() - start
    response.raise_for_status()
    return elapsed


async def main() -> None:
    recording = TracerProvider()
    recording.add_span_processor(BatchSpanProcessor(DiscardingExporter()))
    no_meter = metrics.NoOpMeterProvider()
    clients = {name: httpx.AsyncClient() for name in ("plain", "no-op tracer", "recording")}
    HTTPXClientInstrumentor.instrument_client(
        clients["no-op tracer"],
        tracer_provider=trace.NoOpTracerProvider(),
        meter_provider=no_meter,
    )
    HTTPXClientInstrumentor.instrument_client(
        clients["recording"], tracer_provider=recording, meter_provider=no_meter
    )
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    async with LocalHostExec(settings={"OTEL_TRACES_EXPORTER": "none"}) as service:
        url = f"{service.url}/healthz"
        for i in range(REQUESTS + WARM_UP):
            for name, client in clients.items():
                elapsed = await cpu_per_request(client, url)
                if i >= WARM_UP:
                    cpu[name].append(elapsed)
    for client in clients.values():
        await client.aclose()
    recording.shutdown()
    plain = statistics.median(cpu["plain"])
    for name, timings in cpu.items():
        median = statistics.median(timings)
        print(
            f"client CPU per request, {name:12}: {median * 1e6:6.0f} µs"
            f"  (+{(median - plain) * 1e6:4.0f} µs)"
        )


if __name__ == "__main__":
    asyncio.run(main())
