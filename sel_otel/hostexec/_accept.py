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
import socket
from collections.abc import Callable
from functools import partial

from aiohttp import web

from ._httplog import RateLimit

logger = logging.getLogger(__name__)

#: Seconds to wait before accepting again when the process is out of file descriptors.
_OUT_OF_FILES_PAUSE_S = 0.5
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


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
