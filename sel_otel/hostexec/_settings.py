"""Host-exec settings: one frozen dataclass, built from `HOST_EXEC_*` variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .._exceptions import ConfigError
from .._settings import _count, _seconds, read_env, setting, variable

#: Directories searched for commands; deliberately not the service's own PATH, which may
#: hold user-writable directories.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Variables copied from the service's environment into every child's.
DEFAULT_CHILD_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TERM", "TZ")
MIN_TOKEN_LENGTH = 16
#: The highest file descriptor number a socket can have.
_MAX_FD = 2**31 - 1

_MAKE_TOKEN = (
    "make one with `(umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(32))' "
    "> host-exec.token)` and start the service with HOST_EXEC_TOKEN_FILE=host-exec.token"
)


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _listen_fd(raw: str) -> int:
    value = int(raw)
    if not 3 <= value <= _MAX_FD:
        raise ValueError(f"must be the number of an inherited listening socket (3 to {_MAX_FD})")
    return value


def _launcher_fd(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= _MAX_FD:
        raise ValueError(f"must be the number of an inherited pipe's read end (0 to {_MAX_FD})")
    return value


def _path(raw: str) -> Path:
    return Path(raw.strip())


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a variable name")
    return names


def _read_token(env: Mapping[str, str]) -> str:
    token = env.get("HOST_EXEC_TOKEN", "").strip()
    token_file = env.get("HOST_EXEC_TOKEN_FILE", "").strip()
    if token and token_file:
        raise ConfigError("set HOST_EXEC_TOKEN_FILE or HOST_EXEC_TOKEN, not both")
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"HOST_EXEC_TOKEN_FILE={token_file!r} cannot be read: {exc}") from exc
        if not token:
            raise ConfigError(f"HOST_EXEC_TOKEN_FILE={token_file!r} is empty ({_MAKE_TOKEN})")
    return token


@dataclass(frozen=True)
class HostExecSettings:
    """Settings of the host-exec service; everything but the token has a safe default."""

    token: str = field(
        repr=False,
        metadata=variable(
            ("HOST_EXEC_TOKEN_FILE", "HOST_EXEC_TOKEN"),
            _read_token,
            f"a file holding the bearer token (preferred: an environment is readable by every "
            f"process of the same user), or the token itself; {MIN_TOKEN_LENGTH}+ characters",
        ),
    )
    host: str = setting(
        "HOST_EXEC_HOST", str.strip, "127.0.0.1", "address to listen on (warns beyond loopback)"
    )
    port: int = setting("HOST_EXEC_PORT", _port, 8765, "port to listen on")
    #: A listening socket inherited from the process that started the service; when set,
    #: host and port are not used.
    listen_fd: int | None = setting(
        "HOST_EXEC_LISTEN_FD",
        _listen_fd,
        None,
        "a listening socket inherited from the process that started the service, used "
        "instead of host and port",
    )
    launcher_fd: int | None = setting(
        "HOST_EXEC_LAUNCHER_FD",
        _launcher_fd,
        None,
        "the read end of a pipe whose write end the process that started the service holds: "
        "the service stops at its end of file, when that process is gone, even killed "
        "outright",
    )
    allowlist: Path | None = setting(  # None: the built-in default list
        "HOST_EXEC_ALLOWLIST",
        _path,
        None,
        "path of an allow-list JSON file",
        shown_default="the built-in list",
    )
    max_concurrency: int = setting(
        "HOST_EXEC_MAX_CONCURRENCY", _count, 4, "commands running at once; more get 429"
    )
    max_output_bytes: int = setting(
        "HOST_EXEC_MAX_OUTPUT_BYTES",
        _count,
        262_144,
        "output cap in bytes, stdout and stderr together",
    )
    max_body_bytes: int = setting(
        "HOST_EXEC_MAX_BODY_BYTES", _count, 16_384, "largest request body, in bytes"
    )
    max_command_length: int = setting(
        "HOST_EXEC_MAX_COMMAND_LENGTH", _count, 1024, "longest command line, in characters"
    )
    default_timeout: float = setting(
        "HOST_EXEC_TIMEOUT",
        _seconds,
        15.0,
        "default seconds per command (an allow-list entry's timeout wins)",
    )
    keepalive_timeout: float = setting(  # seconds a connection may sit idle or send its headers
        "HOST_EXEC_KEEPALIVE_TIMEOUT",
        _seconds,
        15.0,
        "seconds a connection may stay idle, or take to send its headers, counted from its "
        "start or its last answer",
    )
    max_connections: int = setting(
        "HOST_EXEC_MAX_CONNECTIONS",
        _count,
        64,
        "connections open at once; more wait in the kernel's queue until others close",
    )
    body_timeout: float = setting(
        "HOST_EXEC_BODY_TIMEOUT",
        _seconds,
        10.0,
        "seconds a request body may take to arrive after its headers; a slower one gets 408 "
        "and its connection is closed",
    )
    child_path: str = setting(
        "HOST_EXEC_PATH", str.strip, DEFAULT_PATH, "the PATH commands are run with"
    )
    child_env: tuple[str, ...] = setting(
        "HOST_EXEC_CHILD_ENV",
        _names,
        DEFAULT_CHILD_ENV,
        "comma-separated variables the commands inherit from the service",
    )

    def __post_init__(self) -> None:
        if not self.token:
            raise ConfigError(
                "HOST_EXEC_TOKEN_FILE and HOST_EXEC_TOKEN are not set: the host-exec service "
                "refuses to start without a token. Set HOST_EXEC_TOKEN_FILE to a file holding it "
                f"(preferred), or HOST_EXEC_TOKEN to the token; {_MAKE_TOKEN}"
            )
        if len(self.token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"the token (HOST_EXEC_TOKEN_FILE or HOST_EXEC_TOKEN) is shorter than "
                f"{MIN_TOKEN_LENGTH} characters; {_MAKE_TOKEN}"
            )
        leaked = [name for name in self.child_env if name.startswith("HOST_EXEC_")]
        if leaked:
            raise ConfigError(f"HOST_EXEC_CHILD_ENV may not pass {', '.join(leaked)} to commands")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HostExecSettings:
        """Build settings from `HOST_EXEC_*` variables (`os.environ` when `env` is None)."""
        return cls(**read_env(cls, env))
