"""Pieces shared by the benchmark scripts (imported as `_common`: scripts run from bench/).

Every bench prints the machine and its load average first, then each figure as the median
of at least `REPETITIONS` interleaved repetitions with their min-max. Times are given as
wall time and as CPU time: on a busy machine CPU time per call is much less noisy, and the
process's CPU time includes what its export threads spend on each call.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

#: Repetitions of every measurement, interleaved with the other variants'.
REPETITIONS = 5

BENCH = Path(__file__).resolve().parent
_T = TypeVar("_T")


class DiscardingExporter(SpanExporter):
    """Accepts every batch, so a benchmark measures the SDK, not a network."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A `redis-server` of its own on a free loopback port, without persistence: its URL and
    its process (which a bench may stop with SIGSTOP to stall it: it is resumed before it is
    killed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed; pass --url")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory, "--logfile", f"{directory}/redis.log"],
        )  # fmt: skip
        try:
            for _ in range(500):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0", process
        finally:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.wait()


def machine() -> str:
    """The CPU model, its count, the Python version and the load average now."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"machine: {model}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average {load_average()} (1, 5, 15 min)"
    )


def load_average() -> str:
    """The load average now, over 1, 5 and 15 minutes."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def checkouts(baseline: Path | None) -> dict[str, Path]:
    """The checkouts a bench measures alike, by label: this one, and `baseline` when given."""
    found = {"this checkout": BENCH.parent}
    if baseline is not None:
        found["baseline"] = baseline.resolve()
    return found


def print_header(title: str) -> None:
    print(title)
    print(machine(), flush=True)


@dataclass(frozen=True)
class Spread:
    """A figure from several repetitions: its median and range."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def show(self, scale: float = 1.0, digits: int = 2) -> str:
        """`median (min-max)`, each value multiplied by `scale`."""
        low, high = min(self.values) * scale, max(self.values) * scale
        return f"{self.median * scale:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def summary(values: Sequence[float], scale: float, unit: str, digits: int = 2) -> str:
    """`median unit (range min-max, n=count)`, each value multiplied by `scale`."""
    shown = [value * scale for value in values]
    return (
        f"{statistics.median(shown):8.{digits}f} {unit} "
        f"(range {min(shown):.{digits}f}-{max(shown):.{digits}f}, n={len(shown)})"
    )


def spread(values: Sequence[float]) -> Spread:
    return Spread(tuple(values))


def ratios(top: Sequence[float], bottom: Sequence[float]) -> Spread:
    """Ratios of paired repetitions (measured side by side), not of the medians."""
    return spread([a / b for a, b in zip(top, bottom, strict=True)])


def interleaved(kinds: Sequence[_T], repetitions: int = REPETITIONS) -> Iterator[_T]:
    """Each kind once per repetition, the order rotating, so that machine noise and order
    effects hit all kinds alike."""
    for i in range(repetitions):
        offset = i % len(kinds)
        yield from [*kinds[offset:], *kinds[:offset]]


@dataclass(frozen=True)
class Timing:
    """Seconds per call: wall time (the median of the rounds) and CPU time of the whole
    process (every thread: export included) and of the calling thread alone."""

    wall: float
    cpu: float
    thread_cpu: float

    def to_json(self) -> dict[str, float]:
        return {"wall": self.wall, "cpu": self.cpu, "thread_cpu": self.thread_cpu}


async def time_calls(
    call: Callable[[], Awaitable[object]],
    *,
    calls: int,
    rounds: int,
    settle: Callable[[], object] | None = None,
) -> Timing:
    """Time `rounds` rounds of `calls` awaited calls. `settle` (a flush of what the calls
    left queued for export, say) runs inside the CPU measurement, after each round."""
    return (await time_kinds({"call": call}, calls=calls, rounds=rounds, settle=settle))["call"]


async def time_kinds(
    kinds: Mapping[str, Callable[[], Awaitable[object]]],
    *,
    calls: int,
    rounds: int,
    settle: Callable[[], object] | None = None,
) -> dict[str, Timing]:
    """Time each kind of call in `rounds` rounds of `calls` awaited calls, the kinds taking
    turns round by round (the order rotating). `settle` runs after each round, inside its CPU
    measurement but outside its wall time: what a round's calls left queued for export is
    exported and counted against that kind."""
    names = list(kinds)
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpu = dict.fromkeys(names, 0.0)
    thread_cpu = dict.fromkeys(names, 0.0)
    for name in interleaved(names, rounds):
        call = kinds[name]
        cpu_start, thread_start = time.process_time(), time.thread_time()
        start = time.perf_counter()
        for _ in range(calls):
            await call()
        walls[name].append((time.perf_counter() - start) / calls)
        if settle is not None and inspect.isawaitable(settled := settle()):
            await settled
        cpu[name] += time.process_time() - cpu_start
        thread_cpu[name] += time.thread_time() - thread_start
    total = calls * rounds
    return {
        name: Timing(statistics.median(walls[name]), cpu[name] / total, thread_cpu[name] / total)
        for name in names
    }


async def per_call_seconds(
    call: Callable[[], Awaitable[object]], *, rounds: int, calls_per_round: int
) -> float:
    """Median seconds per call over `rounds` rounds of `calls_per_round` awaited calls."""
    return (await time_calls(call, calls=calls_per_round, rounds=rounds)).wall


def child_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any OTEL_* variable, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return env | overrides


def run_child(script: Path, args: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    """Run `script --child ARGS` with this Python; the JSON object on its last output line."""
    done = subprocess.run(
        [sys.executable, str(script), "--child", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class Sink:
    """`_sink.py` in a process of its own: an OTLP/HTTP endpoint that answers 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sink:
        self._process = subprocess.Popen([sys.executable, str(BENCH / "_sink.py"), str(self.port)])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
