"""sel_otel: an observability-first agent runtime for the SEL Discord bot."""

from ._agent import Agent
from ._app import SelApp
from ._cache import MISS, CacheOutcome, Lookup, LRUMemoryCache, ResultCache, cache_from_settings
from ._commands import CommandHandler, Reply, format_result, parse_request
from ._exceptions import (
    AgentError,
    AgentFailed,
    AgentLoadError,
    AgentNotFound,
    AgentOutputError,
    AgentReplyError,
    AgentTimeout,
    ConfigError,
    SelOtelError,
)
from ._registry import AgentRegistry, ReloadReport
from ._runtime import AgentResult, AgentRuntime
from ._settings import Settings
from ._stats import AgentStats, format_stats, read_stats
from ._telemetry import Telemetry, stats_reader

__all__ = [
    "MISS",
    "Agent",
    "AgentError",
    "AgentFailed",
    "AgentLoadError",
    "AgentNotFound",
    "AgentOutputError",
    "AgentRegistry",
    "AgentReplyError",
    "AgentResult",
    "AgentRuntime",
    "AgentStats",
    "AgentTimeout",
    "CacheOutcome",
    "CommandHandler",
    "ConfigError",
    "LRUMemoryCache",
    "Lookup",
    "ReloadReport",
    "Reply",
    "ResultCache",
    "SelApp",
    "SelOtelError",
    "Settings",
    "Telemetry",
    "cache_from_settings",
    "format_result",
    "format_stats",
    "parse_request",
    "read_stats",
    "stats_reader",
]
