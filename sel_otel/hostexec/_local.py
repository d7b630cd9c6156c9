"""A host-exec service as a child process on a free loopback port, with a random token.

Used as the embedded default when no `HOST_EXEC_URL` is configured, and by tests. The token
reaches the child through a private file (`HOST_EXEC_TOKEN_FILE`), never its environment.
The listening socket is bound here and inherited by the child (`HOST_EXEC_LISTEN_FD`), so no
other process can take the port between its choice and the child's start and be sent the
token. The child gets only the environment a service needs, not the parent's secrets.

The child stops when its launcher goes, even killed outright at any moment of the start: it
inherits the read end of a pipe whose write end only the launcher holds
(`HOST_EXEC_LAUNCHER_FD`), and stops at end of file on it. The kernel closes the launcher's
end however the launcher ends, and the end of file stays, so a launcher gone before the
child even began to watch is seen all the same. (On Linux the child also asks for SIGTERM at
its parent's death, a second line should the write end leak into a process that outlives
the launcher.) Nothing runs in the child between fork and exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Awaitable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import httpx
from opentelemetry.instrumentation.utils import suppress_instrumentation

from .._exceptions import ConfigError
from ._settings import DEFAULT_CHILD_ENV

_LOOPBACK = "127.0.0.1"
_POLL_INTERVAL = 0.05
_STOP_GRACE = 5.0
_LOG_TAIL = 2000
#: What the child inherits of the parent's environment: the interpreter's, what the service
#: passes on to commands by default, locale, proxy and CA settings, the OpenTelemetry
#: configuration (but its service name, which would mislabel the child's spans), and the
#: operator's `HOST_EXEC_*` settings (allow-list, caps, timeouts; but those the launcher
#: chooses). Nothing else: the bot's own secrets stay with the bot.
_INHERITED = frozenset(
    {"PATH", "HOME", "TMPDIR", "VIRTUAL_ENV", "LD_LIBRARY_PATH", *DEFAULT_CHILD_ENV}
    | {"SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"}
    | {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}
)
_INHERITED_PREFIXES = ("LC_", "PYTHON", "OTEL_", "HOST_EXEC_")
#: Chosen here (the address, the token and the descriptors), or the client's (its URL).
_LAUNCHER_CHOSEN = frozenset(
    {"HOST_EXEC_URL", "HOST_EXEC_TOKEN", "HOST_EXEC_TOKEN_FILE", "HOST_EXEC_HOST"}
    | {"HOST_EXEC_PORT", "HOST_EXEC_LISTEN_FD", "HOST_EXEC_LAUNCHER_FD"}
)

T = TypeVar("T")


def _inherited(name: str) -> bool:
    return name not in ("OTEL_SERVICE_NAME", *_LAUNCHER_CHOSEN) and (
        name in _INHERITED or name.startswith(_INHERITED_PREFIXES)
    )


class LocalHostExec:
    """Run `python -m sel_otel.hostexec` for the duration of an `async with` block.

    ```python
    async with LocalHostExec() as service:
        httpx.post(f"{service.url}/exec", headers={"Authorization": f"Bearer {service.token}"}, ...)
    ```
    `settings` holds extra `HOST_EXEC_*` variables (such as `HOST_EXEC_MAX_CONCURRENCY`);
    host, port and token are chosen here. Raises ConfigError when the service does not
    become healthy within `startup_timeout` seconds, with the tail of its log.

    Leaving the block stops the service and removes its token and log, to the end even when
    the task is cancelled meanwhile (a signal during shutdown): the cancellation is raised
    once both are done.
    """

    def __init__(
        self,
        *,
        allowlist: Path | None = None,
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self._allowlist = allowlist
        self._settings = dict(settings or {})
        self._startup_timeout = startup_timeout
        self.token = secrets.token_urlsafe(32)
        self._port: int | None = None
        self._dir: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        #: The write end of the child's launcher pipe: open while this launcher lives.
        self._lifeline: int | None = None

    @property
    def token_file(self) -> Path:
        """A private (0600) file holding the token, kept while the service runs."""
        if self._dir is None:
            raise RuntimeError("the service is not running")
        return self._dir / "token"

    @property
    def url(self) -> str:
        """Base URL of the service, such as `http://127.0.0.1:40123`."""
        if self._port is None:
            raise RuntimeError("the service has not been started")
        return f"http://{_LOOPBACK}:{self._port}"

    @property
    def pid(self) -> int:
        """Process id of the running service."""
        if self._process is None:
            raise RuntimeError("the service is not running")
        return self._process.pid

    @property
    def log_path(self) -> Path:
        """The service's combined stdout and stderr, kept while the service runs."""
        if self._dir is None:
            raise RuntimeError("the service is not running")
        return self._dir / "service.log"

    async def __aenter__(self) -> LocalHostExec:
        try:
            await self._start()
            await self._wait_healthy()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="sel-hostexec-local-"))
        token_file = self.token_file
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(self.token)
        env = {name: value for name, value in os.environ.items() if _inherited(name)}
        env.update(self._settings)
        env["HOST_EXEC_TOKEN_FILE"] = str(token_file)
        env.pop("HOST_EXEC_TOKEN", None)
        if self._allowlist is not None:
            env["HOST_EXEC_ALLOWLIST"] = str(self._allowlist)
        # Both ends are close-on-exec: the child gets the read end alone (pass_fds), and no
        # other process this one starts gets the write end.
        watched, self._lifeline = os.pipe()
        try:
            with socket.create_server((_LOOPBACK, 0)) as listener:
                self._port = listener.getsockname()[1]
                env["HOST_EXEC_LISTEN_FD"] = str(listener.fileno())
                env["HOST_EXEC_LAUNCHER_FD"] = str(watched)
                with self.log_path.open("wb") as log:
                    self._process = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "sel_otel.hostexec",
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log,
                        stderr=asyncio.subprocess.STDOUT,
                        env=env,
                        pass_fds=(listener.fileno(), watched),
                    )
        finally:
            os.close(watched)

    async def _wait_healthy(self) -> None:
        assert self._process is not None
        deadline = asyncio.get_running_loop().time() + self._startup_timeout
        # Readiness checks are no one's request: no client span (were httpx instrumented
        # globally), no `traceparent`; the service does not trace /healthz either.
        with suppress_instrumentation():
            # trust_env=False: a loopback address is never reached through a proxy.
            async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
                while asyncio.get_running_loop().time() < deadline:
                    if self._process.returncode is not None:
                        raise ConfigError(
                            f"host-exec service exited with status {self._process.returncode}: "
                            f"{self._log_tail()}"
                        )
                    with contextlib.suppress(httpx.HTTPError, OSError):
                        response = await client.get(f"{self.url}/healthz")
                        if response.status_code == 200:
                            return
                    await asyncio.sleep(_POLL_INTERVAL)
        raise ConfigError(
            f"host-exec service not healthy after {self._startup_timeout:g}s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-_LOG_TAIL:].strip()
        except OSError:
            return "(no log)"

    async def _stop(self) -> None:
        """Stop the service, then remove its directory. Neither is cut short by a
        cancellation, which is raised again once both are done."""
        process, self._process = self._process, None
        lifeline, self._lifeline = self._lifeline, None
        directory, self._dir = self._dir, None
        try:
            if process is not None:
                await _to_completion(_end(process))
        finally:
            if process is not None and process.returncode is None:
                # The wait itself was cancelled (its event loop is closing): no service is
                # left behind all the same.
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            if lifeline is not None:
                os.close(lifeline)
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


async def _end(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after a grace period; wait for the exit."""
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), _STOP_GRACE)
    except TimeoutError:
        process.kill()
        await process.wait()


async def _to_completion(work: Awaitable[T]) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile, as often as it may
    be; then raise that cancellation, so that it still takes effect (unless `work` failed:
    its error is raised instead)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])  # unlike awaiting the task, never cancels it
        except asyncio.CancelledError:
            cancelled = True
    if cancelled and (task.cancelled() or task.exception() is None):
        raise asyncio.CancelledError
    return task.result()
