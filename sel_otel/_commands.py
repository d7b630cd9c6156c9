"""Requests and replies shared by every frontend (console, CLI, Discord).

Request syntax:

- `agent:NAME INPUT`      run agent NAME with INPUT
- `/sel_agent_stats [NAME] [scope:all|this|per-instance]`
                          per-agent calls, cache hits, times and errors, of every instance
                          (merged), this one, or each
- `/sel_agents`           agent names and descriptions
- `/sel_agent_reload`     re-read the agents directory
- `/sel_agent_history [agent=NAME] [user=ID] [outcome=ok|error|refused] [limit=N]`
                          the latest agent calls and refusals, each linked to its trace
- `/help`                 this list
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast, overload

from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from . import _semconv as names
from ._agent import Agent
from ._exceptions import AgentNotFound
from ._history import HistoryPage, HistoryQuery
from ._history_format import format_history, parse_history_args
from ._markup import code_span
from ._registry import ReloadReport
from ._runtime import AgentResult, AgentRuntime
from ._stats_report import SCOPES, Scope, StatsReport, format_report
from ._stats_shared import DeploymentStats
from ._telemetry import package_version

HELP = """\
agent:NAME INPUT          run agent NAME with INPUT
/sel_agent_stats [NAME] [scope:all|this|per-instance]
                          calls, cache hits, times and errors per agent, of every
                          instance (merged), this one, or each
/sel_agents               agent names and descriptions
/sel_agent_reload         re-read the agents directory
/sel_agent_history [agent=NAME] [user=ID] [outcome=ok|error|refused] [limit=N]
                          the latest agent calls and refusals, with trace links
/help                     this list"""


@dataclass(frozen=True, slots=True)
class RunAgent:
    agent: str
    query: str


@dataclass(frozen=True, slots=True)
class ShowStats:
    agent: str | None = None
    scope: Scope = "all"


@dataclass(frozen=True, slots=True)
class ListAgents:
    """The agent list; with `detail`, the paths of the files that failed to load and why
    (for the operator: a file's path and its exception's text are not for everyone)."""

    detail: bool = True


@dataclass(frozen=True, slots=True)
class ReloadAgents:
    pass


@dataclass(frozen=True, slots=True)
class ShowHistory:
    query: HistoryQuery = field(default_factory=HistoryQuery)


@dataclass(frozen=True, slots=True)
class ShowHelp:
    problem: str | None = None


Request = RunAgent | ShowStats | ListAgents | ReloadAgents | ShowHistory | ShowHelp

_REQUEST_NAMES: dict[type[Request], str] = {
    RunAgent: "agent",
    ShowStats: "stats",
    ListAgents: "agents",
    ReloadAgents: "reload",
    ShowHistory: "history",
    ShowHelp: "help",
}


def parse_request(text: str) -> Request:
    """Parse one line of user input into a request; anything unknown asks for help."""
    text = text.strip()
    head, *others = text.split(maxsplit=1) or [""]
    rest = others[0] if others else ""
    if head.startswith("agent:"):
        name = head.removeprefix("agent:")
        if not name:
            return ShowHelp("missing agent name: agent:NAME INPUT")
        return RunAgent(name, rest.strip())
    if head == "/sel_agent_stats":
        return parse_stats_args(rest)
    if head == "/sel_agents":
        return ListAgents()
    if head == "/sel_agent_reload":
        return ReloadAgents()
    if head == "/sel_agent_history":
        query = parse_history_args(rest)
        return ShowHistory(query) if isinstance(query, HistoryQuery) else ShowHelp(query)
    if head in {"/help", "help", "?"}:
        return ShowHelp()
    return ShowHelp(f"unknown request: {text[:80]!r}" if text else None)


def parse_stats_args(text: str) -> ShowStats | ShowHelp:
    """`[NAME] [scope:all|this|per-instance]`, in either order."""
    agent, scope = None, "all"
    for word in text.split():
        if word.startswith("scope:"):
            value = word.removeprefix("scope:")
            if value not in SCOPES:
                return ShowHelp(f"unknown scope {value[:40]!r}: use {', '.join(SCOPES)}")
            scope = value
        elif agent is None:
            agent = word
        else:
            return ShowHelp("/sel_agent_stats takes one agent name")
    return ShowStats(agent, cast(Scope, scope))


class Reply(abc.ABC):
    """What a frontend shows: each kind carries what was answered, and `text` is its plain
    form (markdown), which the console prints and the Discord frontend sends where it has no
    richer form."""

    __slots__ = ()

    @property
    @abc.abstractmethod
    def text(self) -> str:
        """The reply as markdown text."""

    @property
    def ok(self) -> bool:
        """Whether the request succeeded."""
        return True


@dataclass(frozen=True, slots=True)
class AgentReply(Reply):
    """An agent call's result."""

    result: AgentResult

    @property
    def text(self) -> str:
        return format_result(self.result)

    @property
    def ok(self) -> bool:
        return self.result.ok


@dataclass(frozen=True, slots=True)
class StatsReply(Reply):
    """The stats report, of every agent or of `agent`."""

    stats: StatsReport
    agent: str | None = None

    @property
    def text(self) -> str:
        return format_report(self.stats, self.agent)


@dataclass(frozen=True, slots=True)
class AgentsReply(Reply):
    """The agents, name to description, and the files that failed to load: each path and why
    with `detail`, else the agent's name alone."""

    agents: Mapping[str, str]
    failures: Mapping[Path, str] = field(default_factory=dict)
    directories: tuple[Path, ...] = ()
    detail: bool = True

    @property
    def text(self) -> str:
        lines = [f"**{name}**: {description}" for name, description in sorted(self.agents.items())]
        if self.detail:
            lines += [f"⚠️ {path}: {reason}" for path, reason in self.failures.items()]
            return "\n".join(lines) or f"No agents in {', '.join(map(str, self.directories))}"
        lines += [f"⚠️ {code_span(path.stem)}: failed to load" for path in self.failures]
        return "\n".join(lines) or "No agents."


@dataclass(frozen=True, slots=True)
class ReloadReply(Reply):
    """What a reload of the agents directory changed, and what failed."""

    report: ReloadReport

    @property
    def text(self) -> str:
        return f"Agents reloaded: {self.report}"

    @property
    def ok(self) -> bool:
        return not self.report.failed


@dataclass(frozen=True, slots=True)
class HistoryReply(Reply):
    """A page of the execution history, each entry linked to its trace by `trace_url`."""

    page: HistoryPage
    trace_url: str | None = None

    @property
    def text(self) -> str:
        return format_history(self.page, self.trace_url)

    def within(self, limit: int) -> str:
        """`text` within `limit` characters: whole entries, saying how many were shown."""
        return format_history(self.page, self.trace_url, limit)


@dataclass(frozen=True, slots=True)
class HelpReply(Reply):
    """The request syntax, after what was wrong with the request when it was not understood."""

    problem: str | None = None

    @property
    def text(self) -> str:
        return f"{self.problem}\n{HELP}" if self.problem else HELP

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True, slots=True)
class ErrorReply(Reply):
    """A request that could not be answered, and why."""

    message: str

    @property
    def text(self) -> str:
        return self.message

    @property
    def ok(self) -> bool:
        return False


def format_result(result: AgentResult) -> str:
    """The reply text for an agent call."""
    text = result.output if result.error is None else result.error.reply
    if text and text.strip():
        return text
    if result.error is None:
        return "(empty output)"  # Discord refuses to send a blank message
    return f"❌ Agent {result.agent!r} failed ({result.error.error_type})"


def request_kind(request: type[Request]) -> str:
    """The request's low-cardinality name (`sel.request`): `agent`, `stats`, ..."""
    return _REQUEST_NAMES[request]


class CommandHandler:
    """Answers requests with the runtime, the registry and the stats reader, and answers the
    few questions frontends ask besides (the agents, to complete names and check access).

    Given a `frontend` name, each request is a root span `{frontend} {request}` (such as
    `console agent`), so that one trace holds the request and the agent call it makes.
    """

    def __init__(
        self,
        runtime: AgentRuntime,
        stats_reader: InMemoryMetricReader,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        stats: DeploymentStats | None = None,
    ) -> None:
        self.runtime = runtime
        self.stats_reader = stats_reader
        #: The deployment's stats (this process's alone, without a shared Redis).
        self.stats = stats if stats is not None else DeploymentStats(stats_reader)
        self._tracer = trace.get_tracer(names.SCOPE_NAME, package_version(), tracer_provider)

    # -- queries frontends need --------------------------------------------------------------

    @property
    def agents(self) -> Mapping[str, Agent]:
        """The registered agents by name (read-only)."""
        return self.runtime.registry.agents

    def agent(self, name: str) -> Agent | None:
        """The agent registered as `name`, or None."""
        return self.runtime.registry.agents.get(name)

    def record_refusal(
        self,
        agent: str,
        query: str,
        user: str | None,
        frontend: str | None,
        reason: str,
        span: trace.Span,
    ) -> None:
        """Record in the history (when it is on) that a frontend refused `user` a call of
        `agent` for `reason`."""
        history = self.runtime.history
        if history is not None:
            history.record_refusal(agent, query, user, frontend, reason, span)

    # -- requests ---------------------------------------------------------------------------

    async def handle(
        self, text: str, user: str | None = None, frontend: str | None = None
    ) -> Reply:
        """Answer one line of user input."""
        return await self.execute(parse_request(text), user, frontend)

    @overload
    async def execute(
        self,
        request: RunAgent,
        user: str | None = None,
        frontend: str | None = None,
        *,
        root_span: bool = True,
    ) -> AgentReply: ...

    @overload
    async def execute(
        self,
        request: ListAgents,
        user: str | None = None,
        frontend: str | None = None,
        *,
        root_span: bool = True,
    ) -> AgentsReply: ...

    @overload
    async def execute(
        self,
        request: Request,
        user: str | None = None,
        frontend: str | None = None,
        *,
        root_span: bool = True,
    ) -> Reply: ...

    async def execute(
        self,
        request: Request,
        user: str | None = None,
        frontend: str | None = None,
        *,
        root_span: bool = True,
    ) -> Reply:
        """Answer a parsed request, in a root span of its own when `frontend` is given (unless
        `root_span` is false: the bot's commands have spans of their own)."""
        if frontend is None or not root_span:
            return await self._answer(request, user, frontend)
        kind = request_kind(type(request))
        with self._tracer.start_as_current_span(
            f"{frontend} {kind}",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            attributes={names.SEL_FRONTEND: frontend, names.SEL_REQUEST: kind},
        ) as span:
            reply = await self._answer(request, user, frontend)
            if not reply.ok:
                span.set_status(trace.StatusCode.ERROR)
            return reply

    async def _answer(self, request: Request, user: str | None, frontend: str | None) -> Reply:
        match request:
            case RunAgent(agent, query):
                return AgentReply(
                    await self.runtime.run(agent, query, user=user, frontend=frontend)
                )
            case ShowStats(agent, scope):
                return await self._stats(agent, scope)
            case ListAgents(detail):
                registry = self.runtime.registry
                return AgentsReply(
                    {name: agent.description for name, agent in registry.agents.items()},
                    registry.failures,
                    tuple(registry.directories),
                    detail,
                )
            case ReloadAgents():
                return ReloadReply(await self.runtime.reload())
            case ShowHistory(query):
                return await self._history(query)
            case ShowHelp(problem):
                return HelpReply(problem)

    async def _history(self, query: HistoryQuery) -> Reply:
        """The latest entries `query` asks for, from every store of the history."""
        history = self.runtime.history
        if history is None:
            return ErrorReply("The execution history is off (SEL_HISTORY=false).")
        page = await history.query(query)
        return HistoryReply(page, self.runtime.settings.trace_url_template)

    async def _stats(self, agent: str | None, scope: Scope) -> Reply:
        """The stats report; for an agent with no calls, whether it exists at all."""
        report = await self.stats.report(scope, agent)
        known = self.runtime.registry.agents
        if agent is not None and not report.rows and agent not in known:
            return ErrorReply(AgentNotFound(agent, known=sorted(known)).reply)
        return StatsReply(report, agent)
