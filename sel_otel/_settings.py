"""Settings: one frozen dataclass, built from the environment in one place."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ._exceptions import ConfigError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


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


def _get(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from exc


def _positive(parse: Callable[[str], T]) -> Callable[[str], T]:
    def parse_positive(raw: str) -> T:
        value = parse(raw)
        if not value > 0 or value == float("inf"):  # type: ignore[operator]
            raise ValueError("must be a finite number greater than 0")
        return value

    return parse_positive


@dataclass(frozen=True)
class Settings:
    """Runtime settings; every field has a safe embedded default."""

    agents_dir: Path = Path("agents")
    cache_url: str = "memory://"
    cache_namespace: str = "sel"
    cache_max_entries: int = 500
    cache_timeout: float = 0.25
    cache_warmup: tuple[tuple[str, str], ...] = ()
    agent_timeout: float = 30.0
    agent_max_output: int = 1_000_000
    agent_threads: int = 32
    trace_content: bool = True
    trace_content_max: int = 256
    telemetry_shutdown_timeout: float = 2.0
    cache_lock_lease: float = 5.0
    cache_retry_after: float = 2.0
    log_level: str = "WARNING"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `SEL_*` variables (`os.environ` when `env` is None)."""
        env = os.environ if env is None else env
        return cls(
            agents_dir=_get(env, "SEL_AGENTS_DIR", Path, cls.agents_dir),
            cache_url=_get(env, "SEL_CACHE_URL", str.strip, cls.cache_url),
            cache_namespace=_get(env, "SEL_CACHE_NAMESPACE", str.strip, cls.cache_namespace),
            cache_max_entries=_get(
                env, "SEL_CACHE_MAX_ENTRIES", _positive(int), cls.cache_max_entries
            ),
            cache_timeout=_get(env, "SEL_CACHE_TIMEOUT", _positive(float), cls.cache_timeout),
            cache_warmup=_get(env, "SEL_CACHE_WARMUP", _parse_warmup, cls.cache_warmup),
            agent_timeout=_get(env, "SEL_AGENT_TIMEOUT", _positive(float), cls.agent_timeout),
            agent_max_output=_get(
                env, "SEL_AGENT_MAX_OUTPUT", _positive(int), cls.agent_max_output
            ),
            agent_threads=_get(env, "SEL_AGENT_THREADS", _positive(int), cls.agent_threads),
            trace_content=_get(env, "SEL_TRACE_CONTENT", _parse_bool, cls.trace_content),
            trace_content_max=_get(env, "SEL_TRACE_CONTENT_MAX", int, cls.trace_content_max),
            telemetry_shutdown_timeout=_get(
                env,
                "SEL_TELEMETRY_SHUTDOWN_TIMEOUT",
                _positive(float),
                cls.telemetry_shutdown_timeout,
            ),
            log_level=_get(env, "SEL_LOG_LEVEL", _parse_log_level, cls.log_level),
            cache_lock_lease=_get(
                env, "SEL_CACHE_LOCK_LEASE", _positive(float), cls.cache_lock_lease
            ),
            cache_retry_after=_get(
                env, "SEL_CACHE_RETRY_AFTER", _positive(float), cls.cache_retry_after
            ),
        )
