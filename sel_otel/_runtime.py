"""`AgentRuntime`: the one place that runs agents and records their spans and metrics."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, NamedTuple

from opentelemetry import context, metrics, trace
from opentelemetry.trace import SpanKind

from . import _semconv as names
from ._agent import Agent, AgentContext
from ._cache import Lookup, ResultCache
from ._exceptions import (
    AgentBusy,
    AgentError,
    AgentFailed,
    AgentNotFound,
    AgentOutputError,
    AgentThreadsExhausted,
    AgentTimeout,
)
from ._failures import FailureRecorder
from ._history import History
from ._redact import span_content
from ._registry import AgentRegistry, ReloadReport
from ._settings import Settings
from ._tasks import Steps, detached
from ._telemetry import package_version
from ._threads import DaemonThreads, unwrap

logger = logging.getLogger(__name__)

#: Seconds an agent's `close()` may take before it is abandoned.
CLOSE_TIMEOUT = 5.0

#: Cache keys remembered, and the longest input whose key is.
_KEY_MEMO_ENTRIES = 4096
_KEY_MEMO_MAX_CHARS = 1024
#: Hosts the agents' HTTP client reaches without a proxy (`AgentContext.http`).
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class AgentResult(NamedTuple):
    """The outcome of one agent call: an output, or the error that replaced it.

    A named tuple: one is built for every call, and tuples are the cheapest immutable records.
    """

    agent: str
    output: str | None
    cached: bool
    duration: float
    error: AgentError | None = None
    coalesced: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class AgentRuntime:
    """Runs agents from a registry through the result cache, under a timeout, traced and metered.

    Every call of a known agent is one span `invoke_agent {name}` and one record in the
    duration histogram, cache hit or not. Failures become an `AgentResult` with an error;
    only cancellation propagates.
    """

    def __init__(
        self,
        registry: AgentRegistry,
        cache: ResultCache,
        *,
        settings: Settings | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        history: History | None = None,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.settings = settings or Settings()
        #: Where every call is recorded, when the execution history is on.
        self.history = history
        self._tracer = trace.get_tracer(names.SCOPE_NAME, package_version(), tracer_provider)
        self._providers = (tracer_provider, meter_provider)
        #: What agents' `setup(context)` get, made at the first setup; and the setup of each
        #: agent object (by id, beside the agent that keeps the id taken), done or running.
        self._context: AgentContext | None = None
        self._setups: dict[int, tuple[Agent, asyncio.Task[None]]] = {}
        meter = metrics.get_meter(names.SCOPE_NAME, package_version(), meter_provider)
        self._duration = meter.create_histogram(
            names.AGENT_DURATION,
            unit=names.AGENT_DURATION_UNIT,
            description="Duration of agent calls, cache hits included",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS),
        )
        self._coalesced = meter.create_counter(
            names.CACHE_COALESCED,
            unit=names.COUNT_UNIT,
            description="Agent calls answered by an identical call already in flight",
        )
        self._threads = DaemonThreads(
            self.settings.agent_threads, self.settings.agent_threads_per_agent
        )
        self._failures = FailureRecorder(
            trace_content=self.settings.trace_content,
            content_max=self.settings.trace_content_max,
        )
        #: Agent versions (name, version) already reported for blocking the event loop.
        self._blocked_loop: set[tuple[str, str]] = set()
        #: Calls in flight per agent object (by id), and agents replaced by a reload that
        #: still had calls in flight then: each is closed when its last call ends.
        self._calls: dict[int, int] = {}
        self._retired: dict[int, Agent] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._input_attribute = functools.lru_cache(maxsize=1024)(
            functools.partial(span_content, limit=self.settings.trace_content_max)
        )
        self._keys = functools.lru_cache(maxsize=_KEY_MEMO_ENTRIES)(self._new_key)

    async def run(
        self, name: str, query: str, user: str | None = None, frontend: str | None = None
    ) -> AgentResult:
        """Call agent `name` with `query` for `user` of `frontend` (both as the history
        records them); never raises except on cancellation."""
        try:
            agent = self.registry.get(name)
        except AgentNotFound as exc:
            if self.history is not None:
                failed = {names.ERROR_TYPE: exc.error_type}
                request_span = trace.get_current_span()  # no call span was started
                self.history.record_call(
                    name, query, user, frontend, request_span, 0.0, failed, None
                )
            return AgentResult(name, None, False, 0.0, exc)
        attributes = {
            names.GEN_AI_OPERATION_NAME: names.INVOKE_AGENT,
            names.GEN_AI_AGENT_NAME: name,
            names.GEN_AI_AGENT_DESCRIPTION: agent.description,
        }
        if self.settings.trace_content:
            # Memoized: inputs recur (that is why they are cached), and scrubbing one costs more
            # than the rest of a cache hit.
            attributes[names.SEL_AGENT_INPUT] = self._input_attribute(query)
        span = self._tracer.start_span(
            f"{names.INVOKE_AGENT} {name}", kind=SpanKind.INTERNAL, attributes=attributes
        )
        metric_attributes: dict[str, str | bool] = {
            names.GEN_AI_OPERATION_NAME: names.INVOKE_AGENT,
            names.GEN_AI_AGENT_NAME: name,
        }
        output = error = None
        lookup = Lookup.BYPASS
        agent_id = id(agent)
        self._calls[agent_id] = self._calls.get(agent_id, 0) + 1
        start = time.perf_counter()
        try:
            output, lookup = await self._cached_call(agent, query, user, span)
        except AgentError as exc:
            error = exc
        except asyncio.CancelledError as exc:
            self._record_error(span, metric_attributes, exc, "cancelled")
            raise
        finally:
            duration = time.perf_counter() - start
            hit = lookup is Lookup.HIT
            span.set_attributes(
                {names.SEL_CACHE_HIT: hit, names.SEL_AGENT_DURATION_MS: duration * 1000.0}
            )
            metric_attributes[names.SEL_CACHE_HIT] = hit
            if error is not None:
                self._record_error(span, metric_attributes, error, error.error_type)
            span.end()
            # Recorded outside the span's context: no exemplar cost on every call.
            self._duration.record(duration, metric_attributes)
            if self.history is not None:
                self.history.record_call(
                    name, query, user, frontend, span, duration, metric_attributes, output
                )
            if self._calls[agent_id] > 1:
                self._calls[agent_id] -= 1
            else:
                del self._calls[agent_id]
                if agent_id in self._retired:  # closed apart: the call's answer is ready
                    self._in_background(self._close(self._retired.pop(agent_id)))
        if lookup is Lookup.COALESCED:
            self._coalesced.add(1, {names.GEN_AI_AGENT_NAME: name})
        return AgentResult(
            name, output, lookup is Lookup.HIT, duration, error, lookup is Lookup.COALESCED
        )

    async def warm_up(self, entries: Iterable[tuple[str, str]]) -> list[AgentResult]:
        """Run each (agent, input) once so that its result is cached before users ask."""
        return list(await asyncio.gather(*(self.run(name, query) for name, query in entries)))

    async def reload(self) -> ReloadReport:
        """Re-read the agents directory, as `AgentRegistry.reload` does.

        The cached results of updated and removed agents are retired: they came from the old
        code (`ResultCache.retire`). Replaced agents are closed now, or when their last call in
        flight ends.
        """
        report = self.registry.reload()
        for agent in self.registry.take_retired():
            if id(agent) in self._calls:
                self._retired[id(agent)] = agent
            else:
                self._in_background(self._close(agent))
        await self.cache.retire(*report.updated, *report.removed)
        for name in (*report.added, *report.updated):  # set up now: a failure is seen at once
            loaded = self.registry.agents.get(name)
            if loaded is not None and loaded.setup is not None:
                try:
                    await self._set_up(loaded, self.settings.agent_timeout)
                except AgentError as exc:
                    logger.error("setup of agent %s failed: %s", name, exc)
        return report

    def agent_context(self) -> AgentContext:
        """What agents' `setup(context)` get: the runtime's settings and its httpx client,
        traced, made on first use and closed by `aclose`."""
        if self._context is None:
            import httpx
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            # Loopback goes direct whatever the proxy settings say: no proxy reaches this
            # host's loopback, and what goes there (the host-exec token) stays on the host.
            direct = {f"all://{host}": httpx.AsyncHTTPTransport() for host in _LOOPBACK_HOSTS}
            client = httpx.AsyncClient(mounts=direct)
            tracer_provider, meter_provider = self._providers
            HTTPXClientInstrumentor.instrument_client(
                client, tracer_provider=tracer_provider, meter_provider=meter_provider
            )
            self._context = AgentContext(self.settings, client)
        return self._context

    async def aclose(self) -> None:
        """Close the agents that hold resources, current and replaced by reloads alike, each
        within `CLOSE_TIMEOUT` seconds. A hung sync agent is abandoned on its daemon thread,
        not awaited."""
        await asyncio.gather(*self._background)
        retired, self._retired = self._retired, {}
        agents = [*self.registry.agents.values(), *self.registry.take_retired()]
        for agent in [*agents, *retired.values()]:
            await self._close(agent)
        for _, setup in self._setups.values():
            setup.cancel()
        self._setups.clear()
        if self._context is not None:
            context, self._context = self._context, None
            await context.http.aclose()

    async def _cached_call(
        self, agent: Agent, query: str, user: str | None, span: trace.Span
    ) -> tuple[str, Lookup]:
        invalidates = agent.invalidates(query)
        ttl = 0.0 if invalidates else agent.ttl_for(query)
        user = user if agent.cache_per_user else None
        if len(query) <= _KEY_MEMO_MAX_CHARS:  # inputs recur; hashing one costs a tenth of a hit
            key = self._keys(agent.name, agent.version, user, query)
        else:
            key = self._new_key(agent.name, agent.version, user, query)
        if ttl > 0:
            cached = self.cache.peek(key)
            if isinstance(cached, str):  # answered at once: nothing runs under the span
                return cached, Lookup.HIT
        timeout = agent.timeout or self.settings.agent_timeout
        # An invalidating sync call that times out makes its change only when its thread
        # ends: the agent's results are invalidated again then.
        on_abandoned = self._invalidation(agent.name) if invalidates else None
        # The span is current while the cache and the agent work: their spans are its children.
        token = context.attach(trace.set_span_in_context(span))
        try:
            outcome = await self.cache.get_or_run(
                key,
                ttl,
                lambda: self._execute(agent, query, timeout, on_abandoned),
                compute_timeout=timeout,
            )
        finally:
            try:
                if invalidates:
                    await self.cache.invalidate(agent.name)
            finally:
                context.detach(token)
        if outcome.lookup is Lookup.COALESCED:
            span.set_attribute(names.SEL_CACHE_COALESCED, True)
        if outcome.cache_error is not None:
            span.set_attribute(names.SEL_CACHE_ERROR, outcome.cache_error)
        return outcome.output, outcome.lookup

    def _new_key(self, name: str, version: str, user: str | None, query: str) -> str:
        return self.cache.key(name, query, user, version=version)

    async def _execute(
        self,
        agent: Agent,
        query: str,
        time_limit: float,
        on_abandoned: Callable[[], object] | None,
    ) -> str:
        deadline = asyncio.timeout(time_limit)
        thread: asyncio.Future[Any] | None = None
        steps: Steps[Any] | None = None
        owner = (agent.name, agent.version)
        try:
            if agent.setup is not None:
                await self._set_up(agent, time_limit)
            async with deadline:
                when = deadline.when() or 0.0
                if agent.is_async:
                    steps = Steps(functools.partial(agent.function, query), when)
                    output = await detached(steps, on_abandoned)
                else:
                    thread = await self._threads.start(
                        agent.function, query, owner=owner, on_abandoned=on_abandoned
                    )
                    output = unwrap(await thread)
                    if inspect.isawaitable(output):
                        awaitable = output
                        steps = Steps(lambda: awaitable, when)
                        output = await detached(steps, on_abandoned)
        except TimeoutError as exc:
            if not deadline.expired():
                raise AgentFailed(agent.name, original=exc) from exc
            if steps is not None and steps.blocked:
                raise self._blocked(agent, time_limit, steps.blocked) from None
            if thread is None and not agent.is_async:
                busy = AgentThreadsExhausted if self._threads.exhausted(owner) else AgentBusy
                threads = self.settings.agent_threads
                if busy is AgentThreadsExhausted:
                    threads = min(self.settings.agent_threads_per_agent, threads)
                raise busy(agent.name, timeout=time_limit, threads=threads) from None
            raise AgentTimeout(agent.name, timeout=time_limit) from None
        except AgentError:
            raise
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and _cancelled():
                raise  # this call is cancelled
            # Whatever the agent raised (sys.exit(), KeyboardInterrupt, GeneratorExit, a
            # BaseException of its own, CancelledError) fails its call, not the process.
            raise AgentFailed(agent.name, original=exc) from exc
        if not isinstance(output, str):
            raise AgentOutputError(
                f"Agent {agent.name!r} returned {type(output).__name__}, not str", agent=agent.name
            )
        if len(output) > self.settings.agent_max_output:
            raise AgentOutputError(
                f"Agent {agent.name!r} returned {len(output):,} characters, "
                f"over the {self.settings.agent_max_output:,} limit",
                agent=agent.name,
            )
        return output

    async def _set_up(self, agent: Agent, time_limit: float) -> None:
        """Run `agent.setup(context)` once, before the agent's first call; calls that come
        meanwhile wait for it, within `time_limit` seconds. A setup that fails fails the
        calls waiting for it, and the next call tries again."""
        entry = self._setups.get(id(agent))
        if entry is None:
            assert agent.setup is not None
            task = asyncio.get_running_loop().create_task(agent.setup(self.agent_context()))
            entry = self._setups[id(agent)] = (agent, task)

            def forget_failure(done: asyncio.Task[None]) -> None:
                current = self._setups.get(id(agent))
                failed = done.cancelled() or done.exception() is not None
                if failed and current is not None and current[1] is done:
                    del self._setups[id(agent)]

            task.add_done_callback(forget_failure)
        task = entry[1]
        if task.done() and not task.cancelled() and task.exception() is None:
            return
        try:
            async with asyncio.timeout(time_limit):
                await asyncio.shield(task)
        except TimeoutError:
            raise AgentTimeout(agent.name, timeout=time_limit) from None
        except asyncio.CancelledError as exc:
            if _cancelled():
                raise
            raise AgentFailed(agent.name, original=exc) from exc
        except Exception as exc:
            raise AgentFailed(agent.name, original=exc) from exc

    async def _close(self, agent: Agent) -> None:
        self._setups.pop(id(agent), None)
        await _close(agent)

    def _blocked(self, agent: Agent, time_limit: float, blocked: float) -> AgentTimeout:
        """The error of a call whose async agent held the event loop past its deadline; the
        first of each agent version is logged, naming the agent."""
        if (agent.name, agent.version) not in self._blocked_loop:
            self._blocked_loop.add((agent.name, agent.version))
            logger.warning(
                "agent %s blocked the event loop for %.2fs, past its %gs timeout: every other "
                "call waited meanwhile. An async agent must not block: run blocking work with "
                "asyncio.to_thread, or make it a sync agent. Such calls fail as timeouts and "
                "are not cached.",
                agent.name,
                blocked,
                time_limit,
            )
        return AgentTimeout(agent.name, timeout=time_limit, blocked=blocked)

    def _record_error(
        self,
        span: trace.Span,
        metric_attributes: dict[str, str | bool],
        exc: BaseException,
        error_type: str,
    ) -> None:
        """Status, exception event and `error.type` of a failed call (`_failures.py`)."""
        self._failures.record(span, exc, error_type)
        metric_attributes[names.ERROR_TYPE] = error_type

    def _invalidation(self, agent: str) -> Callable[[], None]:
        """A callable that invalidates `agent`'s results in the background."""
        return lambda: self._in_background(self.cache.invalidate(agent))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _cancelled() -> bool:
    """Whether the running task is being cancelled: a CancelledError caught without that was
    raised by agent code itself, and is its failure."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _close(agent: Agent) -> None:
    """Let an agent release what it holds, within `CLOSE_TIMEOUT` seconds; a failure is
    logged, never raised."""
    if agent.close is None:
        return
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await agent.close()
    except asyncio.CancelledError:
        if _cancelled():
            raise
        logger.error("closing agent %s failed: it raised CancelledError", agent.name)
    except Exception:
        logger.exception("closing agent %s failed", agent.name)
