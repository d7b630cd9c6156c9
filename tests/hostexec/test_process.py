"""The service process: its launcher, its entry point's telemetry and its public names."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import sel_otel.hostexec
from sel_otel._exceptions import ConfigError
from sel_otel.hostexec import _local
from sel_otel.hostexec._local import LocalHostExec

from ..conftest import cli_environment
from ..processes import running, signal_pending, state
from ..waiting import block_until

#: Generous: a loaded 2-core machine starts a Python process in well under this.
DEADLINE_S = 30.0


def test_exported_members_are_exactly_all() -> None:
    public = {
        name
        for name in dir(sel_otel.hostexec)
        if not name.startswith("_") and name != "annotations"  # the __future__ import
    }
    assert public == set(sel_otel.hostexec.__all__)
    assert sel_otel.hostexec.__all__ == sorted(sel_otel.hostexec.__all__)


async def test_launcher_reports_a_service_that_cannot_start(tmp_path: Path) -> None:
    bad = tmp_path / "list.json"
    bad.write_text(json.dumps({"commands": [{"argv": ["ls", "<nope>"]}]}))
    launcher = LocalHostExec(allowlist=bad, startup_timeout=30)
    with pytest.raises(ConfigError, match="unknown placeholder") as caught:
        await launcher.__aenter__()
    assert "exited with status 2" in str(caught.value)
    with pytest.raises(RuntimeError, match="not running"):
        _ = launcher.pid


async def test_launcher_stops_the_service_on_exit() -> None:
    async with LocalHostExec() as service:
        pid = service.pid
        log_dir = service.log_path.parent
        assert running(pid)
    assert not running(pid)
    assert not _exists(log_dir)


async def test_a_shutdown_cancelled_while_it_waits_still_stops_the_service_and_removes_its_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_local, "_STOP_GRACE", 2.0)  # the SIGKILL that ends the wait, sooner
    service = LocalHostExec()
    await service.__aenter__()
    pid, directory = service.pid, service.log_path.parent
    os.kill(pid, signal.SIGSTOP)  # the SIGTERM of the shutdown waits, and so does the shutdown
    try:
        # a signal sent once it is stopped stays pending
        block_until(lambda: state(pid) == "T", "the service to stop")
        closing = asyncio.ensure_future(service.__aexit__(None, None, None))
        while not signal_pending(pid, signal.SIGTERM):  # the shutdown now waits for the service
            assert not closing.done(), closing
            await asyncio.wait([closing], timeout=0.01)
        for _ in range(2):  # as a signal does, twice
            closing.cancel()
            await asyncio.sleep(0)  # one turn of the loop: the cancellation is delivered
        assert not closing.done()  # still waiting for the service, cancelled or not
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert not running(pid)
        assert not _exists(directory)
    finally:
        _kill(pid)
        shutil.rmtree(directory, ignore_errors=True)  # when the test failed


@pytest.mark.parametrize("when", ["before it starts", "once it listens"])
def test_the_service_stops_at_the_end_of_its_launcher_pipe(when: str) -> None:
    watched, lifeline = os.pipe()
    service = subprocess.Popen(
        [sys.executable, "-m", "sel_otel.hostexec"],
        env=cli_environment(
            HOST_EXEC_TOKEN="launcher-test-token-0123456789",
            HOST_EXEC_PORT="0",
            HOST_EXEC_LAUNCHER_FD=str(watched),
        ),
        pass_fds=(watched,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(watched)
    try:
        log = []
        if when == "once it listens":
            assert service.stderr is not None
            for line in service.stderr:
                log.append(line)
                if "host-exec listening on" in line:
                    break
            assert service.poll() is None, log
        os.close(lifeline)  # the launcher is gone
        lifeline = -1
        _, stderr = service.communicate(timeout=DEADLINE_S)
        assert service.returncode == 0, stderr
        assert "host-exec launcher gone" in "".join(log) + stderr
    finally:
        if lifeline >= 0:
            os.close(lifeline)
        service.kill()
        service.communicate()


def test_a_launcher_fd_that_is_no_pipe_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sel_otel.hostexec"],
        env=cli_environment(
            HOST_EXEC_TOKEN="launcher-test-token-0123456789",
            HOST_EXEC_PORT="0",
            HOST_EXEC_LAUNCHER_FD="987",  # not open in the service
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "HOST_EXEC_LAUNCHER_FD=987 is not a readable pipe" in done.stderr


def _kill(pid: int) -> None:
    """SIGKILL `pid` if it still runs (a stopped process too)."""
    if running(pid):
        os.kill(pid, signal.SIGKILL)


def _exists(path: Path) -> bool:
    return path.exists()
