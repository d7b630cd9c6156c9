"""A `sel-otel` process ends: in order, on time whatever its agents do, and at once when
asked twice. Real processes, real signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sel_otel import Telemetry

from .conftest import CLI, cli_environment
from .otlp_receiver import OtlpReceiver

#: Seconds within which a process that ends on time has ended: far below the agents' hangs
#: (an hour), far above what ending takes on a loaded machine.
ENDS = 30

#: The misbehaving agents: one whose thread hangs, one that swallows its cancellation, one
#: that holds the event loop.
EXIT_AGENTS = Path(__file__).parent / "exit_agents"


@pytest.fixture
def agents(tmp_path: Path) -> Path:
    directory = tmp_path / "agents"
    shutil.copytree(EXIT_AGENTS, directory, ignore=shutil.ignore_patterns("__pycache__"))
    return directory


@pytest.fixture
def console(agents: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started consoles (see `_start`), killed at the end of the test whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _start(
    started: list[subprocess.Popen[bytes]], agents: Path, request: str, **env: str
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [*CLI, "console"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_environment(SEL_AGENTS_DIR=str(agents), HOST_EXEC_URL="http://127.0.0.1:9", **env),
    )
    started.append(process)
    assert process.stdin is not None
    process.stdin.write(request.encode() + b"\n")
    process.stdin.flush()
    return process


def _wait_for(path: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, "the agent never started"
        time.sleep(0.01)


def _delivered(process: subprocess.Popen[bytes], signum: int) -> None:
    """Wait until `signum`, sent to `process`, is no longer pending: it was taken."""
    bit = 1 << (signum - 1)
    deadline = time.monotonic() + 60
    while True:
        status = Path(f"/proc/{process.pid}/status").read_text().splitlines()
        masks = [int(line.split()[1], 16) for line in status if line[:6] in ("SigPnd", "ShdPnd")]
        if not any(mask & bit for mask in masks):
            return
        assert time.monotonic() < deadline, "the signal was never taken"
        time.sleep(0.01)


def test_exit_does_not_wait_for_a_thread_an_agent_left_hanging(agents: Path) -> None:
    done = subprocess.run(
        [*CLI, "console"],
        input=b"agent:hung_thread x\n",  # then end of input: the console exits
        capture_output=True,
        env=cli_environment(SEL_AGENTS_DIR=str(agents), HOST_EXEC_URL="http://127.0.0.1:9"),
        timeout=ENDS,
        check=False,
    )
    assert done.returncode == 1  # the call failed; its thread still sleeps
    assert b"timed out after 0.5s" in done.stdout


@pytest.mark.parametrize("agent", ["stubborn", "blocker"])
def test_sigterm_ends_the_process_on_time_whatever_the_agent_does(
    agents: Path, console: list[subprocess.Popen[bytes]], tmp_path: Path, agent: str
) -> None:
    started = tmp_path / "started"
    process = _start(
        console, agents, f"agent:{agent} {started}", SEL_TELEMETRY_SHUTDOWN_TIMEOUT="1"
    )
    _wait_for(started, process)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=ENDS) == 128 + signal.SIGTERM
    # Within the shutdown timeout and its grace (and what a loaded machine adds).
    assert time.monotonic() - signalled < 1 + 0.5 + 5


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_second_signal_ends_the_process_at_once(
    agents: Path, console: list[subprocess.Popen[bytes]], tmp_path: Path, signum: int
) -> None:
    started = tmp_path / "started"
    # The agent holds the event loop: the orderly exit cannot progress, and its deadline is
    # five minutes away.
    process = _start(
        console, agents, f"agent:blocker {started}", SEL_TELEMETRY_SHUTDOWN_TIMEOUT="300"
    )
    _wait_for(started, process)
    process.send_signal(signal.SIGTERM)
    _delivered(process, signal.SIGTERM)
    assert process.poll() is None  # taken, and still ending in order
    process.send_signal(signum)
    assert process.wait(timeout=ENDS) == 128 + signum


def test_telemetry_shutdown_returns_by_its_timeout_when_the_collector_hangs(
    otlp_receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")  # everything is left for shutdown
    otlp_receiver.hang(30)
    telemetry = Telemetry.from_env()
    with telemetry.tracer_provider.get_tracer("test").start_as_current_span("work"):
        pass
    started = time.monotonic()
    telemetry.shutdown(timeout=1.0)
    # The timeout, not the timeout and a join of each flush thread after it.
    assert time.monotonic() - started < 1.0 + 0.15
