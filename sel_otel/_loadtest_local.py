"""The load test's in-process environment: this process's runtime, built as `SelApp` builds it.

Calls go through the command handler, as a frontend's do (a request span, then the agent
call), for a simulated user each. The cache is the memory cache, a Redis given by URL, or a
`redis-server` the load test starts (`--cache redis-server`), which its faults can pause and
kill. Every key the run writes is under a namespace of its own (`loadtest-<random>`), so a
run starts cold and its `/sel_agent_stats` covers its own calls only; on a Redis given by
URL those keys are deleted at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._app import SelApp
from ._commands import RunAgent
from ._exceptions import ConfigError
from ._loadtest import WORK_AGENT, CallResult, LoadPlan, Outcome, Target, process_resources
from ._loadtest_agent import WorkAgent
from ._loadtest_faults import Fault
from ._loadtest_redis import LocalRedis
from ._settings import Settings
from ._telemetry import Telemetry

logger = logging.getLogger(__name__)

_STATS_CALLS = re.compile(r"Calls: (\d+)")


def stats_calls_of(reply: str) -> int:
    """The calls a `/sel_agent_stats` reply counts: its per-agent `Calls:` figures added up."""
    return sum(int(calls) for calls in _STATS_CALLS.findall(reply))


def run_namespace() -> str:
    """A cache namespace of one run's own."""
    return f"loadtest-{secrets.token_hex(4)}"


@dataclass
class Environment:
    """What a load runs against: the target, the faults it offers, and a resource probe."""

    target: Target
    description: str
    faults: dict[str, Fault] = field(default_factory=dict)
    probe: Callable[[], tuple[int, int]] | None = None


class RuntimeTarget:
    """The runtime of this process, called through its command handler."""

    def __init__(self, app: SelApp) -> None:
        self.app = app

    async def call(self, agent: str, query: str, user: str) -> CallResult:
        reply = await self.app.commands.execute(RunAgent(agent, query), user, "loadtest")
        result = reply.result
        if result is None or result.error is not None:
            error = result.error.error_type if result is not None and result.error else None
            return CallResult(Outcome.FAILED, error)
        if result.cached:
            return CallResult(Outcome.HIT)
        return CallResult(Outcome.COALESCED if result.coalesced else Outcome.MISS)

    async def stats_calls(self) -> int:
        return stats_calls_of((await self.app.commands.handle("/sel_agent_stats")).text)

    async def reload(self) -> None:
        reply = await self.app.commands.handle("/sel_agent_reload")
        if not reply.ok:
            raise ConfigError(f"the reload fault failed: {reply.text}")


@contextlib.asynccontextmanager
async def local_environment(
    plan: LoadPlan, cache: str, telemetry: Telemetry, settings: Settings, *, work_ms: float
) -> AsyncIterator[Environment]:
    """This process's runtime on `cache` (`memory`, `redis-server` or a Redis URL), with the
    work agent in a directory of its own when the plan calls it."""
    with tempfile.TemporaryDirectory(prefix="sel-loadtest-") as scratch:
        directory = Path(scratch)
        async with contextlib.AsyncExitStack() as stack:
            redis: LocalRedis | None = None
            if cache == "memory":
                url = "memory://"
            elif cache == "redis-server":
                redis = await stack.enter_async_context(LocalRedis(directory))
                url = redis.url
            elif cache.partition("://")[0] in ("redis", "rediss"):
                url = cache
            else:
                raise ConfigError(
                    f"--cache {cache!r}: use memory, redis-server, redis://... or docker"
                )
            namespace = run_namespace()
            if redis is None and url != "memory://":  # a Redis of the user's: leave it clean
                stack.push_async_callback(_delete_namespace, url, namespace)
            work = None
            agents_dir = settings.agents_dir
            if any(agent.name == WORK_AGENT for agent in plan.mix):
                agents_dir = directory / "agents"
                agents_dir.mkdir()
                work = WorkAgent(agents_dir, work_ms)
                work.write()
            run_settings = dataclasses.replace(
                settings,
                cache_url=url,
                cache_namespace=namespace,
                agents_dir=agents_dir,
                data_dir=directory / "data",
                stats_redis_url="",
                history_redis_url="",
            )
            app = await stack.enter_async_context(SelApp(run_settings, telemetry))
            unknown = sorted({a.name for a in plan.mix} - set(app.runtime.registry.agents))
            if unknown:
                raise ConfigError(
                    f"--agent: no agent {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(app.runtime.registry.agents))})"
                )
            target = RuntimeTarget(app)
            yield Environment(
                target,
                f"1 process, {url.partition('://')[0]} cache",
                _local_faults(target, work, redis),
                process_resources,
            )


def _local_faults(
    target: RuntimeTarget, work: WorkAgent | None, redis: LocalRedis | None
) -> dict[str, Fault]:
    faults = {} if work is None else work.faults(target.reload, "hot-reloaded")
    if redis is not None:

        async def pause() -> None:
            redis.pause()

        async def resume() -> None:
            redis.resume()

        faults["redis-pause"] = Fault("redis-server stopped (SIGSTOP), then resumed", pause, resume)
        faults["redis-kill"] = Fault(
            "redis-server killed (SIGKILL), then started again, empty", redis.kill, redis.start
        )
    return faults


async def _delete_namespace(url: str, namespace: str) -> None:
    """Delete the run's keys from the Redis at `url`; a failure is logged, not raised."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{namespace}:*", count=500):
            batch.append(key)
            if len(batch) == 500:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    except (RedisError, OSError) as exc:
        logger.warning("the run's keys %s:* were not all deleted: %s", namespace, exc)
    finally:
        await client.aclose()
