"""Host-exec settings: one frozen dataclass, built from `HOST_EXEC_*` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .._exceptions import ConfigError
from .._settings import _get, _positive

#: Directories searched for commands; deliberately not the service's own PATH, which may
#: hold user-writable directories.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Variables copied from the service's environment into every child's.
DEFAULT_CHILD_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TERM", "TZ")
MIN_TOKEN_LENGTH = 16

_TOKEN_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _listen_fd(raw: str) -> int:
    value = int(raw)
    if value < 3:
        raise ValueError("must be the number of an inherited listening socket (3 or more)")
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
        raise ConfigError("set HOST_EXEC_TOKEN or HOST_EXEC_TOKEN_FILE, not both")
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"HOST_EXEC_TOKEN_FILE={token_file!r} cannot be read: {exc}") from exc
    return token


@dataclass(frozen=True)
class HostExecSettings:
    """Settings of the host-exec service; everything but the token has a safe default."""

    token: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8765
    #: A listening socket inherited from the process that started the service; when set,
    #: host and port are not used.
    listen_fd: int | None = None
    allowlist: Path | None = None  # None: the built-in default list
    max_concurrency: int = 4
    max_output_bytes: int = 262_144
    max_body_bytes: int = 16_384
    max_command_length: int = 1024
    default_timeout: float = 15.0
    keepalive_timeout: float = 15.0  # seconds a connection may sit idle or send its headers
    child_path: str = DEFAULT_PATH
    child_env: tuple[str, ...] = DEFAULT_CHILD_ENV

    def __post_init__(self) -> None:
        if not self.token:
            raise ConfigError(
                "HOST_EXEC_TOKEN is not set: the host-exec service refuses to start without "
                f"a token ({_TOKEN_HINT})"
            )
        if len(self.token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"HOST_EXEC_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters ({_TOKEN_HINT})"
            )
        leaked = [name for name in self.child_env if name.startswith("HOST_EXEC_")]
        if leaked:
            raise ConfigError(f"HOST_EXEC_CHILD_ENV may not pass {', '.join(leaked)} to commands")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HostExecSettings:
        """Build settings from `HOST_EXEC_*` variables (`os.environ` when `env` is None)."""
        env = os.environ if env is None else env
        return cls(
            token=_read_token(env),
            host=_get(env, "HOST_EXEC_HOST", str.strip, cls.host),
            port=_get(env, "HOST_EXEC_PORT", _port, cls.port),
            listen_fd=_get(env, "HOST_EXEC_LISTEN_FD", _listen_fd, None),
            allowlist=_get(env, "HOST_EXEC_ALLOWLIST", _path, None),
            max_concurrency=_get(
                env, "HOST_EXEC_MAX_CONCURRENCY", _positive(int), cls.max_concurrency
            ),
            max_output_bytes=_get(
                env, "HOST_EXEC_MAX_OUTPUT_BYTES", _positive(int), cls.max_output_bytes
            ),
            max_body_bytes=_get(
                env, "HOST_EXEC_MAX_BODY_BYTES", _positive(int), cls.max_body_bytes
            ),
            max_command_length=_get(
                env, "HOST_EXEC_MAX_COMMAND_LENGTH", _positive(int), cls.max_command_length
            ),
            default_timeout=_get(env, "HOST_EXEC_TIMEOUT", _positive(float), cls.default_timeout),
            keepalive_timeout=_get(
                env, "HOST_EXEC_KEEPALIVE_TIMEOUT", _positive(float), cls.keepalive_timeout
            ),
            child_path=_get(env, "HOST_EXEC_PATH", str.strip, cls.child_path),
            child_env=_get(env, "HOST_EXEC_CHILD_ENV", _names, cls.child_env),
        )
