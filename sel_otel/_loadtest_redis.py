"""A `redis-server` process of the load test's own, on a free loopback port, for its faults.

`--cache redis-server` starts one (Debian's `redis-server`, without persistence, in a
temporary directory); the load test may then pause it (SIGSTOP), resume it (SIGCONT), kill
it (SIGKILL) and start it again on the same port. It is stopped when the test ends.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import time
from pathlib import Path
from types import TracebackType

from ._exceptions import ConfigError

#: Seconds a (re)started server has to answer PING.
START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRedis:
    """One `redis-server` on 127.0.0.1; use as `async with LocalRedis(directory)`."""

    def __init__(self, directory: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise ConfigError("--cache redis-server: no redis-server on PATH")
        self.executable = executable
        self.directory = directory
        self.port = _free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> LocalRedis:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.kill()

    async def start(self) -> None:
        """Start the server (again) on its port and wait until it answers PING."""
        if self.process is not None:
            return
        self.process = await asyncio.create_subprocess_exec(
            self.executable,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")),
            stdin=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not await asyncio.to_thread(self._ping):
            if self.process.returncode is not None or time.monotonic() > deadline:
                await self.kill()
                raise ConfigError(
                    f"redis-server did not start on port {self.port} "
                    f"(log: {self.directory / 'redis.log'})"
                )
            await asyncio.sleep(0.02)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """Stop the server in its tracks (SIGSTOP): connections hang, nothing answers."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        """Kill the server (SIGKILL, which also ends a paused one) and reap it; its data is
        lost."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.kill()
        await process.wait()
