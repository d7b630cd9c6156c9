"""Assemble one process: settings and telemetry in; registry, cache, runtime and commands out."""

from __future__ import annotations

import logging
from types import TracebackType

from ._cache import cache_from_settings
from ._commands import CommandHandler
from ._registry import AgentRegistry
from ._runtime import AgentRuntime
from ._settings import Settings
from ._telemetry import Telemetry

logger = logging.getLogger(__name__)


class SelApp:
    """Owns the registry, cache and runtime of one process; use as `async with SelApp(...)`.

    Entering connects the cache, loads the agents and runs the cache warm-up list; leaving
    stops the runtime and closes the cache. Telemetry is passed in and stays its owner's to
    shut down.
    """

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.registry = AgentRegistry(settings.agents_dir)
        self.cache = cache_from_settings(
            settings, telemetry.meter_provider, telemetry.tracer_provider
        )
        self.runtime = AgentRuntime(
            self.registry,
            self.cache,
            settings=settings,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
        )
        self.commands = CommandHandler(
            self.runtime, telemetry.stats_reader, tracer_provider=telemetry.tracer_provider
        )

    async def __aenter__(self) -> SelApp:
        try:
            await self.cache.open()
            report = await self.runtime.reload()
            for path, reason in report.failed.items():
                logger.warning("agent file %s skipped: %s", path, reason)
            if self.settings.cache_warmup:
                results = await self.runtime.warm_up(self.settings.cache_warmup)
                for result in results:
                    if result.error is not None:
                        logger.warning("cache warm-up of %s failed: %s", result.agent, result.error)
        except BaseException:  # e.g. cancelled by SIGTERM during warm-up: close what opened
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.runtime.aclose()
        await self.cache.close()
