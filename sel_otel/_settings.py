"""Settings: frozen dataclasses whose fields say which variable they are read from.

Each field is declared with `setting(...)`: its variable, its parser, its default and a line of
help. `read_env` builds a settings class from an environment and `settings_help` writes what
`--help` prints, both from those declarations, for the runtime, the bot and the host-exec service.
"""

from __future__ import annotations

import os
import textwrap
import threading
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ._exceptions import ConfigError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

#: The longest wait, in seconds, the platform's locks and sockets accept.
MAX_SECONDS = threading.TIMEOUT_MAX


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")


def _parse_log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _parse_warmup(raw: str) -> tuple[tuple[str, str], ...]:
    entries = []
    for item in raw.split(";"):
        name, _, query = item.strip().partition(" ")
        if name:
            entries.append((name, query.strip()))
    return tuple(entries)


def _count(raw: str) -> int:
    """A whole number of at least 1."""
    value = int(raw)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _seconds(raw: str) -> float:
    """A duration greater than 0, at most `MAX_SECONDS`."""
    value = float(raw)
    if not 0 < value <= MAX_SECONDS:  # also refuses nan and inf
        raise ValueError(f"must be a finite number greater than 0, at most {MAX_SECONDS:.0f}")
    return value


def _seconds_or_zero(raw: str) -> float:
    """A duration of 0 or more, at most `MAX_SECONDS`."""
    value = float(raw)
    if not 0 <= value <= MAX_SECONDS:  # also refuses nan and inf
        raise ValueError(f"must be a finite number of seconds >= 0, at most {MAX_SECONDS:.0f}")
    return value


def _whole(raw: str) -> int:
    """A whole number of 0 or more."""
    value = int(raw)
    if value < 0:
        raise ValueError("must be a whole number of 0 or more")
    return value


def _days(raw: str) -> float:
    """A number of days greater than 0."""
    value = float(raw)
    if not 0 < value <= MAX_SECONDS / 86_400:  # also refuses nan and inf
        raise ValueError("must be a finite number of days greater than 0")
    return value


def _history_input(raw: str) -> str:
    mode = raw.strip().lower()
    if mode not in ("full", "truncated", "hash", "none"):
        raise ValueError("expected full, truncated, hash or none")
    return mode


def _trace_url_template(raw: str) -> str:
    template = raw.strip()
    if "{trace_id}" not in template:
        raise ValueError("must contain {trace_id}, e.g. http://localhost:16686/trace/{trace_id}")
    return template


def _data_dir(env: Mapping[str, str]) -> Path:
    """`SEL_DATA_DIR`, else `$XDG_DATA_HOME/sel-otel`, else `~/.local/share/sel-otel`."""
    raw = env.get("SEL_DATA_DIR", "").strip()
    if raw:
        return Path(raw).expanduser()
    base = Path(env.get("XDG_DATA_HOME", "").strip())
    if not base.is_absolute():  # unset, or relative: which the XDG specification ignores
        base = Path.home() / ".local" / "share"
    return base / "sel-otel"


def _get(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from exc


_VARIABLE = "sel_otel.variable"  # the key of a field's `Variable` in its metadata


@dataclass(frozen=True)
class Variable:
    """How a settings field is read from the environment, and what `--help` says of it."""

    names: tuple[str, ...]  # the variables read, the preferred first
    help: str
    read: Callable[[Mapping[str, str]], Any]
    #: What `--help` shows as the default, when the field's own default says too little.
    shown_default: str | None = None


def variable(
    names: tuple[str, ...],
    read: Callable[[Mapping[str, str]], Any],
    help: str,
    shown_default: str | None = None,
) -> dict[str, Variable]:
    """Field metadata for a field read by `read` from the variables `names` (for fields that
    `setting` does not fit: one read from two variables, say)."""
    return {_VARIABLE: Variable(names, help, read, shown_default)}


def setting(
    name: str,
    parse: Callable[[str], T],
    default: T,
    help: str,
    *,
    shown_default: str | None = None,
    repr: bool = True,
) -> T:
    """A settings field read from the variable `name` by `parse`; `default` when unset or
    blank. A value `parse` refuses with ValueError is a ConfigError naming the variable."""

    def read(env: Mapping[str, str]) -> T:
        return _get(env, name, parse, default)

    return field(default=default, repr=repr, metadata=variable((name,), read, help, shown_default))


def read_env(cls: type[Any], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The values of the settings class `cls`'s fields, read from `env` (`os.environ` when
    None), as keyword arguments for `cls`."""
    env = os.environ if env is None else env
    return {f.name: f.metadata[_VARIABLE].read(env) for f in _declared(cls)}


def _declared(cls: type[Any]) -> list[Field[Any]]:
    return [f for f in fields(cls) if _VARIABLE in f.metadata]


def _shown(value: object) -> str:
    if value is MISSING:
        return "required"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | frozenset):
        value = ",".join(map(str, value))
    return f"{value}" if value not in (None, "") else "none"


_INDENT = " " * 6
_WIDTH = 88


def settings_help(cls: type[Any], title: str) -> str:
    """What `--help` prints of the variables the settings class `cls` reads: each with its
    default and its meaning, under `title`."""
    lines = [f"{title}:"]
    for f in _declared(cls):
        var: Variable = f.metadata[_VARIABLE]
        shown = var.shown_default or _shown(f.default)
        note = shown if shown == "required" else f"default: {shown}"
        lines.append(f"  {' or '.join(var.names)} ({note})")
        lines += textwrap.wrap(var.help, _WIDTH, initial_indent=_INDENT, subsequent_indent=_INDENT)
    return "\n".join(lines)


def help_paragraph(text: str) -> str:
    """`text` wrapped as `--help` wraps the settings."""
    return textwrap.fill(text, _WIDTH)


@dataclass(frozen=True)
class Settings:
    """Runtime settings; every field has a safe embedded default."""

    agents_dir: Path | None = setting(
        "SEL_AGENTS_DIR",
        Path,
        None,
        "a directory of your own agents, loaded after the shipped ones (sysinfo, calc, clock, "
        "host_exec): an agent there replaces a shipped one of the same name",
    )
    cache_url: str = setting(
        "SEL_CACHE_URL",
        str.strip,
        "memory://",
        "cache backend: memory://, redis://[[user]:password@]host[:port][/db], rediss://...",
    )
    cache_namespace: str = setting(
        "SEL_CACHE_NAMESPACE", str.strip, "sel", "key prefix, one per deployment"
    )
    cache_max_entries: int = setting(
        "SEL_CACHE_MAX_ENTRIES", _count, 500, "LRU bound of the memory cache"
    )
    cache_max_bytes: int = setting(
        "SEL_CACHE_MAX_BYTES",
        _count,
        64 * 1024 * 1024,
        "LRU bound of the memory cache, and of the near copies of a Redis cache, in bytes of "
        "keys and outputs",
    )
    cache_near_entries: int = setting(
        "SEL_CACHE_NEAR_ENTRIES",
        _whole,
        500,
        "with a Redis cache, entries each instance also keeps in its memory while Redis "
        "tracks them for it (CLIENT TRACKING); 0: every hit reads Redis",
    )
    cache_timeout: float = setting(
        "SEL_CACHE_TIMEOUT",
        _seconds,
        0.25,
        "seconds a remote cache operation may take (also Redis's connect timeout)",
    )
    cache_warmup: tuple[tuple[str, str], ...] = setting(
        "SEL_CACHE_WARMUP", _parse_warmup, (), ";-separated NAME INPUT calls to run at start"
    )
    agent_timeout: float = setting(
        "SEL_AGENT_TIMEOUT",
        _seconds,
        30.0,
        "seconds an agent call may take (an agent's TIMEOUT wins)",
    )
    agent_max_output: int = setting(
        "SEL_AGENT_MAX_OUTPUT",
        _count,
        1_000_000,
        "largest output, in characters, an agent may return",
    )
    agent_threads: int = setting(
        "SEL_AGENT_THREADS", _count, 32, "sync agents running at once (daemon threads)"
    )
    agent_threads_per_agent: int = setting(
        "SEL_AGENT_THREADS_PER_AGENT",
        _count,
        8,
        "of those, the most one agent may hold: one that hangs cannot take the threads of "
        "the others",
    )
    trace_content: bool = setting(
        "SEL_TRACE_CONTENT",
        _parse_bool,
        True,
        "record the agent input and error messages on the agent span (scrubbed of "
        "secret-looking values); false: error types and stack frames only",
    )
    trace_content_max: int = setting(
        "SEL_TRACE_CONTENT_MAX",
        _count,
        256,
        "characters of input, and of an error message, recorded on a span",
    )
    telemetry_shutdown_timeout: float = setting(
        "SEL_TELEMETRY_SHUTDOWN_TIMEOUT",
        _seconds,
        2.0,
        "seconds exit may spend delivering the last telemetry",
    )
    cache_lock_lease: float = setting(
        "SEL_CACHE_LOCK_LEASE",
        _seconds,
        5.0,
        "seconds a Redis single-flight lock lives unless its holder renews it",
    )
    cache_retry_after: float = setting(
        "SEL_CACHE_RETRY_AFTER",
        _seconds,
        2.0,
        "seconds Redis is skipped after a failure before one call probes it",
    )
    log_level: str = setting(
        "SEL_LOG_LEVEL",
        _parse_log_level,
        "WARNING",
        "log level: DEBUG, INFO, WARNING, ERROR or CRITICAL",
    )
    stats_redis_url: str = setting(
        "SEL_STATS_REDIS_URL",
        str.strip,
        "",
        "the Redis where every instance publishes its stats, so that /sel_agent_stats covers "
        "the whole deployment; none: this instance's figures alone",
        shown_default="SEL_CACHE_URL when it is a Redis URL, else none",
    )
    stats_publish_interval: float = setting(
        "SEL_STATS_PUBLISH_INTERVAL",
        _seconds,
        5.0,
        "seconds between two publishes of this instance's stats; an instance that stops "
        "publishing drops out of the stats 3 intervals later",
    )
    data_dir: Path = field(
        default_factory=lambda: _data_dir(os.environ),
        metadata=variable(
            ("SEL_DATA_DIR",),
            _data_dir,
            "where sel-otel keeps its data: the execution history, history.db",
            shown_default="$XDG_DATA_HOME/sel-otel, else ~/.local/share/sel-otel",
        ),
    )
    history: bool = setting(
        "SEL_HISTORY",
        _parse_bool,
        True,
        "record every agent call and refusal in the execution history",
    )
    history_input: str = setting(
        "SEL_HISTORY_INPUT",
        _history_input,
        "truncated",
        "what a history entry keeps of the input, scrubbed of secret-looking values: full, "
        "truncated (to SEL_HISTORY_INPUT_MAX characters), hash (sha256) or none",
    )
    history_input_max: int = setting(
        "SEL_HISTORY_INPUT_MAX", _count, 256, "characters of input a truncated entry keeps"
    )
    history_output_max: int = setting(
        "SEL_HISTORY_OUTPUT_MAX",
        _whole,
        0,
        "characters of output a history entry keeps, scrubbed; 0: no output",
    )
    history_max_age: float = setting(
        "SEL_HISTORY_MAX_AGE", _days, 90.0, "days a history entry is kept"
    )
    history_max_rows: int = setting(
        "SEL_HISTORY_MAX_ROWS", _count, 1_000_000, "entries history.db keeps, the newest"
    )
    history_flush_interval: float = setting(
        "SEL_HISTORY_FLUSH_INTERVAL",
        _seconds,
        1.0,
        "seconds between writes of the history: the most a crash of the process may lose",
    )
    history_redis_url: str = setting(
        "SEL_HISTORY_REDIS_URL",
        str.strip,
        "",
        "the Redis whose stream shares the history between instances; none: this "
        "instance's history.db alone",
        shown_default="SEL_CACHE_URL when it is a Redis URL, else none",
    )
    history_redis_max_len: int = setting(
        "SEL_HISTORY_REDIS_MAX_LEN",
        _count,
        100_000,
        "entries the shared stream keeps (about: whole stream nodes are trimmed)",
    )
    trace_url_template: str | None = setting(
        "SEL_TRACE_URL_TEMPLATE",
        _trace_url_template,
        None,
        "a history entry's link to its trace, {trace_id} replaced: for Jaeger, "
        "http://localhost:16686/trace/{trace_id}",
    )
    serve_token: str = setting(
        "SEL_SERVE_TOKEN",
        str.strip,
        "",
        "the bearer token sel-otel serve asks of a request that runs a privileged agent, "
        "reloads the agents or reads the history",
        shown_default="none: no request may",
        repr=False,
    )
    host_exec_url: str = setting(
        "HOST_EXEC_URL",
        lambda raw: raw.strip().rstrip("/"),
        "",
        "the host-exec service's base URL, for the host_exec agent",
        shown_default="none: a local service is started for the agent",
    )
    host_exec_token_file: Path | None = setting(
        "HOST_EXEC_TOKEN_FILE",
        lambda raw: Path(raw.strip()),
        None,
        "a file holding the host-exec token (preferred to HOST_EXEC_TOKEN), read at each "
        "call so that a rotated token is used at once",
    )
    host_exec_token: str = setting(
        "HOST_EXEC_TOKEN",
        str.strip,
        "",
        "the host-exec token itself, when HOST_EXEC_TOKEN_FILE is not set",
        repr=False,
    )

    def __post_init__(self) -> None:
        if self.host_exec_token and self.host_exec_token_file is not None:
            # The rule of the service itself (`hostexec/_settings.py`).
            raise ConfigError("set HOST_EXEC_TOKEN_FILE or HOST_EXEC_TOKEN, not both")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `SEL_*` and `HOST_EXEC_URL`/`_TOKEN*` variables (`os.environ`
        when `env` is None)."""
        return cls(**read_env(cls, env))

    def shared_redis_url(self, url: str) -> str | None:
        """The Redis a `SEL_*_REDIS_URL` setting's value `url` names: unset, the cache's when
        it is on Redis; `none`: None."""
        if url.lower() == "none":
            return None
        if not url:
            cache = self.cache_url
            return cache if urlsplit(cache).scheme in ("redis", "rediss") else None
        return url
