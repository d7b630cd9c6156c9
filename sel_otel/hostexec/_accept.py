"""Accepting connections, at most `limit` open at once.

asyncio accepts every connection the kernel has queued, as fast as they come, and aiohttp has
no cap: 300 half-open connections used up a 256 open-file limit, so `/healthz` and `/exec`
timed out and asyncio logged "Too many open files" for each attempt (15,735 lines in
seconds). `CappedSite` accepts a connection only while fewer than `limit` are open: at the
cap it stops reading the listening socket, further clients wait in the kernel's backlog (or
give up there) and are accepted as others close. Reaching the cap, or running out of file
descriptors, is logged once a minute at most, with how many times it happened since.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
from collections.abc import Callable
from functools import partial

from aiohttp import web

from ._httplog import RateLimit

logger = logging.getLogger(__name__)

#: Seconds to wait before accepting again when the process is out of file descriptors.
_OUT_OF_FILES_PAUSE_S = 0.5
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: File descriptors the service needs besides its connections: its listening socket, log,
#: event loop and Python's own, and per running command its pipes.
_RESERVED_FILES = 32
_FILES_PER_COMMAND = 4


def fit_open_files(connections: int, *, commands: int) -> int:
    """The connection cap that fits the open-file limit, with room for `commands` running
    commands: the soft limit is raised towards the hard one if it must be, and if that is not
    enough the cap is lowered, with a warning."""
    reserved = _RESERVED_FILES + _FILES_PER_COMMAND * commands
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= connections + reserved:
        return connections
    wanted = connections + reserved
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    if soft >= connections + reserved:
        return connections
    fitted = max(1, soft - reserved)
    logger.warning(
        "HOST_EXEC_MAX_CONNECTIONS=%d does not fit the open-file limit of %d (ulimit -n): "
        "at most %d connections will be open at once",
        connections,
        soft,
        fitted,
    )
    return fitted


class CappedSite(web.BaseSite):
    """An aiohttp site on a listening socket that holds at most `limit` connections open."""

    __slots__ = ("_accepting", "_at_cap_log", "_limit", "_out_of_files_log", "_slots", "_sock")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, limit: int) -> None:
        super().__init__(runner)
        self._sock = sock
        self._limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._accepting: asyncio.Task[None] | None = None
        self._at_cap_log = RateLimit(lines=1)
        self._out_of_files_log = RateLimit(lines=1)

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None  # BaseSite's constructor checked
        self._sock.listen(self._backlog)
        # The server object only holds the socket (for `runner.addresses` and closing):
        # it never accepts, `_accept` does.
        self._server = await loop.create_server(server, sock=self._sock, start_serving=False)
        self._accepting = asyncio.create_task(self._accept(server))
        self._accepting.add_done_callback(_report_end)

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        await super().stop()

    async def _accept(self, factory: Callable[[], asyncio.BaseProtocol]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._slots.locked() and self._at_cap_log.allow():
                logger.warning(
                    "%d connections open, the most allowed (HOST_EXEC_MAX_CONNECTIONS): "
                    "accepting more only as others close%s",
                    self._limit,
                    self._at_cap_log.take_left_out(),
                )
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                self._slots.release()
                if exc.errno not in _OUT_OF_RESOURCES:
                    continue  # the client gave up before it was accepted
                if self._out_of_files_log.allow():
                    logger.warning(
                        "cannot accept a connection: %s; trying again as others close%s",
                        exc.strerror,
                        self._out_of_files_log.take_left_out(),
                    )
                await asyncio.sleep(_OUT_OF_FILES_PAUSE_S)
                continue
            release = _Release(self._slots)
            try:
                await loop.connect_accepted_socket(partial(_Counted, factory(), release), conn)
            except OSError:
                conn.close()
                release()


def _report_end(task: asyncio.Task[None]) -> None:
    """Log why accepting stopped, unless the site was stopped: the service takes no more
    connections and needs a restart."""
    if not task.cancelled() and task.exception() is not None:
        logger.critical("host-exec stopped accepting connections", exc_info=task.exception())


class _Release:
    """Gives the connection's slot back, once."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots: asyncio.Semaphore | None = slots

    def __call__(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, which gives its slot back when it is lost."""

    def __init__(self, inner: asyncio.BaseProtocol, release: _Release) -> None:
        assert isinstance(inner, asyncio.Protocol)
        self._inner = inner
        self._release = release

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._release()

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
