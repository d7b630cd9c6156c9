"""The request parser and handler shared by every frontend."""

from __future__ import annotations

import pytest

from sel_otel._commands import (
    CommandHandler,
    ListAgents,
    ReloadAgents,
    RunAgent,
    ShowHelp,
    ShowStats,
    StatsReply,
    parse_request,
)

from .conftest import AgentWriter, RuntimeFactory, TelemetryFixture


@pytest.mark.parametrize(
    ("text", "request_"),
    [
        ("agent:host_exec uname -a", RunAgent("host_exec", "uname -a")),
        ("  agent:calc   1 + 1  ", RunAgent("calc", "1 + 1")),
        ("agent:sysinfo", RunAgent("sysinfo", "")),
        ("/sel_agent_stats", ShowStats()),
        ("/sel_agent_stats calc", ShowStats("calc")),
        ("/sel_agents", ListAgents()),
        ("/sel_agent_reload", ReloadAgents()),
        ("/help", ShowHelp()),
    ],
)
def test_parse_request(text: str, request_: object) -> None:
    assert parse_request(text) == request_


def test_unknown_and_malformed_requests_ask_for_help() -> None:
    assert parse_request("agent: x") == ShowHelp("missing agent name: agent:NAME INPUT")
    unknown = parse_request("hello there")
    assert isinstance(unknown, ShowHelp) and "unknown request" in (unknown.problem or "")


@pytest.fixture
def handler(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> CommandHandler:
    write_agent("echo", "DESCRIPTION='Echoes'\ndef run(q):\n    return 'echo ' + q\n")
    write_agent("broken", "DESCRIPTION='x'\ndef run(:\n")
    return CommandHandler(make_runtime(), telemetry.reader)


async def test_handler_runs_agents_and_reports_stats(handler: CommandHandler) -> None:
    reply = await handler.handle("agent:echo hi")
    assert (reply.text, reply.ok) == ("echo hi", True)
    await handler.handle("agent:echo hi")
    stats = await handler.handle("/sel_agent_stats")
    assert "**echo**" in stats.text and "Calls: 2 (cached: 1)" in stats.text


async def test_handler_errors_are_marked(handler: CommandHandler) -> None:
    reply = await handler.handle("agent:nope x")
    assert not reply.ok and reply.text.startswith("❌ Unknown agent 'nope'")
    assert not (await handler.handle("bogus")).ok


async def test_agent_list_shows_descriptions_and_broken_files(handler: CommandHandler) -> None:
    text = (await handler.handle("/sel_agents")).text
    assert "**echo**: Echoes" in text
    assert "broken.py" in text and "SyntaxError" in text


async def test_reload_reports_changes(handler: CommandHandler, write_agent: AgentWriter) -> None:
    write_agent("new", "DESCRIPTION='n'\ndef run(q):\n    return q\n")
    reply = await handler.handle("/sel_agent_reload")
    assert "added: new" in reply.text
    assert not reply.ok  # broken.py still fails, and says so
    assert "broken.py" in reply.text


async def test_frontend_requests_are_root_spans_holding_the_agent_call(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("echo", "DESCRIPTION='Echoes'\ndef run(q):\n    return q\n")
    handler = CommandHandler(
        make_runtime(), telemetry.reader, tracer_provider=telemetry.tracer_provider
    )
    with telemetry.tracer_provider.get_tracer("t").start_as_current_span("unrelated"):
        await handler.handle("agent:echo hi", frontend="console")
    await handler.handle("agent:nope", frontend="console")
    [call] = telemetry.finished("invoke_agent echo")
    request, failed = telemetry.finished("console agent")
    assert request.parent is None
    assert call.parent.span_id == request.context.span_id
    assert dict(request.attributes) == {"sel.frontend": "console", "sel.request": "agent"}
    assert request.status.status_code.name == "UNSET"
    assert failed.status.status_code.name == "ERROR"


@pytest.mark.parametrize("separator", ["\t", "\n", "  "])
def test_any_white_space_separates_a_request_from_its_input(separator: str) -> None:
    assert parse_request(f"agent:calc{separator}1+1") == RunAgent("calc", "1+1")
    assert parse_request(f"/sel_agent_stats{separator}calc") == ShowStats("calc")


async def test_blank_outputs_and_messages_never_make_a_blank_reply(
    make_runtime: RuntimeFactory, write_agent: AgentWriter, telemetry: TelemetryFixture
) -> None:
    write_agent("blank", "DESCRIPTION='d'\ndef run(q):\n    return '   '\n")
    write_agent(
        "mute",
        "from sel_otel import AgentReplyError\nDESCRIPTION='d'\n"
        "def run(q):\n    raise AgentReplyError('')\n",
    )
    handler = CommandHandler(make_runtime(), telemetry.reader)
    assert (await handler.handle("agent:blank x")).text == "(empty output)"
    mute = await handler.handle("agent:mute x")
    assert (mute.text, mute.ok) == ("❌ Agent 'mute' failed (AgentReplyError)", False)


async def test_stats_of_an_unknown_agent_say_so_and_list_the_known_ones(
    handler: CommandHandler,
) -> None:
    await handler.handle("agent:echo hi")
    reply = await handler.handle("/sel_agent_stats nope")
    assert (reply.text, reply.ok) == ("❌ Unknown agent 'nope'. Known agents: echo", False)


async def test_stats_of_a_known_agent_without_calls_name_it(handler: CommandHandler) -> None:
    await handler.handle("agent:nope x")
    reply = await handler.handle("/sel_agent_stats echo")
    assert reply.ok and reply.text.endswith("\n\nNo calls of `echo` yet.")


async def test_stats_say_what_they_cover(handler: CommandHandler) -> None:
    await handler.handle("agent:echo hi")
    reply = await handler.handle("/sel_agent_stats")
    assert reply.text.startswith("_Coverage: this instance only (no shared Redis)_\n\n**echo**")
    assert isinstance(reply, StatsReply) and [row.calls for row in reply.stats.rows] == [1]
    this = await handler.handle("/sel_agent_stats scope:this echo")
    assert this.text.startswith("_Coverage: this instance only (scope:this)_\n\n**echo**")


@pytest.mark.parametrize(
    ("text", "request_"),
    [
        ("/sel_agent_stats scope:this", ShowStats(None, "this")),
        ("/sel_agent_stats calc scope:per-instance", ShowStats("calc", "per-instance")),
        ("/sel_agent_stats scope:all calc", ShowStats("calc", "all")),
        (
            "/sel_agent_stats scope:mine",
            ShowHelp("unknown scope 'mine': use all, this, per-instance"),
        ),
        ("/sel_agent_stats calc clock", ShowHelp("/sel_agent_stats takes one agent name")),
    ],
)
def test_parse_stats_scope(text: str, request_: object) -> None:
    assert parse_request(text) == request_
