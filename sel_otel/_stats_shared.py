"""`DeploymentStats`: `/sel_agent_stats` over every instance that shares this one's Redis.

```
stats reader ──StatsPublisher (thread, every SEL_STATS_PUBLISH_INTERVAL)──► Redis
                                                                              │
/sel_agent_stats ──DeploymentStats.report──► live states of the others ◄──────┘
                                             + this process's reader, live ──► merge
sel-otel stats ──read_states──► every live state ──► merge
```

A state is a few binary columns (see `_stats_state`), cheap to unpack; a process keeps the
points of the payloads it read last, so that a payload unchanged since (an idle instance, a
read within the publishing interval) is not unpacked again. The states are added up per
agent at once.

Without a shared Redis, or while it cannot be read, the report is this process's figures,
and says so.
"""

from __future__ import annotations

import asyncio
import logging
import time

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from ._exceptions import StatsStoreError
from ._settings import Settings
from ._stats import Points, agent_points
from ._stats_publish import StatsPublisher
from ._stats_redis import RedisStatsStore
from ._stats_report import Scope, StatsReport, local_report, merge
from ._stats_state import InstanceState, decode, instance_of
from ._telemetry import Telemetry

logger = logging.getLogger(__name__)

#: Seconds a Redis command of the stats may take (twice at most: one retry on a broken
#: connection), so that a stalled Redis costs a reply little.
REDIS_TIMEOUT = 0.5
#: Why a report covers this process alone.
ASKED = "scope:this"
NO_STORE = "no shared Redis"
UNREACHABLE = "the shared Redis is unreachable"


class DeploymentStats:
    """This process's stats reader, and the states every instance publishes to `store`.

    With a store, `start` publishes this process's figures until `aclose`.
    """

    def __init__(
        self,
        reader: InMemoryMetricReader,
        *,
        instance: str = "",
        started: float | None = None,
        store: RedisStatsStore | None = None,
        interval: float = 5.0,
    ) -> None:
        self.reader = reader
        self.instance = instance
        self.started = time.time() if started is None else started
        self.store = store
        self.states = None if store is None else StateReader(store)
        self.publisher = (
            None
            if store is None
            else StatsPublisher(
                reader, store, instance=instance, started=self.started, interval=interval
            )
        )

    def start(self) -> None:
        if self.publisher is not None:
            self.publisher.start()

    async def aclose(self, grace: float) -> None:
        """Publish the last figures (within about `grace` seconds) and close the store."""
        if self.publisher is not None:
            await asyncio.to_thread(self.publisher.close, grace)
        if self.store is not None:
            self.store.close()

    def this(self) -> InstanceState:
        """This process's figures, live."""
        points = Points.from_points(agent_points(self.reader.get_metrics_data()))
        return InstanceState(self.instance, self.started, points)

    async def report(self, scope: Scope = "all", agent: str | None = None) -> StatsReport:
        """The figures of `agent` (or every agent) for `scope`: `this` process, or every
        instance merged (`all`) or side by side (`per-instance`). The shared states are read
        while this process's own figures are collected."""
        if scope == "this" or self.states is None:
            return local_report(self.this(), scope, agent, ASKED if scope == "this" else NO_STORE)
        # the read begins in a thread of its own (with this context: its spans are this
        # request's) before this process's figures are collected, and is never left behind
        reading = asyncio.create_task(asyncio.to_thread(self.states.read))
        await asyncio.sleep(0)  # the task's first step: the read is handed to its thread
        try:
            this = self.this()
            states, unreadable = await reading
        except StatsStoreError as exc:
            logger.warning("the shared stats could not be read: %s", exc)
            note = (
                f"the shared Redis could not be read ({type(exc.original).__name__}): "
                "other instances are not counted"
            )
            return local_report(this, scope, agent, UNREACHABLE, [note])
        finally:
            reading.cancel()  # when collecting this process's figures failed
        return merge(states, this=this, scope=scope, agent=agent, unreadable=unreadable)


class StateReader:
    """Reads the live states in `store`; the points of a payload read the last time (an
    idle instance's, or any read within the publishing interval) are not unpacked again.
    Safe from several threads: each read replaces what is kept as a whole."""

    def __init__(self, store: RedisStatsStore) -> None:
        self.store = store
        self._points: dict[bytes, Points] = {}  # by the payload they were read from

    def read(self) -> tuple[list[InstanceState], list[str]]:
        """Every live state, and the instances of those this version cannot read (another
        format, or a corrupt payload)."""
        earlier, found = self._points, {}
        states, unreadable = [], []
        for name, payload, remaining in self.store.read():
            try:
                state = decode(payload, remaining, earlier)
            except ValueError as exc:
                logger.debug("unreadable stats payload of %r: %s", name, exc)
                unreadable.append(instance_of(name))
            else:
                states.append(state)
                found[payload] = state.points
        self._points = found
        return states, unreadable


def read_states(store: RedisStatsStore) -> tuple[list[InstanceState], list[str]]:
    """Every live state in `store`, and the instances of those this version cannot read."""
    return StateReader(store).read()


def stats_store(settings: Settings) -> RedisStatsStore | None:
    """The shared store `settings` name, if any (its prefix: the cache namespace's)."""
    url = settings.shared_redis_url(settings.stats_redis_url)
    if url is None:
        return None
    return RedisStatsStore.from_url(
        url, f"{settings.cache_namespace}:agent-stats", timeout=REDIS_TIMEOUT
    )


def deployment_stats(settings: Settings, telemetry: Telemetry) -> DeploymentStats:
    """The stats of a process: its reader, published as its `service.instance.id`."""
    resource = telemetry.tracer_provider.resource
    return DeploymentStats(
        telemetry.stats_reader,
        instance=str(resource.attributes.get("service.instance.id", "")),
        store=stats_store(settings),
        interval=settings.stats_publish_interval,
    )
