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

from dataclasses import dataclass, field
from typing import cast

from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from . import _semconv as names
from ._exceptions import AgentNotFound
from ._history import HistoryQuery
from ._history_format import format_history, parse_history_args
from ._markup import code_span
from ._registry import AgentRegistry
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


@dataclass(frozen=True, slots=True)
class Reply:
    """What a frontend shows: markdown text, and whether the request succeeded."""

    text: str
    ok: bool = True
    result: AgentResult | None = None
    stats: StatsReport | None = None


def format_result(result: AgentResult) -> str:
    """The reply text for an agent call."""
    text = result.output if result.error is None else result.error.reply
    if text and text.strip():
        return text
    if result.error is None:
        return "(empty output)"  # Discord refuses to send a blank message
    return f"❌ Agent {result.agent!r} failed ({result.error.error_type})"


def format_agents(registry: AgentRegistry, detail: bool = True) -> str:
    """Agent names and descriptions, then the files that failed to load: each path and why
    with `detail`, else the agent's name alone."""
    lines = [f"**{name}**: {agent.description}" for name, agent in sorted(registry.agents.items())]
    if detail:
        lines += [f"⚠️ {path}: {reason}" for path, reason in registry.failures.items()]
        return "\n".join(lines) or f"No agents in {', '.join(map(str, registry.directories))}"
    lines += [f"⚠️ {code_span(path.stem)}: failed to load" for path in registry.failures]
    return "\n".join(lines) or "No agents."


class CommandHandler:
    """Answers requests with the runtime, the registry and the stats reader.

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

    async def handle(
        self, text: str, user: str | None = None, frontend: str | None = None
    ) -> Reply:
        """Answer one line of user input."""
        return await self.execute(parse_request(text), user, frontend)

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
        kind = _REQUEST_NAMES[type(request)]
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
                result = await self.runtime.run(agent, query, user=user, frontend=frontend)
                return Reply(format_result(result), result.ok, result)
            case ShowStats(agent, scope):
                return await self._stats(agent, scope)
            case ListAgents(detail):
                return Reply(format_agents(self.runtime.registry, detail))
            case ReloadAgents():
                report = await self.runtime.reload()
                return Reply(f"Agents reloaded: {report}", ok=not report.failed)
            case ShowHistory(query):
                return await self._history(query)
            case ShowHelp(problem):
                return Reply(f"{problem}\n{HELP}" if problem else HELP, ok=problem is None)

    async def _history(self, query: HistoryQuery) -> Reply:
        """The latest entries `query` asks for, from every store of the history."""
        history = self.runtime.history
        if history is None:
            return Reply("The execution history is off (SEL_HISTORY=false).", ok=False)
        page = await history.query(query)
        return Reply(format_history(page, self.runtime.settings.trace_url_template))

    async def _stats(self, agent: str | None, scope: Scope) -> Reply:
        """The stats report; for an agent with no calls, whether it exists at all."""
        report = await self.stats.report(scope, agent)
        known = self.runtime.registry.agents
        if agent is not None and not report.rows and agent not in known:
            return Reply(AgentNotFound(agent, known=sorted(known)).reply, ok=False)
        return Reply(format_report(report, agent), stats=report)
