"""The Discord access policy alone: its checks pass or raise a typed refusal."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from sel_otel import _semconv as names
from sel_otel._access import Access, AccessPolicy
from sel_otel._exceptions import NotPermitted, OnCooldown, Refused

OWNER, ALLOWED, STRANGER = 1, 2, 3


def User(id: int) -> Any:
    """A stand-in for a `discord.abc.User`: its id is all the policy reads."""
    return SimpleNamespace(id=id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def agent(privileged: bool) -> Any:
    return SimpleNamespace(privileged=privileged)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy(clock: Clock) -> AccessPolicy:
    access = Access(owner_ids=frozenset({OWNER}), allowed_user_ids=frozenset({ALLOWED}))
    return AccessPolicy(access, cooldown=10, clock=clock)


def test_refusals_are_typed_and_name_the_outcome_recorded() -> None:
    assert issubclass(NotPermitted, Refused) and issubclass(OnCooldown, Refused)
    assert NotPermitted.outcome == names.DISCORD_OUTCOME_FORBIDDEN
    assert OnCooldown.outcome == names.DISCORD_OUTCOME_COOLDOWN


def test_a_privileged_agent_is_not_permitted_to_strangers(policy: AccessPolicy) -> None:
    with pytest.raises(NotPermitted, match="`secret` is a privileged agent"):
        policy.check_agent("secret", agent(privileged=True), User(STRANGER))
    policy.check_agent("secret", agent(privileged=True), User(ALLOWED))
    policy.check_agent("secret", agent(privileged=True), User(OWNER))
    policy.check_agent("nope", None, User(STRANGER))  # an unknown agent is the runtime's


def test_the_cooldown_says_how_long_to_wait_and_spares_owners(
    policy: AccessPolicy, clock: Clock
) -> None:
    policy.check_agent("echo", agent(privileged=False), User(STRANGER))
    clock.now += 6.5
    with pytest.raises(OnCooldown) as refused:
        policy.check_agent("echo", agent(privileged=False), User(STRANGER))
    assert refused.value.retry_after == pytest.approx(3.5)
    assert str(refused.value) == "⏳ Slow down: try again in 4s."
    policy.check_cooldown("agents", User(STRANGER))  # each kind of request has its own
    for _ in range(3):
        policy.check_cooldown("agent", User(OWNER))
    clock.now += 3.5
    policy.check_agent("echo", agent(privileged=False), User(STRANGER))


def test_others_history_is_for_owners(policy: AccessPolicy) -> None:
    assert policy.history_user(User(OWNER), None) is None  # everyone's
    assert policy.history_user(User(OWNER), str(STRANGER)) == str(STRANGER)
    assert policy.history_user(User(STRANGER), None) == str(STRANGER)
    with pytest.raises(NotPermitted, match="other users' calls"):
        policy.history_user(User(STRANGER), str(OWNER))
    with pytest.raises(NotPermitted, match="reload the agents"):
        policy.check_owner(User(ALLOWED), "reload the agents")
