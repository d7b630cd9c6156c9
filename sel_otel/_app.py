"""Assemble one process: settings and telemetry in; registry, cache, runtime and commands out."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
from types import TracebackType

from opentelemetry import metrics, trace

from . import _semconv as names
from ._cache import ResultCache
from ._commands import CommandHandler
from ._exceptions import ConfigError
from ._history_setup import history_from_settings
from ._memory_cache import LRUMemoryCache
from ._registry import AgentRegistry, agent_directories
from ._runtime import AgentRuntime
from ._settings import Settings
from ._stats_shared import deployment_stats
from ._telemetry import Telemetry, package_version

logger = logging.getLogger(__name__)

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]+")


class SelApp:
    """Owns the registry, cache and runtime of one process; use as `async with SelApp(...)`.

    Entering connects the cache, loads the agents, runs the cache warm-up list, starts
    publishing the stats for the deployment and freezes the heap (`freeze_heap`); leaving
    stops the runtime, closes the cache, writes the last history entries, publishes the last
    stats and gives the heap back (unfrozen once no app of the process runs). Telemetry is
    passed in and stays its owner's to shut down.
    """

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.registry = AgentRegistry(*agent_directories(settings.agents_dir))
        self.cache = cache_from_settings(
            settings, telemetry.meter_provider, telemetry.tracer_provider
        )
        self.history = history_from_settings(settings, telemetry)
        self.runtime = AgentRuntime(
            self.registry,
            self.cache,
            settings=settings,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            history=self.history,
        )
        self.stats = deployment_stats(settings, telemetry)
        self._holds_heap = False
        self.commands = CommandHandler(
            self.runtime,
            telemetry.stats_reader,
            tracer_provider=telemetry.tracer_provider,
            stats=self.stats,
        )

    async def __aenter__(self) -> SelApp:
        try:
            if self.history is not None:
                self.history.open()
            await self.cache.open()
            report = await self.runtime.reload()
            for path, reason in report.failed.items():
                logger.warning("agent file %s skipped: %s", path, reason)
            if self.settings.cache_warmup:
                results = await self.runtime.warm_up(self.settings.cache_warmup)
                for result in results:
                    if result.error is not None:
                        logger.warning("cache warm-up of %s failed: %s", result.agent, result.error)
            self.stats.start()
            freeze_heap()
            self._holds_heap = True
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
        try:
            await self.runtime.aclose()
            await self.cache.close()
            # The last history entries and the last stats go out side by side, within half the
            # shutdown timeout: the other half is the spans' and metrics' (`Telemetry.shutdown`),
            # however long a store or an endpoint hangs.
            budget = self.settings.telemetry_shutdown_timeout / 2
            closing = [self.stats.aclose(budget)]
            if self.history is not None:
                closing.append(self.history.aclose(budget))
            await asyncio.gather(*closing)
        finally:
            if self._holds_heap:
                self._holds_heap = False
                release_heap()


#: Holders of the frozen heap (`freeze_heap` calls not yet released): the garbage collector's
#: frozen generation is the process's, not an app's; apps may run on several threads' loops.
_heap_holders = 0
_heap_lock = threading.Lock()


def freeze_heap() -> None:
    """Collect the garbage of start-up, then leave what survives (modules, agents, providers)
    out of later garbage collections.

    Spans waiting for export outlive the young generations and so trigger full collections
    every few thousand calls; each would otherwise walk every object of the process, the
    exporters' libraries included: about 2-4 µs a call at full speed, against 0.1 once frozen.
    What is frozen is still freed when its last reference goes; only a cycle that becomes
    garbage meanwhile (the module of an agent replaced by a reload) waits for the unfreeze.
    Each call holds the heap frozen until its `release_heap`.
    """
    global _heap_holders
    with _heap_lock:
        gc.collect()
        gc.freeze()
        _heap_holders += 1


def release_heap() -> None:
    """Release one `freeze_heap`: the heap is unfrozen when the last holder releases it, so
    that apps sharing a process do not thaw each other's."""
    global _heap_holders
    with _heap_lock:
        _heap_holders -= 1
        if not _heap_holders:
            gc.unfreeze()


def cache_from_settings(
    settings: Settings,
    meter_provider: metrics.MeterProvider | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> ResultCache:
    """The result cache `settings.cache_url` asks for, counting evictions and backend errors.

    `memory://` is a per-process LRU cache; `redis://` and `rediss://` a cache shared by every
    process on that Redis, apart by `settings.cache_namespace`.
    """
    meter = metrics.get_meter(names.SCOPE_NAME, package_version(), meter_provider)
    evictions = meter.create_counter(
        names.CACHE_EVICTIONS,
        unit=names.ENTRY_UNIT,
        description="Cache entries evicted by the LRU bound",
    )
    errors = meter.create_counter(
        names.CACHE_ERRORS,
        unit=names.ERROR_UNIT,
        description="Cache backend operations that failed and were served as misses",
    )

    def on_error(error_type: str) -> None:
        errors.add(1, {names.ERROR_TYPE: error_type})

    scheme = settings.cache_url.partition("://")[0]
    if scheme in ("redis", "rediss"):
        from ._redis_cache import RedisResultBackend  # redis-py loads only when it is used

        if not _NAMESPACE.fullmatch(settings.cache_namespace):
            raise ConfigError(
                f"SEL_CACHE_NAMESPACE={settings.cache_namespace!r}: use letters, digits, "
                "'_', '.' and '-' only (it prefixes keys in a shared Redis)"
            )
        return ResultCache(
            RedisResultBackend.from_url(
                settings.cache_url,
                timeout=settings.cache_timeout,
                max_output=settings.agent_max_output,
                near_prefix=f"{settings.cache_namespace}:",
                near_entries=settings.cache_near_entries,
                near_bytes=settings.cache_max_bytes,
            ),
            namespace=settings.cache_namespace,
            on_error=on_error,
            tracer_provider=tracer_provider,
            lock_lease=settings.cache_lock_lease,
            lock_wait=settings.agent_timeout + settings.cache_lock_lease,
            retry_after=settings.cache_retry_after,
        )
    if scheme != "memory":
        raise ConfigError(
            f"SEL_CACHE_URL: unsupported scheme {scheme!r} (memory://, redis://, rediss://)"
        )
    backend = LRUMemoryCache(
        settings.cache_max_entries,
        max_bytes=settings.cache_max_bytes,
        on_evict=lambda: evictions.add(1),
    )
    return ResultCache(backend, namespace=settings.cache_namespace, on_error=on_error)
