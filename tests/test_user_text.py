"""Text that users control is shown inert: quoted in replies in code spans it cannot close, and
with its control characters shown as symbols wherever a reply reaches a terminal.

Replies are checked the way Discord reads them: what is outside inline code and code blocks
(`rendered`, after simple-markdown's inline code rule) must hold no link, heading or
formatting of the user's.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sel_otel import (
    AgentRegistry,
    AgentRuntime,
    BotSettings,
    ConfigError,
    LRUMemoryCache,
    ResultCache,
    Settings,
    code_span,
    stats_reader,
)
from sel_otel._commands import CommandHandler, format_result
from sel_otel._console import run_console
from sel_otel._history import HistoryEntry, HistoryPage
from sel_otel._history_format import format_history, format_line
from sel_otel._markup import QUOTE_LIMIT, printable
from sel_otel.hostexec._local import LocalHostExec
from tests.conftest import AgentWriter, RuntimeFactory

AGENTS = Path(__file__).resolve().parent.parent / "agents"

LINK = "[Free Nitro](https://evil.example)"
#: simple-markdown's inline code (Discord's): a run of backticks, text, the same run.
_CODE = re.compile(r"(`+)([\s\S]*?[^`])\1(?!`)")


def rendered(text: str) -> str:
    """What Discord reads as markdown in `text`: all but its code spans and blocks."""
    return _CODE.sub("", text)


def assert_inert(reply: str, hostile: str = LINK) -> None:
    outside = rendered(reply)
    assert hostile not in outside and "](" not in outside, reply
    assert not any(line.lstrip().startswith("#") for line in outside.splitlines()), reply


# -- the helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        LINK,
        f"` {LINK} `",
        f"``{LINK}``",
        f"x` {LINK}",
        f"{LINK} `",
        f"```\n{LINK}\n```",
        f"1\n# Heading {LINK}",
        "`",
        "a``b```c",
    ],
)
def test_a_code_span_holds_whatever_it_quotes_on_one_line(text: str) -> None:
    span = code_span(text)
    assert rendered(span) == ""  # one span, from its first character to its last
    assert "\n" not in span
    assert span.replace("\u200b", "").replace("␊", "\n").strip("` ") == text.strip("` ")


def test_a_long_quote_is_cut_so_that_a_cut_reply_never_splits_it() -> None:
    span = code_span("x" * 5000)
    assert len(span) <= QUOTE_LIMIT + 2 and span.endswith("…`")


def test_control_characters_are_shown_as_symbols() -> None:
    hostile = "title\x1b]0;pwned\x07 clear\x1b[2J\x1bc csi\x9b31m del\x7f nul\x00 cr\rX"
    shown = printable(hostile + "\r\nnext\tline \ud800")
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", shown)
    assert "␛]0;pwned␇" in shown and "␛[2J" in shown and "\\x9b31m" in shown
    assert shown.endswith("cr␍X\nnext\tline \ufffd")  # line feeds and tabs kept
    assert printable("plain\ntext") == "plain\ntext"


# -- the shipped agents --------------------------------------------------------------------------


@pytest.fixture
async def runtime() -> AsyncIterator[AgentRuntime]:
    registry = AgentRegistry(AGENTS)
    assert not registry.reload().failed
    runtime = AgentRuntime(registry, ResultCache(LRUMemoryCache(100)))
    yield runtime
    await runtime.aclose()


@pytest.mark.parametrize(
    ("agent", "query"),
    [
        ("clock", LINK),
        ("clock", f"`{LINK}`"),
        ("calc", f"1 # {LINK}"),
        ("calc", f"(1\n# Heading {LINK}\n)"),
        ("calc", f"1/0 # `{LINK}`"),
        ("calc", f"[1]({LINK})"),
        ("sysinfo", LINK),
        ("sysinfo", f"/no/such/`{LINK}`"),
    ],
)
async def test_shipped_agents_quote_their_input_inertly(
    runtime: AgentRuntime, agent: str, query: str
) -> None:
    assert_inert(format_result(await runtime.run(agent, query)))


async def test_calc_echoes_plain_arithmetic_as_typed(runtime: AgentRuntime) -> None:
    assert (await runtime.run("calc", "sqrt(16) + max(1, 2)")).output == "sqrt(16) + max(1, 2) = 6"
    assert (await runtime.run("calc", "2**3")).output == "`2**3` = 8"


@pytest.fixture
async def host_exec(tmp_path: Path) -> AsyncIterator[AgentRuntime]:
    """A runtime whose settings point the host_exec agent at a service of its own."""
    allowlist = tmp_path / "allowlist.json"
    allowlist.write_text(json.dumps({"roots": [], "commands": [{"argv": ["uname", "-a"]}]}))
    async with LocalHostExec(allowlist=allowlist) as service:
        settings = Settings(host_exec_url=service.url, host_exec_token=service.token)
        runtime = AgentRuntime(
            AgentRegistry(AGENTS), ResultCache(LRUMemoryCache(100)), settings=settings
        )
        await runtime.reload()
        try:
            yield runtime
        finally:
            await runtime.aclose()


@pytest.mark.parametrize("command", [f"uname `{LINK}`", f"uname ``{LINK}``", f"uname {LINK}"])
async def test_host_exec_quotes_a_refused_command_inertly(
    host_exec: AgentRuntime, command: str
) -> None:
    result = await host_exec.run("host_exec", command)
    assert result.error is not None and "blocked" in result.error.reply
    assert_inert(result.error.reply)


# -- the shared replies --------------------------------------------------------------------------


async def test_an_unknown_agent_name_is_quoted_inertly(runtime: AgentRuntime) -> None:
    commands = CommandHandler(runtime, stats_reader())
    reply = await commands.handle(f"agent:{LINK.replace(' ', '_')} x")
    assert not reply.ok and reply.text.startswith("❌ Unknown agent `")
    assert_inert(reply.text, LINK.replace(" ", "_"))
    plain = await commands.handle("agent:nope x")
    assert plain.text.startswith("❌ Unknown agent 'nope'.")


async def test_the_text_of_an_agents_exception_is_quoted_inertly(
    write_agent: AgentWriter, make_runtime: RuntimeFactory
) -> None:
    write_agent("strict", 'DESCRIPTION = "d"\ndef run(q):\n    raise ValueError(f"bad: {q}")\n')
    write_agent("bare", 'DESCRIPTION = "d"\ndef run(q):\n    raise RuntimeError\n')
    runtime = make_runtime()
    reply = format_result(await runtime.run("strict", LINK))
    assert reply.startswith("❌ Agent 'strict' failed: ValueError: `bad: ")
    assert_inert(reply)
    assert format_result(await runtime.run("bare", "")) == "❌ Agent 'bare' failed: RuntimeError"


def test_history_lines_quote_an_unknown_agents_name() -> None:
    entry = HistoryEntry(
        "id", 0.0, LINK, f"`{LINK}`", "1", "discord", "error", "agent_not_found", 0.0, False, "i",
        "", "",
    )  # fmt: skip
    text = format_history(HistoryPage([entry]), None)
    assert_inert(text)
    assert "**calc**" in format_history(HistoryPage([entry._replace(agent="calc")]), None)


def test_a_history_reply_keeps_whole_entries_within_discords_limit_warning_first() -> None:
    first = HistoryEntry(
        "id", 1_700_000_000.0, "host_exec", "uname -a", "123456789012345678", "discord", "ok",
        None, 12.5, False, "i", "", "",
    )  # fmt: skip
    entries = [
        first._replace(id=f"id-{n}", time=first.time - n, trace_id=f"{n + 1:032x}")
        for n in range(50)
    ]
    page = HistoryPage(entries, ("redis",))
    template = "http://localhost:16686/trace/{trace_id}"
    whole = format_history(page, template).splitlines()
    text = format_history(page, template, limit=2000)
    lines = text.splitlines()
    assert len(text) <= 2000
    assert lines[0].startswith("⚠️ Not read: the redis history")  # never the part cut off
    shown = lines[1:-1]
    assert 10 < len(shown) < 50 and shown == whole[1 : len(shown) + 1]  # whole lines only
    assert lines[-1] == f"_({len(shown)} of 50 entries shown: ask for fewer, or filter them)_"
    assert format_history(HistoryPage(entries[:3]), template, limit=2000).count("\n") == 2


# -- terminals -----------------------------------------------------------------------------------

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[3J\x9b31m"


def test_history_lines_for_a_terminal_hold_no_control_character_of_a_users() -> None:
    entry = HistoryEntry(
        "id", 0.0, f"{ESCAPES}\nnext line", "uname", f"{ESCAPES}\n", "cli\r", "error",
        "agent_not_found", 0.0, False, "i", "", "",
    )  # fmt: skip
    line = format_line(entry, None)
    assert not any(char in line for char in "\x1b\x07\x9b\n\r")
    assert "␛]0;pwned" in line  # shown, as symbols


async def test_the_console_shows_control_characters_of_an_output_as_symbols(
    write_agent: AgentWriter, make_runtime: RuntimeFactory
) -> None:
    write_agent("raw", f'DESCRIPTION = "d"\ndef run(q):\n    return {ESCAPES!r} + "done"\n')
    commands = CommandHandler(make_runtime(), stats_reader())
    stdout = io.StringIO()
    assert await run_console(commands, io.StringIO("agent:raw\n"), stdout) == 0
    assert stdout.getvalue() == "␛]0;pwned␇␛[2J␛[3J\\x9b31mdone\n"


def test_an_everyone_role_among_the_allowed_roles_is_refused_at_start() -> None:
    env = {"DISCORD_TOKEN": "t", "SEL_DISCORD_GUILD_ID": "555"}
    with pytest.raises(ConfigError, match="@everyone role"):
        BotSettings.from_env(env | {"SEL_DISCORD_ALLOWED_ROLE_IDS": "900 555"})
    assert BotSettings.from_env(env | {"SEL_DISCORD_ALLOWED_ROLE_IDS": "900"}).allowed_role_ids
