"""The host_exec agent end to end: agent → httpx → host-exec service process → command."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sel_otel import AgentRegistry, AgentRuntime, LRUMemoryCache, ResultCache, Settings
from sel_otel.hostexec._local import LocalHostExec
from tests.waiting import Gate, wait_until

RuntimeFor = Callable[..., Awaitable[AgentRuntime]]

AGENTS = Path(__file__).resolve().parent.parent / "agents"


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Gate:
    """A command in the allow-list that runs until the test opens this gate."""
    return Gate(tmp_path_factory.mktemp("gate") / "open")


@pytest.fixture(scope="module")
def allowlist(tmp_path_factory: pytest.TempPathFactory, gate: Gate) -> Path:
    path = tmp_path_factory.mktemp("allowlist") / "allowlist.json"
    commands = [
        {"argv": ["uname", "-a"]},
        {"argv": ["sleep", "30"], "timeout": 1},
        {"argv": gate.argv},
        {"argv": ["seq", "1", "20000"]},
        {"argv": ["false"]},
    ]
    path.write_text(json.dumps({"roots": [], "commands": commands}))
    return path


@pytest.fixture
async def service(allowlist: Path) -> AsyncIterator[LocalHostExec]:
    async with LocalHostExec(
        allowlist=allowlist, settings={"HOST_EXEC_MAX_CONCURRENCY": "1"}
    ) as svc:
        yield svc


@pytest.fixture
async def runtime_for() -> AsyncIterator[RuntimeFor]:
    """A runtime whose settings point the host_exec agent at a service: its URL and token
    (or token file), handed to the agent by its `setup(context)`."""
    made: list[AgentRuntime] = []

    async def point_at(url: str, token: str = "", token_file: Path | None = None) -> AgentRuntime:
        settings = Settings(
            host_exec_url=url, host_exec_token=token, host_exec_token_file=token_file
        )
        runtime = AgentRuntime(
            AgentRegistry(AGENTS), ResultCache(LRUMemoryCache(100)), settings=settings
        )
        made.append(runtime)
        await runtime.reload()
        return runtime

    yield point_at
    for runtime in made:
        await runtime.aclose()


@pytest.fixture
async def runtime() -> AsyncIterator[AgentRuntime]:
    """A runtime with default settings: no host-exec service configured."""
    registry = AgentRegistry(AGENTS)
    registry.reload()
    runtime = AgentRuntime(registry, ResultCache(LRUMemoryCache(100)))
    yield runtime
    await runtime.aclose()


async def test_allowed_command_replies_with_exit_code_and_output(
    service: LocalHostExec,
    runtime_for: RuntimeFor,
) -> None:
    runtime = await runtime_for(service.url, service.token)
    result = await runtime.run("host_exec", "uname -a")
    assert result.ok, result.error
    lines = (result.output or "").splitlines()
    assert lines[0] == "✅ `uname -a` (exit code: 0)"
    assert lines[1] == "```" and lines[2].startswith("Linux ") and lines[3] == "```"


async def test_tabs_and_line_breaks_in_a_command_are_read_as_spaces(
    service: LocalHostExec,
    runtime_for: RuntimeFor,
) -> None:
    runtime = await runtime_for(service.url, service.token)
    result = await runtime.run("host_exec", "uname\t-a\n")
    assert result.ok, result.error
    assert (result.output or "").splitlines()[0] == "✅ `uname -a` (exit code: 0)"


async def test_non_zero_exit_is_shown_as_a_warning(
    service: LocalHostExec,
    runtime_for: RuntimeFor,
) -> None:
    runtime = await runtime_for(service.url, service.token)
    assert (await runtime.run("host_exec", "false")).output == "⚠️ `false` (exit code: 1)"


async def test_cached_second_call_does_not_reach_the_service(
    allowlist: Path,
    runtime_for: RuntimeFor,
) -> None:
    async with LocalHostExec(allowlist=allowlist) as svc:
        runtime = await runtime_for(svc.url, svc.token)
        first = await runtime.run("host_exec", "uname -a")
    second = await runtime.run("host_exec", " uname -a ")  # the service is gone now
    assert (second.output, second.cached) == (first.output, True)


async def test_wrong_token_is_an_authentication_error(
    service: LocalHostExec,
    runtime_for: RuntimeFor,
) -> None:
    runtime = await runtime_for(service.url, "not-the-token")
    result = await runtime.run("host_exec", "uname -a")
    assert result.error is not None
    assert result.error.reply == "❌ Host exec authentication failed (check HOST_EXEC_TOKEN)"
    assert result.error.error_type == "HostExecAuthFailed"


async def test_token_is_read_from_a_file_when_the_variable_is_unset_and_reread_on_change(
    service: LocalHostExec,
    tmp_path: Path,
    runtime_for: RuntimeFor,
) -> None:
    token_file = tmp_path / "host_exec_token"
    token_file.write_text(service.token + "\n")
    runtime = await runtime_for(service.url, token_file=token_file)
    assert (await runtime.run("host_exec", "uname -a")).ok
    token_file.write_text("a-rotated-token-the-service-does-not-know")
    os.utime(token_file, ns=(0, token_file.stat().st_mtime_ns + 1_000_000_000))
    refused = await runtime.run("host_exec", "false")
    assert refused.error is not None
    assert refused.error.error_type == "HostExecAuthFailed"
    token_file.unlink()
    unreadable = await runtime.run("host_exec", "false")
    assert unreadable.error is not None
    assert unreadable.error.reply == (
        "❌ Host exec token file cannot be read (HOST_EXEC_TOKEN_FILE): No such file or directory"
    )


async def test_command_outside_the_allow_list_is_blocked_and_not_cached(
    service: LocalHostExec,
    runtime_for: RuntimeFor,
) -> None:
    runtime = await runtime_for(service.url, service.token)
    for _ in range(2):
        result = await runtime.run("host_exec", "uname -r")
        assert result.error is not None and not result.cached
        assert result.error.reply == "⚠️ Command blocked by the allow-list: `uname -r`"


async def test_timeout_is_reported_with_its_limit(
    service: LocalHostExec,
    runtime_for: RuntimeFor,
) -> None:
    runtime = await runtime_for(service.url, service.token)
    result = await runtime.run("host_exec", "sleep 30")
    assert result.error is not None
    assert result.error.reply == "❌ Command timed out after 1s: `sleep 30`"
    assert result.duration < 10


async def test_busy_service_answers_429_as_a_clear_message(
    service: LocalHostExec,
    runtime_for: RuntimeFor,
    gate: Gate,
) -> None:
    runtime = await runtime_for(service.url, service.token)
    gate.close()
    slow = asyncio.create_task(runtime.run("host_exec", gate.command))
    try:
        await wait_until(lambda: gate.waiting() == 1, "the slow command to take the only slot")
        busy = await runtime.run("host_exec", "seq 1 20000")
    finally:
        gate.open()
    assert (await slow).ok
    assert busy.error is not None and busy.error.reply.startswith("⏳ Host exec is busy")


async def test_long_output_is_cut_to_fit_a_discord_message(
    service: LocalHostExec,
    runtime_for: RuntimeFor,
) -> None:
    runtime = await runtime_for(service.url, service.token)
    output = (await runtime.run("host_exec", "seq 1 20000")).output or ""
    assert len(output) <= 2000
    assert output.count("```") == 2  # the code block is closed
    assert output.splitlines()[2] == "1"
    assert output.endswith("characters)_") and "showing " in output


@pytest.mark.parametrize("run", ["```", "````", "``````", "`` ```` `"])
def test_backticks_in_the_output_never_close_the_code_block(
    runtime: AgentRuntime, run: str
) -> None:
    # The service refuses backticks and backslashes in command lines, but a file may hold them.
    format_reply = runtime.registry.get("host_exec").function.__globals__["_format"]
    output = f"x{run}\n# heading\n[log in](https://example.invalid)"
    reply = format_reply("cat /var/log/app.log", {"exit_code": 0, "stdout": output})
    assert reply.count("```") == 2, reply  # only ours: the output's runs are broken up
    assert reply.replace("\u200b", "").count(run) >= 1  # and shown as they were


class CountingDoor:
    """A loopback listener that accepts connections, counting them, and closes them at once
    or, when `silent`, holds them open without ever answering."""

    def __init__(self, *, silent: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.silent = silent
        self.held: list[socket.socket] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.silent:
                self.held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()
        self._thread.join(timeout=5)


async def test_unreachable_service_is_retried_then_reported(
    runtime_for: RuntimeFor,
) -> None:
    door = CountingDoor()
    url = door.url
    try:
        runtime = await runtime_for(door.url, "token")
        result = await runtime.run("host_exec", "uname -a")
    finally:
        door.close()
    assert door.connections == 2
    assert result.error is not None
    assert result.error.reply.startswith(f"❌ Host exec service unreachable at {url}")


async def test_a_service_that_never_answers_is_not_sent_the_command_twice(
    runtime_for: RuntimeFor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    door = CountingDoor(silent=True)
    try:
        runtime = await runtime_for(door.url, "token")
        agent_globals = runtime.registry.get("host_exec").function.__globals__
        monkeypatch.setitem(agent_globals, "DEFAULT_TIMEOUT", 0.3)
        monkeypatch.setitem(agent_globals, "RESPONSE_MARGIN", 0.0)
        result = await runtime.run("host_exec", "uname -a")
    finally:
        door.close()
    assert door.connections == 1  # it may be running the command: no second attempt
    assert result.error is not None
    assert result.error.reply == "❌ No answer from the host-exec service within 0.3s: `uname -a`"


async def test_mutating_command_invalidates_the_host_exec_cache(
    service: LocalHostExec,
    runtime_for: RuntimeFor,
) -> None:
    runtime = await runtime_for(service.url, service.token)
    await runtime.run("host_exec", "uname -a")
    assert (await runtime.run("host_exec", "uname -a")).cached
    await runtime.run("host_exec", "rm -f /tmp/anything")  # refused, but may have changed state
    assert not (await runtime.run("host_exec", "uname -a")).cached


async def test_the_service_on_loopback_is_reached_direct_never_through_a_proxy(
    service: LocalHostExec, runtime_for: RuntimeFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as proxy:
        proxy.settimeout(10)
        seen: list[bytes] = []

        def capture() -> None:
            try:
                connection, _ = proxy.accept()
            except OSError:  # closed, or nothing came: the test says which
                return
            with connection:
                seen.append(connection.recv(65536))

        catcher = threading.Thread(target=capture, daemon=True)
        catcher.start()
        address = f"http://127.0.0.1:{proxy.getsockname()[1]}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, address)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        runtime = await runtime_for(service.url, service.token)
        result = await runtime.run("host_exec", "uname -a")
        proxy.shutdown(socket.SHUT_RDWR)  # wakes the catcher: whatever came has come
    catcher.join(15)
    assert result.ok, result
    assert seen == []  # neither the command nor the token went to the proxy


async def test_missing_configuration_is_a_clear_error(runtime: AgentRuntime) -> None:
    result = await runtime.run("host_exec", "uname -a")
    assert result.error is not None
    assert "set HOST_EXEC_URL" in result.error.reply
