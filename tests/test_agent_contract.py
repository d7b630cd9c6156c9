"""The agent contract: what a module must define, defaults, and per-input cache policy."""

from __future__ import annotations

import types

import pytest

from sel_otel import Agent, AgentLoadError


def module(**attributes: object) -> types.ModuleType:
    mod = types.ModuleType("candidate")
    for name, value in attributes.items():
        setattr(mod, name, value)
    return mod


def echo(query: str) -> str:
    return query


async def async_echo(query: str) -> str:
    return query


def test_defaults_apply_when_optional_names_are_absent() -> None:
    agent = Agent.from_module("echo", module(DESCRIPTION=" Echo ", run=echo))
    assert agent.description == "Echo"
    assert agent.cacheable and agent.cache_ttl == 60.0
    assert agent.timeout is None and not agent.privileged and not agent.cache_per_user
    assert not agent.is_async


def test_async_run_is_detected() -> None:
    assert Agent.from_module("echo", module(DESCRIPTION="d", run=async_echo)).is_async


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"run": echo}, "DESCRIPTION"),
        ({"DESCRIPTION": "", "run": echo}, "DESCRIPTION"),
        ({"DESCRIPTION": "d"}, "run(query)"),
        ({"DESCRIPTION": "d", "run": lambda: "x"}, "one argument"),
        ({"DESCRIPTION": "d", "run": echo, "CACHE_TTL": -1}, "CACHE_TTL"),
        ({"DESCRIPTION": "d", "run": echo, "CACHE_TTL": "60"}, "CACHE_TTL"),
        ({"DESCRIPTION": "d", "run": echo, "CACHE_TTL": float("nan")}, "CACHE_TTL"),
        ({"DESCRIPTION": "d", "run": echo, "TIMEOUT": float("inf")}, "TIMEOUT"),
        ({"DESCRIPTION": "d", "run": echo, "CACHE_TTL": 1e300}, "CACHE_TTL"),
        ({"DESCRIPTION": "d", "run": echo, "CACHE_TTL_BY_INPUT": {"x": 10**12}}, "a year"),
        ({"DESCRIPTION": "d", "run": echo, "TIMEOUT": 365 * 24 * 3600 + 1}, "TIMEOUT"),
        ({"DESCRIPTION": "d", "run": echo, "CACHEABLE": "yes"}, "CACHEABLE"),
        ({"DESCRIPTION": "d", "run": echo, "TIMEOUT": 0}, "TIMEOUT"),
        ({"DESCRIPTION": "d", "run": echo, "CACHE_TTL_BY_INPUT": {"x": "1"}}, "CACHE_TTL_BY"),
        ({"DESCRIPTION": "d", "run": echo, "INVALIDATED_BY": "rm"}, "INVALIDATED_BY"),
        ({"DESCRIPTION": "d", "run": echo, "PRIVILEGED": 1}, "PRIVILEGED"),
    ],
)
def test_contract_violations_name_the_problem(attributes: dict[str, object], reason: str) -> None:
    with pytest.raises(AgentLoadError) as caught:
        Agent.from_module("bad", module(**attributes))
    assert reason in caught.value.reason
    assert caught.value.agent == "bad"


def test_a_year_is_the_longest_ttl_and_timeout() -> None:
    year = 365 * 24 * 3600
    agent = Agent.from_module(
        "long", module(DESCRIPTION="d", run=echo, CACHE_TTL=year, TIMEOUT=year)
    )
    assert (agent.cache_ttl, agent.timeout) == (year, year)


def test_ttl_by_input_matches_exact_input_then_first_word() -> None:
    agent = Agent.from_module(
        "host",
        module(
            DESCRIPTION="d",
            run=echo,
            CACHE_TTL=10,
            CACHE_TTL_BY_INPUT={"uname -a": 3600, "uname": 5, "cat": 0},
        ),
    )
    assert agent.ttl_for("  uname -a ") == 3600
    assert agent.ttl_for("uname -r") == 5
    assert agent.ttl_for("cat /etc/hostname") == 0
    assert agent.ttl_for("uptime") == 10
    assert agent.ttl_for("uname\t -a") == 3600  # white space is not significant
    assert agent.ttl_for("cat\t/etc/passwd") == 0
    assert agent.ttl_for("'cat' /etc/passwd") == 0  # quoted as a shell reads it
    assert agent.ttl_for('"c"at /etc/passwd') == 0


def test_not_cacheable_means_zero_ttl_whatever_the_overrides() -> None:
    agent = Agent.from_module(
        "x", module(DESCRIPTION="d", run=echo, CACHEABLE=False, CACHE_TTL_BY_INPUT={"a": 9})
    )
    assert agent.ttl_for("a") == 0


def test_invalidation_matches_the_first_word_only() -> None:
    agent = Agent.from_module("x", module(DESCRIPTION="d", run=echo, INVALIDATED_BY={"rm", "mv"}))
    assert agent.invalidates("rm -f /tmp/x")
    assert agent.invalidates(" mv a b")
    assert not agent.invalidates("cat rm")
    assert not agent.invalidates("rmdir x")
    assert agent.invalidates("rm\tx") and agent.invalidates("\nmv\na b")
    assert not agent.invalidates("   ")
    assert agent.invalidates("'rm' -f x") and agent.invalidates('r"m" x')  # no dodging by quotes
    assert agent.invalidates("r\\m x")
    assert not agent.invalidates("'rm x")  # an unclosed quote: the word as it stands
