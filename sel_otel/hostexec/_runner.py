"""Runner: execute an approved argv without a shell, bounded in time and output.

Each command runs in its own session (so its whole process group can be killed), with a
fresh empty directory as its working directory, `HOME` and XDG directories, and only the
environment variables it was given. Output is read as it arrives and counted against one
cap shared by stdout and stderr; past the cap the process group is killed, the rest is read
and dropped, and the reply is flagged as truncated, so the service's memory does not grow
with the output.

The command is over when its own process exits (or is killed at its timeout): its process
group is then killed, and the output pipes are read for a short grace and closed. A process
that left the group with `setsid` but kept the pipes open therefore delays the answer by at
most that grace, and is then found by the pipe it holds and killed. One that left and closed
its output (a daemon) is not attributable to the command and keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds the output pipes are still read after the command's process group is killed,
#: for what it wrote just before; past this, processes holding them are not waited for.
_DRAIN_GRACE = 0.5
#: Seconds to wait for a killed process to be reaped.
_EXIT_WAIT = 2.0
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


class _Budget:
    """The output cap, shared by stdout and stderr; calls `on_full` once when it runs out."""

    def __init__(self, limit: int, on_full: Callable[[], None]) -> None:
        self._room = limit
        self._on_full = on_full
        self.truncated = False

    def take(self, data: bytes, sink: bytearray) -> None:
        if self.truncated:
            return  # read and dropped, so a writer past the cap never blocks
        if len(data) > self._room:
            data = data[: self._room]
            self.truncated = True
            self._on_full()
        self._room -= len(data)
        sink += data


class _PipeReader(asyncio.Protocol):
    """Reads one output pipe into `sink`; `closed` resolves at end of file or on close."""

    def __init__(self, budget: _Budget, sink: bytearray) -> None:
        self._budget = budget
        self._sink = sink
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._budget.take(data, self._sink)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _decode(data: bytearray) -> str:
    return data.decode("utf-8", errors="replace")


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _cannot_run(argv: Sequence[str], exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return f"{argv[0]}: permission denied\n"
    return f"{argv[0]}: cannot run: {exc.strerror or exc}\n"


async def _wait_exit(process: asyncio.subprocess.Process) -> int:
    """The exit status after SIGKILL, without waiting long for a process stuck in the kernel."""
    try:
        return await asyncio.wait_for(process.wait(), _EXIT_WAIT)
    except TimeoutError:
        logger.warning("command pid %d has not exited %gs after SIGKILL", process.pid, _EXIT_WAIT)
        return -signal.SIGKILL


def _kill_pipe_holders(inodes: frozenset[int]) -> int:
    """SIGKILL every process holding one of these pipes; returns how many were killed.

    They are what a command left behind outside its process group (after `setsid`) with its
    output still open: holding the pipe ties them to the command, so nothing else is touched.
    A pidfd pins each one between the check and the kill, so a recycled pid is never hit.
    Processes that left and closed their output (daemons) are not found.
    """
    links = frozenset(f"pipe:[{inode}]" for inode in inodes)
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        if not _holds(pid, links):
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # already gone
        try:
            if _holds(pid, links):  # still the same process: the pidfd refers to it
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                killed += 1
        except OSError:
            pass
        finally:
            os.close(pidfd)
    return killed


def _holds(pid: int, links: frozenset[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in links:
                return True
    return False


class Runner:
    """Runs argvs with a fixed environment and output cap."""

    def __init__(self, *, env: Mapping[str, str], max_output_bytes: int) -> None:
        self._env = dict(env)
        self._max_output_bytes = max_output_bytes

    async def run(self, argv: Sequence[str], *, time_limit: float) -> ExecResult:
        """Run `argv` until it exits, `time_limit` seconds pass or the output cap is hit.

        Whatever is left of its process group is then killed. The answer never waits for a
        process that left the group (`setsid`) but still holds the output pipes: they are
        read for at most `_DRAIN_GRACE` seconds more, then closed on our side, and the
        processes still holding them are killed (see `_kill_pipe_holders`).
        """
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(
            prefix="sel-hostexec-", ignore_cleanup_errors=True
        ) as home:
            env = {**self._env, **dict.fromkeys(_HOME_VARS, home)}
            try:
                out_read, out_write = os.pipe()
            except OSError as exc:
                return self._failed(_NOT_EXECUTABLE, _cannot_run(argv, exc), started)
            try:
                err_read, err_write = os.pipe()
            except OSError as exc:
                _close_fds(out_read, out_write)
                return self._failed(_NOT_EXECUTABLE, _cannot_run(argv, exc), started)
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out_write,
                    stderr=err_write,
                    env=env,
                    cwd=home,
                    start_new_session=True,
                )
            except OSError as exc:
                _close_fds(out_read, err_read)
                if isinstance(exc, FileNotFoundError):
                    return self._failed(_NOT_FOUND, f"{argv[0]}: command not found\n", started)
                return self._failed(_NOT_EXECUTABLE, _cannot_run(argv, exc), started)
            finally:
                _close_fds(out_write, err_write)  # the child holds its own copies
            return await self._supervise(process, (out_read, err_read), time_limit, started)

    async def _supervise(
        self,
        process: asyncio.subprocess.Process,
        pipes: tuple[int, int],
        time_limit: float,
        started: float,
    ) -> ExecResult:
        loop = asyncio.get_running_loop()
        stdout, stderr = bytearray(), bytearray()
        budget = _Budget(self._max_output_bytes, lambda: _kill_group(process.pid))
        inodes = frozenset(os.fstat(fd).st_ino for fd in pipes)
        readers: list[_PipeReader] = []
        transports: list[asyncio.ReadTransport] = []
        try:
            for fd, sink in zip(pipes, (stdout, stderr), strict=True):
                transport, reader = await loop.connect_read_pipe(
                    functools.partial(_PipeReader, budget, sink), os.fdopen(fd, "rb", buffering=0)
                )
                transports.append(transport)
                readers.append(reader)
        except BaseException:
            _kill_group(process.pid)
            _close_fds(*pipes[len(transports) + 1 :])
            for opened in transports:
                opened.close()
            raise
        all_closed = asyncio.gather(*(reader.closed for reader in readers))
        timed_out = False
        try:
            async with asyncio.timeout(time_limit):
                await process.wait()  # the command's own process; its pipes are not awaited
        except TimeoutError:
            timed_out = True
        finally:
            # Kills the command on timeout, and whatever it left running in its group.
            _kill_group(process.pid)
            exit_code = await _wait_exit(process)
            with contextlib.suppress(TimeoutError):  # read what is written, then stop
                await asyncio.wait_for(asyncio.shield(all_closed), _DRAIN_GRACE)
            held = not all_closed.done()
            for opened in transports:
                opened.close()
            if held:
                # Here, not after the block: a cancelled request must not leave them running.
                # The scan of /proc is short and this path is rare, so it runs inline.
                killed = _kill_pipe_holders(inodes)
                logger.warning(
                    "command pid %d left %d process(es) outside its process group holding its "
                    "output open; killed them",
                    process.pid,
                    killed,
                )
            await all_closed
        return ExecResult(
            exit_code=exit_code,
            stdout=_decode(stdout),
            stderr=_decode(stderr),
            truncated=budget.truncated,
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
