"""The agents shipped in agents/, run through the real runtime."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sel_otel import AgentRegistry, AgentRuntime, LRUMemoryCache, ResultCache

AGENTS = Path(__file__).resolve().parent.parent / "agents"


@pytest.fixture
async def runtime() -> AgentRuntime:
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
    assert re.search(r"Disk \(/\): [\d.]+ \w+ / [\d.]+ \w+", output)
    assert "Kernel: " in output


async def test_sysinfo_rejects_a_missing_path(runtime: AgentRuntime) -> None:
    result = await runtime.run("sysinfo", "/no/such/path")
    assert "cannot read disk usage" in str(result.error)


@pytest.mark.parametrize(
    ("expression", "answer"),
    [
        ("2**10 / (3 + 1)", "256"),
        ("-3 + 4 * 2", "5"),
        ("sqrt(16) + max(1, 2)", "6"),
        ("7 / 2", "3.5"),
    ],
)
async def test_calc_evaluates_arithmetic(
    runtime: AgentRuntime, expression: str, answer: str
) -> None:
    assert (await runtime.run("calc", expression)).output == f"{expression} = {answer}"


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
    ],
)
async def test_calc_refuses_anything_but_arithmetic(runtime: AgentRuntime, expression: str) -> None:
    result = await runtime.run("calc", expression)
    assert not result.ok
    assert "ValueError" in str(result.error)


async def test_clock_tells_the_time_in_a_zone(runtime: AgentRuntime) -> None:
    output = (await runtime.run("clock", "Asia/Tokyo")).output or ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d JST \(UTC\+0900\) in Asia/Tokyo", output)


async def test_clock_suggests_zones_for_an_unknown_name(runtime: AgentRuntime) -> None:
    result = await runtime.run("clock", "tokyo")
    assert "Did you mean: Asia/Tokyo" in str(result.error)
