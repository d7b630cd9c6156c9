"""sel_otel: an observability-first agent runtime for the SEL Discord bot.

The public API is what agents and embedders write: the agent contract (`Agent`, `code_span`,
`first_word`, `AgentReplyError`), the runtime and its results, the errors, the settings,
telemetry and the app. Everything else lives in private modules and may change.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._agent import Agent, AgentContext, first_word
    from ._app import SelApp
    from ._bot import SelBot
    from ._bot_settings import BotSettings
    from ._cache import ResultCache
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
    from ._markup import code_span
    from ._memory_cache import LRUMemoryCache
    from ._registry import AgentRegistry
    from ._runtime import AgentResult, AgentRuntime
    from ._settings import Settings
    from ._stats import AgentStats, read_stats
    from ._telemetry import Telemetry, stats_reader

#: Where each public name is defined. The package root imports none of it up front, so that
#: `import sel_otel.hostexec` (the host-exec service) loads no cache, Redis or Discord code:
#: a name is imported from its module on first use.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "_agent": ("Agent", "AgentContext", "first_word"),
    "_app": ("SelApp",),
    "_bot": ("SelBot",),  # imports discord.py, which only the bot needs
    "_bot_settings": ("BotSettings",),
    "_cache": ("ResultCache",),
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
    "_markup": ("code_span",),
    "_memory_cache": ("LRUMemoryCache",),
    "_registry": ("AgentRegistry",),
    "_runtime": ("AgentResult", "AgentRuntime"),
    "_settings": ("Settings",),
    "_stats": ("AgentStats", "read_stats"),
    "_telemetry": ("Telemetry", "stats_reader"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "Agent",
    "AgentBusy",
    "AgentContext",
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
    "ConfigError",
    "LRUMemoryCache",
    "ResultCache",
    "SelApp",
    "SelBot",
    "SelOtelError",
    "Settings",
    "StatsStoreError",
    "Telemetry",
    "code_span",
    "first_word",
    "read_stats",
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
