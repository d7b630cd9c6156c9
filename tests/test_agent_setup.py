"""The optional `setup(context)` hook: what the runtime hands an agent, once per version."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sel_otel import (
    Agent,
    AgentContext,
    AgentFailed,
    AgentLoadError,
    AgentRegistry,
    AgentRuntime,
    LRUMemoryCache,
    ResultCache,
    Settings,
)

SETUP_AGENT = """
DESCRIPTION = "Says how often it was set up"
CACHEABLE = False
SETUPS = 0
FAILURES_LEFT = 0
CONTEXT = None

async def setup(context):
    global SETUPS, FAILURES_LEFT, CONTEXT
    if FAILURES_LEFT:
        FAILURES_LEFT -= 1
        raise RuntimeError("not ready")
    SETUPS += 1
    CONTEXT = context

async def run(query):
    return f"{SETUPS} {CONTEXT.settings.host_exec_url}"
"""

PLAIN_AGENT = """
DESCRIPTION = "An agent of before the hook"
def run(query):
    return query.upper()
"""


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[AgentRuntime]:
    (tmp_path / "counted.py").write_text(SETUP_AGENT)
    (tmp_path / "plain.py").write_text(PLAIN_AGENT)
    settings = Settings(host_exec_url="http://127.0.0.1:9")
    runtime = AgentRuntime(
        AgentRegistry(tmp_path), ResultCache(LRUMemoryCache(10)), settings=settings
    )
    yield runtime
    await runtime.aclose()


async def test_setup_runs_once_before_the_first_call_with_the_runtimes_settings(
    runtime: AgentRuntime,
) -> None:
    await runtime.reload()
    outputs = [(await runtime.run("counted", "x")).output for _ in range(3)]
    assert outputs == ["1 http://127.0.0.1:9"] * 3
    context = runtime.registry.get("counted").function.__globals__["CONTEXT"]
    assert isinstance(context, AgentContext) and context.settings is runtime.settings
    assert not context.http.is_closed


async def test_the_runtime_closes_the_client_it_handed_agents(runtime: AgentRuntime) -> None:
    await runtime.reload()
    context = runtime.registry.get("counted").function.__globals__["CONTEXT"]
    await runtime.aclose()
    assert context.http.is_closed


async def test_agents_loaded_by_the_registry_alone_are_set_up_at_their_first_call(
    runtime: AgentRuntime,
) -> None:
    runtime.registry.reload()  # not through the runtime: no setup yet
    assert runtime.registry.get("counted").function.__globals__["SETUPS"] == 0
    assert (await runtime.run("counted", "x")).output == "1 http://127.0.0.1:9"


async def test_a_failed_setup_fails_the_call_and_the_next_call_tries_again(
    runtime: AgentRuntime,
) -> None:
    runtime.registry.reload()
    runtime.registry.get("counted").function.__globals__["FAILURES_LEFT"] = 1
    failed = await runtime.run("counted", "x")
    assert isinstance(failed.error, AgentFailed)
    assert "not ready" in str(failed.error.__cause__)
    assert (await runtime.run("counted", "x")).output == "1 http://127.0.0.1:9"


async def test_a_reloaded_version_is_set_up_again(runtime: AgentRuntime, tmp_path: Path) -> None:
    await runtime.reload()
    (tmp_path / "counted.py").write_text(SETUP_AGENT + "\n# changed\n")
    report = await runtime.reload()
    assert report.updated == ("counted",)
    assert runtime.registry.get("counted").function.__globals__["SETUPS"] == 1  # a fresh module


async def test_agents_without_setup_keep_working(runtime: AgentRuntime) -> None:
    await runtime.reload()
    assert (await runtime.run("plain", "hi")).output == "HI"
    assert runtime.registry.get("plain").setup is None


def _echo(query: str) -> str:
    return query


async def _takes_nothing() -> None:
    return None


def _sync_setup(context: AgentContext) -> None:
    return None


@pytest.mark.parametrize("setup", [_takes_nothing, _sync_setup])
def test_setup_must_be_async_and_take_the_context(setup: object) -> None:
    module = types.ModuleType("candidate")
    for name, value in {"DESCRIPTION": "d", "run": _echo, "setup": setup}.items():
        setattr(module, name, value)
    with pytest.raises(AgentLoadError) as caught:
        Agent.from_module("bad", module)
    assert "setup must" in caught.value.reason
