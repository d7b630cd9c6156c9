"""Who may run what, and how often: the Discord frontend's access policy.

Owners may do anything, at any pace. Anyone may run an ordinary agent; a privileged one needs
an owner, an allowed user or an allowed role. Reloading the agents and reading other users'
history are for owners. Everyone else is spaced by a per-user cooldown, one for agent calls
and one for each of `/sel_agents`, `/sel_agent_stats` and `/sel_agent_history`, kept by
discord.py's own
`CooldownMapping` (the same for slash commands and `agent:` messages: both key on the user).

A check returns when the user may go ahead and raises a `Refused` (`NotPermitted`,
`OnCooldown`) when not; the frontend renders and records refusals in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import discord
from discord.ext.commands import CooldownMapping

from ._agent import Agent
from ._exceptions import NotPermitted, OnCooldown

#: What a cooldown spaces: agent calls, the agent list, the stats, the history.
Spaced = Literal["agent", "agents", "stats", "history"]


@dataclass(frozen=True)
class Access:
    """Who is an owner, and who may run privileged agents."""

    owner_ids: frozenset[int] = frozenset()
    allowed_user_ids: frozenset[int] = frozenset()
    allowed_role_ids: frozenset[int] = frozenset()

    def is_owner(self, user: discord.abc.User) -> bool:
        return user.id in self.owner_ids

    def may_run(self, agent: Agent, user: discord.abc.User) -> bool:
        """Anyone may run an ordinary agent; a privileged one needs an owner or an allowed id.

        A guild's @everyone role (whose id is the guild's) never allows: every member has it.
        """
        if not agent.privileged or self.is_owner(user) or user.id in self.allowed_user_ids:
            return True
        roles: Iterable[discord.abc.Snowflake] = getattr(user, "roles", ())
        everyone = getattr(getattr(user, "guild", None), "id", None)
        return any(role.id in self.allowed_role_ids and role.id != everyone for role in roles)

    def everyone_roles(self, guild_ids: Iterable[int]) -> list[int]:
        """The allowed role ids that are the @everyone role of one of `guild_ids`."""
        return sorted(self.allowed_role_ids.intersection(guild_ids))


def _user_id(user: discord.abc.User) -> int:
    return user.id


class AccessPolicy:
    """The checks each command runs before it does anything."""

    def __init__(
        self,
        access: Access,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.access = access
        self._clock = clock
        self._cooldowns: dict[Spaced, CooldownMapping[discord.abc.User]] = {
            spaced: CooldownMapping.from_cooldown(1, cooldown, _user_id)
            for spaced in get_args(Spaced)
        }

    def is_owner(self, user: discord.abc.User) -> bool:
        return self.access.is_owner(user)

    def check_agent(self, name: str, agent: Agent | None, user: discord.abc.User) -> None:
        """`user` may call the agent `name` now (an unknown agent is the runtime's to answer);
        a refused call does not start the cooldown."""
        if agent is not None and not self.access.may_run(agent, user):
            raise NotPermitted(
                f"🔒 `{name}` is a privileged agent: only allowed users and roles may run it. "
                "Ask the bot's owner for access."
            )
        self.check_cooldown("agent", user)

    def check_cooldown(self, spaced: Spaced, user: discord.abc.User) -> None:
        """`user` (not an owner) did not do `spaced` within the cooldown; books this time."""
        if self.access.is_owner(user):
            return
        retry_after = self._cooldowns[spaced].update_rate_limit(user, self._clock())
        if retry_after:
            raise OnCooldown(retry_after)

    def check_owner(self, user: discord.abc.User, refusal: str) -> None:
        """`user` is an owner; else the refusal says what only owners may do."""
        if not self.access.is_owner(user):
            raise NotPermitted(f"🔒 Only the bot's owners may {refusal}.")

    def history_user(self, user: discord.abc.User, asked: str | None) -> str | None:
        """Whose calls `user` sees when asking for `asked`'s: owners anyone's (None: all),
        others their own alone."""
        if self.access.is_owner(user):
            return asked
        own = str(user.id)
        if asked not in (None, own):
            raise NotPermitted("🔒 Only the bot's owners may see other users' calls.")
        return own
