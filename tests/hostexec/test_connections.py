"""Connection limits of the service process: idle and never-finished requests are closed."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from sel_otel.hostexec._local import LocalHostExec

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEEPALIVE_S = 1.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def short_keepalive() -> AsyncIterator[LocalHostExec]:
    settings = {"HOST_EXEC_KEEPALIVE_TIMEOUT": str(KEEPALIVE_S)}
    async with LocalHostExec(settings=settings) as running:
        yield running


def _connect(service: LocalHostExec) -> socket.socket:
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _seconds_until_closed(sock: socket.socket, limit: float) -> float:
    """Read and discard until the server closes the connection; fails after `limit` s."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit:g}s")
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def _idle_after_one_request(service: LocalHostExec) -> float:
    with _connect(service) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        assert b"\r\nConnection: close" not in first  # kept alive, then timed out
        return _seconds_until_closed(sock, KEEPALIVE_S + 3)


def _headers_never_finished(service: LocalHostExec) -> float:
    with _connect(service) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        return _seconds_until_closed(sock, KEEPALIVE_S + 3)


async def test_idle_keepalive_connection_is_closed_after_the_timeout(
    short_keepalive: LocalHostExec,
) -> None:
    elapsed = await asyncio.to_thread(_idle_after_one_request, short_keepalive)
    assert elapsed < KEEPALIVE_S + 1.5


async def test_request_whose_headers_never_end_is_closed_after_the_timeout(
    short_keepalive: LocalHostExec,
) -> None:
    elapsed = await asyncio.to_thread(_headers_never_finished, short_keepalive)
    assert elapsed < KEEPALIVE_S + 1.5


async def test_oversized_header_is_refused(short_keepalive: LocalHostExec) -> None:
    def send() -> bytes:
        with _connect(short_keepalive) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
            return sock.recv(65536)

    answer = await asyncio.to_thread(send)
    assert answer.startswith(b"HTTP/1.0 400 Bad Request")  # aiohttp's default limit is 8190
    assert b"more than 4096 bytes" in answer
