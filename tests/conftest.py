"""Fixtures shared by the test suite: in-memory telemetry and agent directories."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sel_otel import (
    AgentRegistry,
    AgentRuntime,
    LRUMemoryCache,
    ResultCache,
    Settings,
    Telemetry,
    stats_reader,
)
from sel_otel._app import cache_from_settings
from sel_otel._metric_data import data_points

pytest_plugins = ["tests.otlp_receiver", "tests.stats_instances"]  # their fixtures, for every test

ROOT = Path(__file__).resolve().parent.parent
#: The `sel-otel` command, run from the source tree.
CLI = [sys.executable, "-m", "sel_otel"]


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cli_environment(**overrides: str) -> dict[str, str]:
    """This process's environment without its OTEL_*, SEL_* and HOST_EXEC_* settings, with the
    repository's agents, then `overrides`: what a `sel-otel` process under test starts with."""
    own = ("OTEL_", "SEL_", "HOST_EXEC_")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    return environment | {"SEL_AGENTS_DIR": str(ROOT / "agents")} | overrides


class TelemetryFixture:
    """Providers of the test's own, with an in-memory span exporter and metric reader."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader: InMemoryMetricReader = stats_reader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self, name: str | None = None) -> list:  # type: ignore[type-arg]
        spans = self.spans.get_finished_spans()
        return [s for s in spans if name is None or s.name == name]

    def points(self, metric_name: str) -> list[Any]:
        return list(data_points(self.reader.get_metrics_data(), metric_name))


@pytest.fixture(autouse=True)
def _private_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test, and every process it starts, keeps its data (the execution history) in a
    directory of its own, never in the user's."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process's environment without the OTEL_* variables of whoever runs the tests, for
    the providers `Telemetry.from_env` builds: a test sets what it needs."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    return monkeypatch


ECHO_AGENT = "DESCRIPTION = 'echo'\ndef run(q):\n    return q\n"


def process_runtime(
    agents: Path,
    telemetry: Telemetry,
    sources: Mapping[str, str] | None = None,
    *,
    cache_entries: int = 10,
) -> AgentRuntime:
    """A runtime reporting to a process's `telemetry`, over agents written into `agents` from
    `sources` (name to code; an echo agent by default), with a memory cache."""
    for name, source in (sources or {"echo": ECHO_AGENT}).items():
        (agents / f"{name}.py").write_text(source)
    registry = AgentRegistry(agents)
    registry.reload()
    return AgentRuntime(
        registry,
        ResultCache(LRUMemoryCache(cache_entries)),
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    )


@pytest.fixture
def telemetry() -> Iterator[TelemetryFixture]:
    fixture = TelemetryFixture()
    yield fixture
    fixture.tracer_provider.shutdown()
    fixture.meter_provider.shutdown()


AgentWriter = Callable[[str, str], Path]


@pytest.fixture
def agents_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "agents"
    directory.mkdir()
    return directory


@pytest.fixture
def write_agent(agents_dir: Path) -> AgentWriter:
    """Write an agent module `name` with the given (dedented) source into the agents dir."""

    def write(name: str, source: str) -> Path:
        path = agents_dir / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return path

    return write


RuntimeFactory = Callable[..., AgentRuntime]


class Counting:
    """A computation standing in for an agent, counting its executions."""

    def __init__(self, output: str = "out", delay: float = 0.0) -> None:
        self.output, self.delay, self.calls = output, delay, 0

    async def __call__(self) -> str:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return self.output


class Listing:
    """A directory listing standing in for an agent: it reads the files when it starts and
    answers `delay` seconds later, so that a change in between makes its answer stale."""

    def __init__(self, *files: str, delay: float) -> None:
        self.files, self.delay = list(files), delay
        self.started = asyncio.Event()

    async def __call__(self) -> str:
        snapshot = f"files: {self.files}"
        self.started.set()
        await asyncio.sleep(self.delay)
        return snapshot


@pytest.fixture
async def make_runtime(
    agents_dir: Path, telemetry: TelemetryFixture
) -> AsyncIterator[RuntimeFactory]:
    """Build a runtime over the agents dir with the test's telemetry, its cache built from the
    settings by `cache_from_settings` (memory unless `cache_url` says otherwise)."""
    runtimes: list[AgentRuntime] = []

    def make(**settings: Any) -> AgentRuntime:
        config = Settings(agents_dir=agents_dir, **settings)
        registry = AgentRegistry(agents_dir)
        registry.reload()
        cache = cache_from_settings(config, telemetry.meter_provider, telemetry.tracer_provider)
        runtime = AgentRuntime(
            registry,
            cache,
            settings=config,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
        )
        runtimes.append(runtime)
        return runtime

    yield make
    for runtime in runtimes:
        await runtime.aclose()
        await runtime.cache.close()
