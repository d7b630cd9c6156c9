"""sel_otel: an observability-first agent runtime for the SEL Discord bot."""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._agent import Agent, first_word
    from ._app import SelApp, cache_from_settings
    from ._bot import SelBot, run_bot
    from ._bot_settings import BotSettings
    from ._cache import CacheOutcome, Lookup, ResultCache
    from ._cache_backend import MISS
    from ._commands import (
        CommandHandler,
        ListAgents,
        ReloadAgents,
        Reply,
        Request,
        RunAgent,
        ShowHelp,
        ShowHistory,
        ShowStats,
        format_result,
        parse_request,
    )
    from ._exceptions import (
        AgentBusy,
        AgentError,
        AgentFailed,
        AgentLoadError,
        AgentNotFound,
        AgentOutputError,
        AgentReplyError,
        AgentThreadsExhausted,
        AgentTimeout,
        ConfigError,
        SelOtelError,
        StatsStoreError,
    )
    from ._history import (
        ContentPolicy,
        History,
        HistoryEntry,
        HistoryPage,
        HistoryQuery,
        HistoryReader,
        HistorySink,
        HistoryStore,
    )
    from ._history_redis import RedisHistoryStore
    from ._history_setup import history_from_settings
    from ._history_sqlite import SqliteHistoryStore
    from ._markup import code_span
    from ._memory_cache import LRUMemoryCache
    from ._redis_cache import OutputSerializer, RedisResultBackend
    from ._registry import AgentRegistry, ReloadReport
    from ._runtime import AgentResult, AgentRuntime
    from ._settings import Settings
    from ._shared_cache import Claim, Claimed, SharedBackend
    from ._stats import AgentStats, format_stats, read_stats
    from ._stats_report import StatsReport
    from ._stats_shared import DeploymentStats
    from ._telemetry import Telemetry, stats_reader

#: Where each public name is defined. The package root imports none of it up front, so that
#: `import sel_otel.hostexec` (the host-exec service) loads no cache, Redis or Discord code:
#: a name is imported from its module on first use.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "_agent": (
        "Agent",
        "first_word",
    ),
    "_app": (
        "SelApp",
        "cache_from_settings",
    ),
    "_bot_settings": ("BotSettings",),
    "_cache": (
        "CacheOutcome",
        "Lookup",
        "ResultCache",
    ),
    "_cache_backend": ("MISS",),
    "_commands": (
        "CommandHandler",
        "ListAgents",
        "ReloadAgents",
        "Reply",
        "Request",
        "RunAgent",
        "ShowHelp",
        "ShowHistory",
        "ShowStats",
        "format_result",
        "parse_request",
    ),
    "_exceptions": (
        "AgentBusy",
        "AgentError",
        "AgentFailed",
        "AgentLoadError",
        "AgentNotFound",
        "AgentOutputError",
        "AgentReplyError",
        "AgentThreadsExhausted",
        "AgentTimeout",
        "ConfigError",
        "SelOtelError",
        "StatsStoreError",
    ),
    "_history": (
        "ContentPolicy",
        "History",
        "HistoryEntry",
        "HistoryPage",
        "HistoryQuery",
        "HistoryReader",
        "HistorySink",
        "HistoryStore",
    ),
    "_history_redis": ("RedisHistoryStore",),
    "_history_setup": ("history_from_settings",),
    "_history_sqlite": ("SqliteHistoryStore",),
    "_markup": ("code_span",),
    "_memory_cache": ("LRUMemoryCache",),
    "_redis_cache": (
        "OutputSerializer",
        "RedisResultBackend",
    ),
    "_registry": (
        "AgentRegistry",
        "ReloadReport",
    ),
    "_runtime": (
        "AgentResult",
        "AgentRuntime",
    ),
    "_settings": ("Settings",),
    "_shared_cache": (
        "Claim",
        "Claimed",
        "SharedBackend",
    ),
    "_stats": (
        "AgentStats",
        "format_stats",
        "read_stats",
    ),
    "_stats_report": ("StatsReport",),
    "_stats_shared": ("DeploymentStats",),
    "_telemetry": (
        "Telemetry",
        "stats_reader",
    ),
    "_bot": ("SelBot", "run_bot"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "MISS",
    "Agent",
    "AgentBusy",
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
    "AgentThreadsExhausted",
    "AgentTimeout",
    "BotSettings",
    "CacheOutcome",
    "Claim",
    "Claimed",
    "CommandHandler",
    "ConfigError",
    "ContentPolicy",
    "DeploymentStats",
    "History",
    "HistoryEntry",
    "HistoryPage",
    "HistoryQuery",
    "HistoryReader",
    "HistorySink",
    "HistoryStore",
    "LRUMemoryCache",
    "ListAgents",
    "Lookup",
    "OutputSerializer",
    "RedisHistoryStore",
    "RedisResultBackend",
    "ReloadAgents",
    "ReloadReport",
    "Reply",
    "Request",
    "ResultCache",
    "RunAgent",
    "SelApp",
    "SelBot",
    "SelOtelError",
    "Settings",
    "SharedBackend",
    "ShowHelp",
    "ShowHistory",
    "ShowStats",
    "SqliteHistoryStore",
    "StatsReport",
    "StatsStoreError",
    "Telemetry",
    "cache_from_settings",
    "code_span",
    "first_word",
    "format_result",
    "format_stats",
    "history_from_settings",
    "parse_request",
    "read_stats",
    "run_bot",
    "stats_reader",
]


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
