"""The service process: settings from the environment, serve until SIGTERM or SIGINT, or
until the process that started it is gone (`HOST_EXEC_LAUNCHER_FD`)."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from .._exceptions import ConfigError
from .._settings import settings_help
from .._telemetry import Telemetry, telemetry_help
from ._accept import CappedSite, fit_open_files
from ._httplog import AccessLog, server_logger
from ._server import create_app
from ._settings import HostExecSettings

logger = logging.getLogger(__name__)

_DEFAULT_SERVICE_NAME = "sel-host-exec"
#: Header limits well above what the bot sends (a few short headers, a 43-character token)
#: and below aiohttp's defaults (8190 bytes, 128 headers), so a connection buffers less.
_MAX_LINE_SIZE = 4096
_MAX_FIELD_SIZE = 4096
_MAX_HEADERS = 32
_PR_SET_PDEATHSIG = 1


def run_service(
    settings: HostExecSettings, *, tracer_provider: TracerProvider | None = None
) -> None:
    """Serve the host-exec API until SIGTERM or SIGINT, or end of file on
    `settings.launcher_fd`; raises ConfigError on bad settings."""
    asyncio.run(_serve(settings, tracer_provider))


async def _serve(settings: HostExecSettings, tracer_provider: TracerProvider | None) -> None:
    # Whatever asks the service to stop while it starts is honoured once it has started.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if settings.launcher_fd is not None:
        _watch_launcher(settings.launcher_fd, stop)
    app = create_app(settings, tracer_provider=tracer_provider)
    runner = web.AppRunner(
        app,
        # From the connection's start or its last answer: bounds idle connections and
        # requests whose headers never end (aiohttp closes them while awaiting a request).
        keepalive_timeout=settings.keepalive_timeout,
        max_line_size=_MAX_LINE_SIZE,
        max_field_size=_MAX_FIELD_SIZE,
        max_headers=_MAX_HEADERS,
        # No body is inflated (a 1 MB gzip body is 1 GiB of work on the event loop), and a body
        # left unread once the answer is sent closes the connection instead of being read.
        auto_decompress=False,
        lingering_time=0,
        # No query string in the access log (a token may be in one); refused requests in one
        # line each, without a traceback, and a few lines a minute at most.
        access_log_class=AccessLog,
        logger=server_logger(),
    )
    await runner.setup()
    try:
        host = await _start_site(runner, settings)
        logger.info("host-exec listening on %s", ", ".join(map(str, runner.addresses)))
        if not _is_loopback(host):
            logger.warning("host-exec listens beyond loopback: the token crosses the network")
        await stop.wait()
        logger.info("host-exec stopping")
    finally:
        await runner.cleanup()


def _watch_launcher(fd: int, stop: asyncio.Event) -> None:
    """Set `stop` when the launcher is gone: at end of file on `fd`, the read end of a pipe
    whose write end only the launcher holds. The kernel closes that end however the launcher
    ends, and end of file lasts, so a launcher gone before this watch began is seen at once.

    On Linux, SIGTERM at the parent's death is asked for too, first, so that the service
    stops even should the write end have been leaked into another process.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            if os.read(fd, 512):
                return  # the launcher writes nothing; were it to, it is still there
        except BlockingIOError:
            return
        except OSError:
            pass  # the pipe is broken: the launcher is gone all the same
        loop.remove_reader(fd)
        logger.info("host-exec launcher gone")
        stop.set()

    try:
        os.set_blocking(fd, False)
        loop.add_reader(fd, readable)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"HOST_EXEC_LAUNCHER_FD={fd} is not a readable pipe: {why}") from exc


async def _start_site(runner: web.AppRunner, settings: HostExecSettings) -> str:
    """Listen on the inherited socket, or on host and port; return the host listened on."""
    if settings.listen_fd is None:
        host, where = settings.host, f"{settings.host}:{settings.port}"
        try:
            sock = _listening_socket(settings.host, settings.port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from exc
    else:
        where = f"HOST_EXEC_LISTEN_FD={settings.listen_fd}"
        try:
            sock = socket.socket(fileno=settings.listen_fd)
            host = str(sock.getsockname()[0])
        except OSError as exc:
            raise ConfigError(f"{where} is not a usable socket: {exc.strerror}") from exc
    limit = fit_open_files(settings.max_connections, commands=settings.max_concurrency)
    site = CappedSite(runner, sock, limit=limit)
    try:
        await site.start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from exc
    return host


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to the first address `host` names (IPv4 or IPv6), not yet listening."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def service_help() -> str:
    """What `--help` prints after the usage: the settings the service reads."""
    settings = settings_help(HostExecSettings, "settings (environment variables)")
    return f"{settings}\n\n{telemetry_help(_DEFAULT_SERVICE_NAME)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m sel_otel.hostexec`; returns the process exit status."""
    argparse.ArgumentParser(
        prog="python -m sel_otel.hostexec",
        description="Serve the host-exec API: run allow-listed commands for the host_exec agent.",
        epilog=service_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
    try:
        settings = HostExecSettings.from_env()
        telemetry = Telemetry.from_env(_DEFAULT_SERVICE_NAME)
        try:
            run_service(settings, tracer_provider=telemetry.tracer_provider)
        finally:
            telemetry.shutdown()
    except ConfigError as exc:  # the one place a service that cannot start says why
        print(f"host-exec: {exc}", file=sys.stderr)
        return 2
    return 0
