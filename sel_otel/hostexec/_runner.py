"""Runner: execute an approved argv without a shell, bounded in time and output.

Each command runs in its own session (so its whole process group can be killed), with a
fresh empty directory as its working directory, `HOME` and XDG directories, and only the
environment variables it was given. Output is read in chunks and counted against one cap
shared by stdout and stderr; past the cap the process group is killed and the reply is
flagged as truncated, so the service's memory does not grow with the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

_CHUNK = 65_536
#: Variables pointing at the per-command empty directory, so no user or system config
#: file (fastfetch runs commands listed in its config) can steer the command.
_HOME_VARS = (
    "HOME",
    "XDG_CONFIG_HOME",
    "XDG_CONFIG_DIRS",
    "XDG_DATA_HOME",
    "XDG_DATA_DIRS",
    "XDG_CACHE_HOME",
    "XDG_STATE_HOME",
    "TMPDIR",
)
_NOT_FOUND = 127  # the exit codes a shell uses for these two cases
_NOT_EXECUTABLE = 126


@dataclass(frozen=True)
class ExecResult:
    """What a command did. A negative `exit_code` is the signal that ended it."""

    exit_code: int
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    duration_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Capture:
    """Collects a stream's bytes while a budget shared with other streams lasts."""

    def __init__(self, limit: int, on_full: Callable[[], None]) -> None:
        self._room = limit
        self._on_full = on_full
        self.truncated = False

    async def drain(self, stream: asyncio.StreamReader, sink: bytearray) -> None:
        while not self.truncated:
            chunk = await stream.read(_CHUNK)
            if not chunk:
                return
            if len(chunk) > self._room:
                chunk = chunk[: self._room]
                self.truncated = True
                self._on_full()
            self._room -= len(chunk)
            sink += chunk


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _decode(data: bytearray) -> str:
    return data.decode("utf-8", errors="replace")


class Runner:
    """Runs argvs with a fixed environment and output cap."""

    def __init__(self, *, env: Mapping[str, str], max_output_bytes: int) -> None:
        self._env = dict(env)
        self._max_output_bytes = max_output_bytes

    async def run(self, argv: Sequence[str], *, time_limit: float) -> ExecResult:
        """Run `argv` until it ends, `time_limit` seconds pass or the output cap is hit.

        Whatever is left of its process group is then killed.
        """
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(
            prefix="sel-hostexec-", ignore_cleanup_errors=True
        ) as home:
            env = {**self._env, **dict.fromkeys(_HOME_VARS, home)}
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                    cwd=home,
                    start_new_session=True,
                )
            except FileNotFoundError:
                return self._failed(_NOT_FOUND, f"{argv[0]}: command not found\n", started)
            except PermissionError:
                return self._failed(_NOT_EXECUTABLE, f"{argv[0]}: permission denied\n", started)
            stdout, stderr = bytearray(), bytearray()
            capture = _Capture(self._max_output_bytes, lambda: _kill_group(process.pid))
            assert process.stdout is not None and process.stderr is not None
            timed_out = False
            try:
                async with asyncio.timeout(time_limit):
                    await asyncio.gather(
                        capture.drain(process.stdout, stdout),
                        capture.drain(process.stderr, stderr),
                    )
                    await process.wait()
            except TimeoutError:
                timed_out = True
            finally:
                # Also kills what the command left running in its group after it exited.
                _kill_group(process.pid)
                exit_code = await process.wait()
        return ExecResult(
            exit_code=exit_code,
            stdout=_decode(stdout),
            stderr=_decode(stderr),
            truncated=capture.truncated,
            timed_out=timed_out,
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    @staticmethod
    def _failed(exit_code: int, stderr: str, started: float) -> ExecResult:
        return ExecResult(
            exit_code=exit_code,
            stdout="",
            stderr=stderr,
            truncated=False,
            timed_out=False,
            duration_ms=(time.perf_counter() - started) * 1000,
        )
