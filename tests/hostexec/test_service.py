"""The host-exec service as a real process on loopback, with the test allow-list."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from sel_otel.hostexec._local import LocalHostExec
from tests.waiting import Gate, wait_until

from .conftest import (
    ESCAPE_GROUP,
    MAX_CONCURRENCY,
    SHORT_TIMEOUT_S,
    SPAWN_TREE,
    not_a_program,
    post_exec,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_OUTPUT_BYTES = 262_144  # the service's default cap
RSS_GROWTH_LIMIT_KB = 4096


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _environment_names(pid: int) -> set[str]:
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    return {entry.partition(b"=")[0].decode() for entry in environ.split(b"\0") if entry}


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def _ended(pids: list[int]) -> None:
    """Return once none of `pids` runs (they were killed: nothing else ends them)."""
    await wait_until(lambda: not any(_running(pid) for pid in pids), f"pids {pids} to end")


class _LogSince:
    """What the service logs from now on: its warnings tell how a command was ended."""

    #: Logged when a command's output was still held open by processes outside its group.
    PIPE_HOLDERS_KILLED = "left 1 process(es) outside its process group holding its output open"

    def __init__(self, service: LocalHostExec) -> None:
        self._path = service.log_path
        self._start = self._path.stat().st_size

    def text(self) -> str:
        return self._path.read_bytes()[self._start :].decode(errors="replace")

    def warnings(self) -> list[str]:
        return [line for line in self.text().splitlines() if " WARNING " in line]


async def test_healthz_answers_without_a_token(service: LocalHostExec) -> None:
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_allowed_command_runs_and_replies_with_its_result(service: LocalHostExec) -> None:
    response = await post_exec(service, {"command": "uname -a"})
    assert response.status_code == 200
    body = response.json()
    assert body["exit_code"] == 0
    assert os.uname().release in body["stdout"]
    assert body["stderr"] == ""
    assert (body["truncated"], body["timed_out"]) == (False, False)
    assert 0 < body["duration_ms"] < 5000


async def test_typed_operand_reaches_the_command(service: LocalHostExec, file_root: Path) -> None:
    response = await post_exec(service, {"command": f"cat {file_root}/hello.txt"})
    assert response.status_code == 200
    assert response.json()["stdout"] == "hello\n"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer wrong-token-of-a-decent-length", "Basic dXNlcjpwYXNz"],
)
async def test_missing_or_wrong_token_is_401(
    service: LocalHostExec, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        response = await client.post("/exec", json={"command": "uname -a"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "stdout" not in response.json()


def _raw_request(service: LocalHostExec, request: bytes) -> bytes:
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(65536)


@pytest.mark.parametrize("token", [b"\xff\xfe", b"\xc3\xa9t\xc3\xa9", b"\x80" * 40])
async def test_token_that_is_not_ascii_is_401(service: LocalHostExec, token: bytes) -> None:
    body = b'{"command": "uname -a"}'
    request = (
        b"POST /exec HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + token + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    answer = await asyncio.to_thread(_raw_request, service, request)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


async def test_token_with_different_case_scheme_is_accepted(service: LocalHostExec) -> None:
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        response = await client.post(
            "/exec",
            json={"command": "uname -a"},
            headers={"Authorization": f"bearer {service.token}"},
        )
    assert response.status_code == 200


async def test_command_outside_the_allowlist_is_403_naming_it(service: LocalHostExec) -> None:
    response = await post_exec(service, {"command": "rm -rf /"})
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "command not allowed: rm -rf /"
    assert (body["reason"], body["command"]) == ("not_allowed", "rm -rf /")


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"cmd": "uname -a"}', b'{"command": 1}', b"[" * 10_000]
)
async def test_malformed_body_is_400(service: LocalHostExec, body: bytes) -> None:
    response = await post_exec(service, body)
    assert response.status_code == 400
    assert "command" in response.json()["error"]


async def test_body_over_the_cap_is_413(service: LocalHostExec) -> None:
    within = await post_exec(service, {"command": "uname -a", "padding": "x" * 15_000})
    assert within.status_code == 200
    over = await post_exec(service, {"command": "uname -a", "padding": "x" * 20_000})
    assert over.status_code == 413
    assert "16384" in over.json()["error"]


async def test_child_environment_holds_no_token_and_an_empty_fresh_home(
    service: LocalHostExec,
) -> None:
    first = (await post_exec(service, {"command": "env"})).json()["stdout"]
    second = (await post_exec(service, {"command": "env"})).json()["stdout"]
    env = dict(line.split("=", 1) for line in first.splitlines())
    assert service.token not in first
    assert not [name for name in env if name.startswith("HOST_EXEC_")]
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    home = env["HOME"]
    assert home != os.environ.get("HOME")
    assert env["XDG_CONFIG_HOME"] == env["XDG_CONFIG_DIRS"] == home
    assert f"HOME={home}" not in second  # a fresh directory per command
    assert not await asyncio.to_thread(os.path.exists, home)  # removed after the command
    listing = await post_exec(service, {"command": "ls -A"})  # runs in its empty HOME
    assert listing.json() | {"duration_ms": 0} == {
        "exit_code": 0,
        "stdout": "",
        "stderr": "",
        "truncated": False,
        "timed_out": False,
        "duration_ms": 0,
    }


async def test_timeout_kills_the_whole_process_group(service: LocalHostExec) -> None:
    command = shlex.join([sys.executable, str(SPAWN_TREE)])
    log = _LogSince(service)
    started = time.perf_counter()
    response = await post_exec(service, {"command": command})
    elapsed = time.perf_counter() - started
    assert response.status_code == 504
    body = response.json()
    # Killed (SIGKILL) at its timeout, not waited for: the tree would sleep for 60 s.
    assert (body["timed_out"], body["timeout_s"], body["exit_code"]) == (True, 1.0, -9)
    assert elapsed >= SHORT_TIMEOUT_S
    pids = [int(pid) for pid in body["stdout"].split()]
    assert len(pids) == 2  # the child and its grandchild, printed before the timeout
    await _ended(pids)
    # The grandchild went with the group: not found later by the output pipe it held.
    assert log.warnings() == []


async def test_process_escaping_the_group_with_the_output_open_holds_neither_answer_nor_slot(
    service: LocalHostExec,
) -> None:
    command = shlex.join([sys.executable, str(ESCAPE_GROUP)])
    log = _LogSince(service)
    responses = await asyncio.gather(
        *(post_exec(service, {"command": command}) for _ in range(MAX_CONCURRENCY))
    )
    for response in responses:
        assert response.status_code == 504
        assert response.json()["timed_out"] is True
    # Each answer came while its sleeper still held the output open (the service found it
    # there and killed it), not when the sleeper let go after its 20 s.
    assert log.text().count(_LogSince.PIPE_HOLDERS_KILLED) == MAX_CONCURRENCY
    after = await post_exec(service, {"command": "uname -a"})  # every slot is free again
    assert after.status_code == 200
    await _ended([int(response.json()["stdout"]) for response in responses])


async def test_command_that_exits_leaving_an_escaped_process_is_answered_at_once(
    service: LocalHostExec,
) -> None:
    command = shlex.join([sys.executable, str(ESCAPE_GROUP), "exit"])
    log = _LogSince(service)
    response = await post_exec(service, {"command": command})
    body = response.json()
    assert response.status_code == 200
    assert (body["exit_code"], body["timed_out"]) == (0, False)  # not the 10 s timeout
    # Answered while the sleeper still held the output open (killed then), not after its 20 s.
    assert log.text().count(_LogSince.PIPE_HOLDERS_KILLED) == 1
    await _ended([int(body["stdout"])])


async def test_program_that_cannot_be_executed_is_reported_not_a_server_error(
    service: LocalHostExec, test_allowlist: Path
) -> None:
    program = not_a_program(test_allowlist.parent)
    response = await post_exec(service, {"command": str(program)})
    assert response.status_code == 200
    body = response.json()
    assert body["exit_code"] == 126
    assert body["stderr"] == f"{program}: cannot run: Exec format error\n"


async def test_timed_out_command_is_answered_at_its_timeout(service: LocalHostExec) -> None:
    log = _LogSince(service)
    response = await post_exec(service, {"command": "sleep 30"})
    assert response.status_code == 504
    body = response.json()
    assert (body["timed_out"], body["timeout_s"], body["exit_code"]) == (True, 1.0, -9)
    assert body["duration_ms"] >= SHORT_TIMEOUT_S * 1000
    # Nothing held the answer past the kill: no output pipe left open for the drain grace,
    # no process that would not exit.
    assert log.warnings() == []


async def test_huge_output_is_capped_without_growing_the_service(service: LocalHostExec) -> None:
    await post_exec(service, {"command": "yes"})  # warm up buffers and code paths
    before = _rss_kb(service.pid)
    for _ in range(5):
        response = await post_exec(service, {"command": "yes"})
        body = response.json()
        assert response.status_code == 200
        # Killed (SIGKILL) at the cap, before its 15 s timeout.
        assert (body["truncated"], body["timed_out"], body["exit_code"]) == (True, False, -9)
        assert len(body["stdout"]) == MAX_OUTPUT_BYTES
        assert set(body["stdout"]) == {"y", "\n"}
    assert _rss_kb(service.pid) - before < RSS_GROWTH_LIMIT_KB


async def test_excess_concurrent_commands_get_429_at_once(
    service: LocalHostExec, gate: Gate
) -> None:
    busy = [
        asyncio.create_task(post_exec(service, {"command": gate.command}))
        for _ in range(MAX_CONCURRENCY)
    ]
    await wait_until(lambda: gate.waiting() == MAX_CONCURRENCY, "every slot to be taken")
    excess = await post_exec(service, {"command": "uname -a"})
    # Refused at once: answered while the commands holding the slots still run (they end
    # only when the gate opens), not queued behind them.
    assert not [task for task in busy if task.done()]
    assert excess.status_code == 429
    assert "too many" in excess.json()["error"]
    gate.open()
    assert [r.status_code for r in await asyncio.gather(*busy)] == [200] * MAX_CONCURRENCY
    after = await post_exec(service, {"command": "uname -a"})
    assert after.status_code == 200


async def test_requests_without_the_token_fill_the_log_a_few_lines_a_minute() -> None:
    async with LocalHostExec() as service:  # a log of this test's requests alone
        for _ in range(40):
            refused = await post_exec(service, {"command": "uname -a"}, token=None)
            assert refused.status_code == 401
        assert (await post_exec(service, {"command": "uname -a"})).status_code == 200

        def access_lines(status: int) -> int:
            log = service.log_path.read_text(encoding="utf-8")
            return sum(f'"POST /exec HTTP/1.1" {status} ' in line for line in log.splitlines())

        await wait_until(lambda: access_lines(200) == 1, "the answer's line in the log")
        assert access_lines(401) == 10


async def test_token_never_reaches_the_log(service: LocalHostExec) -> None:
    await post_exec(service, {"command": "uname -a"})
    log = service.log_path.read_text()
    assert "exec uname exit=0" in log
    assert service.token not in log


async def test_the_local_service_runs_with_the_operators_host_exec_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    allowlist = tmp_path / "allowlist.json"
    allowlist.write_text(json.dumps({"commands": [{"argv": ["uname", "-a"]}]}))
    monkeypatch.setenv("HOST_EXEC_ALLOWLIST", str(allowlist))
    monkeypatch.setenv("HOST_EXEC_MAX_OUTPUT_BYTES", "16")
    monkeypatch.setenv("HOST_EXEC_PORT", "1")  # chosen by the launcher: not taken
    async with LocalHostExec() as local:
        assert (await post_exec(local, {"command": "ps aux"})).status_code == 403
        answer = await post_exec(local, {"command": "uname -a"})
    assert answer.status_code == 200
    assert len(answer.json()["stdout"].encode()) <= 16


async def test_the_local_service_inherits_none_of_its_parents_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "discord-secret")
    monkeypatch.setenv("SEL_CACHE_URL", "redis://:password@127.0.0.1:1/0")
    monkeypatch.setenv("HOST_EXEC_TOKEN", "a-token-the-parent-holds")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sel-bot")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    monkeypatch.setenv("TERM", "xterm")  # passed on to commands by default
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/python/lib")  # a shared libpython needs it
    async with LocalHostExec() as local:
        names = _environment_names(local.pid)
    assert names.isdisjoint({"DISCORD_TOKEN", "SEL_CACHE_URL", "HOST_EXEC_TOKEN"})
    assert "OTEL_SERVICE_NAME" not in names  # the child names itself sel-host-exec
    assert {"PATH", "OTEL_RESOURCE_ATTRIBUTES", "HOST_EXEC_TOKEN_FILE"} <= names
    assert {"TERM", "LD_LIBRARY_PATH"} <= names
