"""HostExecSettings: built from `HOST_EXEC_*` variables, refusing to exist without a token."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sel_otel._exceptions import ConfigError
from sel_otel.hostexec import HostExecSettings

TOKEN = "t" * 32


def test_defaults_listen_on_loopback() -> None:
    settings = HostExecSettings.from_env({"HOST_EXEC_TOKEN": TOKEN})
    assert settings.host == "127.0.0.1"
    assert settings.allowlist is None
    assert settings.default_timeout == 15.0
    assert settings.keepalive_timeout == 15.0
    assert "PATH" not in settings.child_env


def test_values_are_read_from_the_environment(tmp_path: Path) -> None:
    settings = HostExecSettings.from_env(
        {
            "HOST_EXEC_TOKEN": TOKEN,
            "HOST_EXEC_HOST": "0.0.0.0",
            "HOST_EXEC_PORT": "9000",
            "HOST_EXEC_ALLOWLIST": str(tmp_path / "list.json"),
            "HOST_EXEC_MAX_CONCURRENCY": "7",
            "HOST_EXEC_MAX_OUTPUT_BYTES": "1000",
            "HOST_EXEC_MAX_BODY_BYTES": "2000",
            "HOST_EXEC_MAX_COMMAND_LENGTH": "300",
            "HOST_EXEC_TIMEOUT": "2.5",
            "HOST_EXEC_KEEPALIVE_TIMEOUT": "4",
            "HOST_EXEC_PATH": "/bin",
            "HOST_EXEC_CHILD_ENV": "LANG, TZ",
        }
    )
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert settings.allowlist == tmp_path / "list.json"
    assert settings.max_concurrency == 7
    assert (settings.max_output_bytes, settings.max_body_bytes) == (1000, 2000)
    assert (settings.max_command_length, settings.default_timeout) == (300, 2.5)
    assert settings.keepalive_timeout == 4.0
    assert (settings.child_path, settings.child_env) == ("/bin", ("LANG", "TZ"))


def test_missing_token_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ConfigError, match="HOST_EXEC_TOKEN_FILE and HOST_EXEC_TOKEN are not set"):
        HostExecSettings.from_env({})


def test_short_token_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"shorter than 16 characters; make one with.*python3"):
        HostExecSettings.from_env({"HOST_EXEC_TOKEN": "secret"})


def test_token_is_read_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    settings = HostExecSettings.from_env({"HOST_EXEC_TOKEN_FILE": str(tmp_path / "token")})
    assert settings.token == TOKEN


def test_token_and_token_file_together_are_refused(tmp_path: Path) -> None:
    env = {"HOST_EXEC_TOKEN": TOKEN, "HOST_EXEC_TOKEN_FILE": str(tmp_path / "token")}
    with pytest.raises(ConfigError, match="not both"):
        HostExecSettings.from_env(env)


def test_token_is_not_in_the_repr() -> None:
    assert TOKEN not in repr(HostExecSettings(token=TOKEN))


def test_token_variables_cannot_be_passed_to_children() -> None:
    env = {"HOST_EXEC_TOKEN": TOKEN, "HOST_EXEC_CHILD_ENV": "LANG,HOST_EXEC_TOKEN"}
    with pytest.raises(ConfigError, match="may not pass HOST_EXEC_TOKEN"):
        HostExecSettings.from_env(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HOST_EXEC_PORT", "70000"),
        ("HOST_EXEC_MAX_CONCURRENCY", "0"),
        ("HOST_EXEC_TIMEOUT", "-1"),
        ("HOST_EXEC_MAX_OUTPUT_BYTES", "lots"),
        ("HOST_EXEC_LISTEN_FD", "1"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        HostExecSettings.from_env({"HOST_EXEC_TOKEN": TOKEN, name: value})


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "sel_otel.hostexec"],
        [sys.executable, "-m", "sel_otel", "host-exec"],
    ],
    ids=["python -m sel_otel.hostexec", "sel-otel host-exec"],
)
def test_service_process_refuses_to_start_without_a_token(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_EXEC_")}
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 2
    assert "HOST_EXEC_TOKEN_FILE and HOST_EXEC_TOKEN are not set" in completed.stderr
    # Both variables, the preferred file first, and a command that makes a token with the
    # interpreter a newcomer has (Debian has no `python`).
    assert "Set HOST_EXEC_TOKEN_FILE to a file holding it (preferred), or HOST_EXEC_TOKEN" in (
        completed.stderr
    )
    assert "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'" in completed.stderr
    assert "python -c" not in completed.stderr
    assert "Traceback" not in completed.stderr


def test_an_empty_token_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ConfigError, match=r"HOST_EXEC_TOKEN_FILE=.*token' is empty.*python3"):
        HostExecSettings.from_env({"HOST_EXEC_TOKEN_FILE": str(tmp_path / "token")})


def _start(env: dict[str, str], pass_fds: tuple[int, ...]) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOST_EXEC_")}
    return subprocess.Popen(
        [sys.executable, "-m", "sel_otel.hostexec"],
        env={**base, "HOST_EXEC_TOKEN": TOKEN, **env},
        pass_fds=pass_fds,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_service_listens_on_an_inherited_socket_instead_of_host_and_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        fd = str(listener.fileno())
        # HOST_EXEC_PORT=1 could not be bound: only the inherited socket can answer.
        process = _start({"HOST_EXEC_LISTEN_FD": fd, "HOST_EXEC_PORT": "1"}, (listener.fileno(),))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the service never answered"
                time.sleep(0.05)
        assert response.status_code == 200
    finally:
        process.terminate()
        try:
            process.communicate(timeout=20)
        finally:
            process.kill()
            process.wait()


def test_an_inherited_descriptor_that_is_no_socket_is_a_clear_error(tmp_path: Path) -> None:
    with (tmp_path / "not-a-socket").open("w") as file:
        fd = file.fileno()
        process = _start({"HOST_EXEC_LISTEN_FD": str(fd)}, (fd,))
        try:
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()  # never left running when it does not exit as it should
            process.wait()
    assert process.returncode == 2
    assert f"HOST_EXEC_LISTEN_FD={fd} is not a usable socket" in stderr
