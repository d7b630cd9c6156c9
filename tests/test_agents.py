"""The agents shipped in agents/, run through the real runtime."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sel_otel import (
    AgentFailed,
    AgentRegistry,
    AgentReplyError,
    AgentRuntime,
    LRUMemoryCache,
    ResultCache,
)

AGENTS = Path(__file__).resolve().parent.parent / "agents"


@pytest.fixture
async def runtime() -> AsyncIterator[AgentRuntime]:
    registry = AgentRegistry(AGENTS)
    report = registry.reload()
    assert not report.failed
    runtime = AgentRuntime(registry, ResultCache(LRUMemoryCache(10)))
    yield runtime
    await runtime.aclose()


async def test_sysinfo_reports_the_host(runtime: AgentRuntime) -> None:
    import os

    output = (await runtime.run("sysinfo", "")).output or ""
    assert f"CPUs: {os.cpu_count()}" in output
    assert re.search(r"Disk \(`/`\): [\d.]+ \w+ / [\d.]+ \w+", output)
    assert "Kernel: " in output


async def test_sysinfo_rejects_a_missing_path(runtime: AgentRuntime) -> None:
    result = await runtime.run("sysinfo", "/no/such/path")
    assert result.error is not None
    assert result.error.reply == (
        "⚠️ Cannot read the disk usage of `/no/such/path`: No such file or directory"
    )


@pytest.mark.parametrize(
    ("expression", "reply"),
    [
        ("2**10 / (3 + 1)", "`2**10 / (3 + 1)` = 256"),  # markdown would read the asterisks
        ("-3 + 4 * 2", "`-3 + 4 * 2` = 5"),
        ("sqrt(16) + max(1, 2)", "sqrt(16) + max(1, 2) = 6"),
        ("7 / 2", "7 / 2 = 3.5"),
    ],
)
async def test_calc_evaluates_arithmetic(
    runtime: AgentRuntime, expression: str, reply: str
) -> None:
    assert (await runtime.run("calc", expression)).output == reply


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('id')",
        "open('/etc/passwd')",
        "(1).__class__",
        "9**9**9",
        "(9**999)**9999",
        "(9**4000) * (9**4000) * (9**4000)",
        "9**5000",
        "2**(2**2000)",
        "",
        "1 +",
        "1/0",
        "sqrt(-1)",
        "sqrt(1, 2)",
        "exp(1000)",
        "x" * 501,
    ],
)
async def test_calc_refuses_anything_but_arithmetic(runtime: AgentRuntime, expression: str) -> None:
    result = await runtime.run("calc", expression)
    assert isinstance(result.error, AgentFailed)
    assert isinstance(result.error.original, AgentReplyError)
    assert result.error.reply.startswith("⚠️ ")
    assert "Error" not in result.error.reply  # no exception class name


@pytest.mark.parametrize(
    ("agent", "query", "reply"),
    [
        ("calc", "", "⚠️ Give an expression, e.g. `2 * (3 + 4)`"),
        ("calc", "1 +", "⚠️ Not an expression: invalid syntax"),
        ("calc", "1/0", "⚠️ Cannot evaluate `1/0`: division by zero"),
        ("clock", "Mars/Olympus", "⚠️ Unknown time zone `Mars/Olympus`."),
        ("host_exec", "  ", "⚠️ Give a command, e.g. `uname -a`"),
    ],
)
async def test_an_input_mistake_is_answered_in_words_not_an_exception_class(
    runtime: AgentRuntime, agent: str, query: str, reply: str
) -> None:
    result = await runtime.run(agent, query)
    assert result.error is not None
    assert (result.error.reply, result.cached) == (reply, False)
    assert result.error.error_type != "ValueError"


async def test_clock_tells_the_time_in_a_zone(runtime: AgentRuntime) -> None:
    output = (await runtime.run("clock", "Asia/Tokyo")).output or ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d JST \(UTC\+0900\) in Asia/Tokyo", output)


async def test_clock_suggests_zones_for_an_unknown_name(runtime: AgentRuntime) -> None:
    result = await runtime.run("clock", "tokyo")
    assert result.error is not None
    assert result.error.reply == "⚠️ Unknown time zone `tokyo`. Did you mean: Asia/Tokyo?"
    assert result.error.error_type == "UnknownTimeZone"
