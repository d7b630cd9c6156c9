"""Requests meant to exhaust the service: each costs it almost nothing and is closed at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from sel_otel.hostexec._local import LocalHostExec
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Bytes a gzip bomb inflates to; inflating one took the unfixed service about 0.8 s of CPU.
BOMB_INFLATED = 256 * 2**20
BOMBS = 4
#: CPU seconds the service may spend on all the bombs together: a fraction of one inflation.
CPU_BUDGET_S = 0.5


def _gzip_bomb() -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    zeros = bytes(2**20)
    parts = [packer.compress(zeros) for _ in range(BOMB_INFLATED // len(zeros))]
    return b"".join(parts) + packer.flush()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return _gzip_bomb()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service() -> AsyncIterator[LocalHostExec]:
    async with LocalHostExec() as running:
        yield running


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _connect(service: LocalHostExec) -> socket.socket:
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def _send_bomb(service: LocalHostExec, body: bytes, token: str | None) -> bytes:
    """POST `body` as gzip: the headers and a first part, then, once the service has
    answered, the rest; returns the answer's status line."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST /exec HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with _connect(service) as sock:
        sock.sendall(head + body[:4096])
        answer = sock.recv(65536)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(body[4096:])  # the service may have closed the connection: it should
        return answer.split(b"\r\n", 1)[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("authenticated", [False, True], ids=["unauthenticated", "authenticated"])
async def test_gzip_bodies_are_never_inflated(
    service: LocalHostExec, bomb: bytes, authenticated: bool
) -> None:
    token = service.token if authenticated else None
    before = _cpu_seconds(service.pid)
    answers = await asyncio.gather(
        *(asyncio.to_thread(_send_bomb, service, bomb, token) for _ in range(BOMBS))
    )
    status = b"415 Unsupported Media Type" if authenticated else b"401 Unauthorized"
    assert answers == [b"HTTP/1.1 " + status] * BOMBS
    # The service has dealt with every byte sent (read, dropped, or refused by closing) once
    # a later request is answered; what it cost is its CPU time, whatever the load.
    assert (await _post_uname(service)).startswith(b"HTTP/1.1 200")
    spent = _cpu_seconds(service.pid) - before
    assert spent < CPU_BUDGET_S, f"{BOMBS} gzip bombs cost the service {spent:.2f}s of CPU"


async def _post_uname(service: LocalHostExec) -> bytes:
    body = b'{"command": "uname -a"}'
    head = (
        f"POST /exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {service.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()

    def send() -> bytes:
        with _connect(service) as sock:
            sock.sendall(head + body)
            return sock.recv(65536)

    return await asyncio.to_thread(send)


async def test_a_body_declared_over_the_cap_is_refused_before_it_is_sent(
    service: LocalHostExec,
) -> None:
    def send() -> bytes:
        with _connect(service) as sock:
            sock.sendall(
                f"POST /exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {service.token}\r\n"
                f"Content-Length: {2**30}\r\n\r\n".encode()
            )
            return sock.recv(65536)  # no byte of the body sent: answered all the same

    answer = await asyncio.to_thread(send)
    assert answer.startswith(b"HTTP/1.1 413"), answer


async def test_the_access_log_never_holds_a_query_string(service: LocalHostExec) -> None:
    secret = "qs-secret-" + service.token[:12]

    def send() -> list[bytes]:
        answers = []
        for target in (f"/healthz?token={secret}", f"/exec?access_token={secret}&x=1"):
            with _connect(service) as sock:
                sock.sendall(
                    f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                )
                answers.append(sock.recv(65536).split(b"\r\n", 1)[0])
        return answers

    assert await asyncio.to_thread(send) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 405 Method Not Allowed"]
    await wait_until(lambda: '"GET /exec' in service.log_path.read_text(), "the access line")
    log = service.log_path.read_text()
    assert secret not in log
    assert '"GET /healthz HTTP/1.1" 200' in log


async def test_malformed_requests_are_logged_in_one_rate_limited_line_each(
    service: LocalHostExec,
) -> None:
    refusals = 30

    def send() -> list[bytes]:
        answers = []
        for _ in range(refusals):
            with _connect(service) as sock:
                sock.sendall(
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
                )
                answers.append(sock.recv(65536).split(b"\r\n", 1)[0])
        return answers

    assert set(await asyncio.to_thread(send)) == {b"HTTP/1.0 400 Bad Request"}
    # A later request's access line comes after every refusal's line, if any was written.
    assert (await _post_uname(service)).startswith(b"HTTP/1.1 200")
    await wait_until(
        lambda: '"POST /exec HTTP/1.1" 200' in service.log_path.read_text(), "the access line"
    )
    log = service.log_path.read_text()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "refused a request from" in line]
    assert 1 <= len(lines) <= 10, lines
    assert "LineTooLong" in lines[0] or "BadHttpMessage" in lines[0], lines[0]


BODY_TIMEOUT_S = 1.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def short_body_timeout() -> AsyncIterator[LocalHostExec]:
    settings = {"HOST_EXEC_BODY_TIMEOUT": str(BODY_TIMEOUT_S)}
    async with LocalHostExec(settings=settings) as running:
        yield running


async def test_a_body_slower_than_the_limit_gets_408_and_its_connection_is_closed(
    short_body_timeout: LocalHostExec,
) -> None:
    service = short_body_timeout

    def trickle() -> tuple[bytes, int]:
        """Send a body a byte every 0.1 s, for up to 30 s; the answer and the bytes sent."""
        body = b'{"command": "uname -a"}' + b" " * 400
        head = (
            f"POST /exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {service.token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with _connect(service) as sock:
            sock.sendall(head)
            sock.settimeout(0.1)
            for sent in range(300):
                try:
                    answer = sock.recv(65536)
                except TimeoutError:
                    sock.sendall(body[sent : sent + 1])
                    continue
                sock.settimeout(30)
                with contextlib.suppress(ConnectionResetError):
                    while chunk := sock.recv(65536):  # then closed by the service
                        answer += chunk
                return answer, sent
        pytest.fail("no answer to a body trickled in for 30s")

    answer, sent = await asyncio.to_thread(trickle)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"took more than 1s" in answer
    assert sent < 300


MAX_CONNECTIONS = 4


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def few_connections() -> AsyncIterator[LocalHostExec]:
    settings = {
        "HOST_EXEC_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "HOST_EXEC_KEEPALIVE_TIMEOUT": "60",
    }
    async with LocalHostExec(settings=settings) as running:
        yield running


def _healthz(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock.recv(65536).split(b"\r\n", 1)[0]


async def test_connections_past_the_cap_are_accepted_only_as_others_close(
    few_connections: LocalHostExec,
) -> None:
    service = few_connections

    def flood() -> None:
        held = [_connect(service) for _ in range(MAX_CONNECTIONS)]
        waiting = [_connect(service) for _ in range(3)]  # queued by the kernel, not accepted
        try:
            for sock in held:  # each accepted and answered, then kept open
                assert _healthz(sock) == b"HTTP/1.1 200 OK"
            for sock in waiting:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            waiting[0].settimeout(1.0)
            with pytest.raises(TimeoutError):
                waiting[0].recv(65536)  # not answered while the cap is reached
            for sock in held:
                sock.close()
            for sock in waiting:  # accepted once others closed
                sock.settimeout(30)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        finally:
            for sock in held + waiting:
                sock.close()

    await asyncio.to_thread(flood)
    log = service.log_path.read_text()
    assert log.count("connections open, the most allowed") == 1, log


OPEN_FILES = 64
ROOT = Path(__file__).resolve().parents[2]


def _lower_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def _start_with_few_open_files(listener: socket.socket, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "HOST_EXEC_TOKEN": "t" * 32,
        "HOST_EXEC_LISTEN_FD": str(listener.fileno()),
        "HOST_EXEC_MAX_CONNECTIONS": "200",
        "HOST_EXEC_MAX_CONCURRENCY": "2",
        "OTEL_SDK_DISABLED": "true",
    }
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sel_otel.hostexec"],
            env=env,
            pass_fds=[listener.fileno()],
            stdout=log,
            stderr=log,
            preexec_fn=_lower_open_files,  # only sets a limit, before exec
        )


async def test_the_connection_cap_is_lowered_to_fit_the_open_file_limit(tmp_path: Path) -> None:
    """With 64 open files and a cap of 200, connections past what the files allow wait
    instead of failing to be accepted, again and again, each failure logged."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    log_path = tmp_path / "service.log"
    process = _start_with_few_open_files(listener, log_path)
    listener.close()

    def flood() -> list[bytes]:
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=30)]
        try:
            assert _healthz(sockets[0]) == b"HTTP/1.1 200 OK"  # the service is up
            sockets += [socket.create_connection(("127.0.0.1", port)) for _ in range(OPEN_FILES)]
            for sock in sockets[1:]:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sockets[0].close()
            answers = []
            for sock in sockets[1:]:  # each answered, the later ones as the first close
                sock.settimeout(30)
                answers.append(sock.recv(65536).split(b"\r\n", 1)[0])
                sock.close()
            return answers
        finally:
            for sock in sockets:
                sock.close()

    try:
        await wait_until(lambda: "listening on" in log_path.read_text(), "the service to start")
        answers = await asyncio.to_thread(flood)
    finally:
        process.terminate()
        process.wait(timeout=30)
    text = log_path.read_text()
    assert "HOST_EXEC_MAX_CONNECTIONS=200 does not fit the open-file limit of 64" in text, text
    assert set(answers) == {b"HTTP/1.1 200 OK"}
    assert "cannot accept" not in text and "Too many open files" not in text, text
