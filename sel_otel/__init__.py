"""sel_otel: an observability-first agent runtime for the SEL Discord bot."""

from typing import TYPE_CHECKING

from ._agent import Agent, first_word
from ._app import SelApp, cache_from_settings
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

if TYPE_CHECKING:
    from ._bot import SelBot, run_bot

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
    # The Discord frontend imports discord.py, which only the bot needs: load it on first use.
    if name in {"SelBot", "run_bot"}:
        from . import _bot

        return getattr(_bot, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
