"""Discord bot settings: one frozen dataclass, built from the environment in one place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._exceptions import ConfigError
from ._settings import _parse_bool, _seconds_or_zero, read_env, setting

TOKEN_VARIABLE = "DISCORD_TOKEN"
NO_IDS: frozenset[int] = frozenset()


def _ids(raw: str) -> frozenset[int]:
    """Discord ids (snowflakes) separated by commas or spaces."""
    ids = set()
    for item in raw.replace(",", " ").split():
        if not item.isdigit():
            raise ValueError(f"{item!r} is not a Discord id (digits only)")
        ids.add(int(item))
    return frozenset(ids)


def _guild_id(raw: str) -> int | None:
    ids = _ids(raw)
    if len(ids) > 1:
        raise ValueError("one id only")
    return next(iter(ids), None)


def everyone_role_problem(role_ids: Iterable[int]) -> str:
    """Why the bot refuses to start with these @everyone roles among the allowed roles."""
    listed = ", ".join(map(str, role_ids))
    return (
        f"SEL_DISCORD_ALLOWED_ROLE_IDS holds {listed}: the @everyone role of a server (its id "
        "is the server's), which every member has, so anyone could run privileged agents. "
        "List only the roles that may, or their members in SEL_DISCORD_ALLOWED_USER_IDS."
    )


@dataclass(frozen=True)
class BotSettings:
    """How the Discord frontend connects, syncs its commands and who may run what."""

    token: str = setting(
        TOKEN_VARIABLE,
        str.strip,
        "",
        "bot token of the Discord application (Developer Portal, Bot, Reset Token)",
        shown_default="required",
        repr=False,
    )
    #: Sync the slash commands to this guild only (instant); None syncs them globally.
    guild_id: int | None = setting(
        "SEL_DISCORD_GUILD_ID",
        _guild_id,
        None,
        "sync the slash commands to this server only, at once; synced globally, they may take "
        "Discord an hour to show",
        shown_default="global",
    )
    #: May reload agents and run privileged agents; empty means the application's owner(s).
    owner_ids: frozenset[int] = setting(
        "SEL_DISCORD_OWNER_IDS",
        _ids,
        NO_IDS,
        "user ids (comma or space separated) that may reload agents and run privileged agents",
        shown_default="the application's owner or team",
    )
    #: Users and roles that may run privileged agents (besides the owners).
    allowed_user_ids: frozenset[int] = setting(
        "SEL_DISCORD_ALLOWED_USER_IDS", _ids, NO_IDS, "user ids that may run privileged agents"
    )
    allowed_role_ids: frozenset[int] = setting(
        "SEL_DISCORD_ALLOWED_ROLE_IDS",
        _ids,
        NO_IDS,
        "role ids whose members may run privileged agents (never a server's @everyone role: the "
        "bot refuses to start with it)",
    )
    #: Seconds a user waits between two agent calls, and between two `/sel_agents`, two
    #: `/sel_agent_stats` or two `/sel_agent_history` (0: no cooldown; owners are exempt).
    cooldown: float = setting(
        "SEL_DISCORD_COOLDOWN",
        _seconds_or_zero,
        3.0,
        "seconds each user waits between agent calls, and between two /sel_agents, two "
        "/sel_agent_stats or two /sel_agent_history (0: none; owners are exempt)",
    )
    #: Answer `agent:NAME INPUT` messages (needs the privileged message content intent).
    message_prefix: bool = setting(
        "SEL_DISCORD_MESSAGE_PREFIX",
        _parse_bool,
        False,
        "answer agent:NAME INPUT messages (needs the Message Content intent)",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BotSettings:
        """Build settings from `DISCORD_TOKEN` and `SEL_DISCORD_*` (`os.environ` when None).

        Raise `ConfigError` when `DISCORD_TOKEN` is missing, a value is invalid, or an allowed
        role is the @everyone role of `SEL_DISCORD_GUILD_ID` (its id is the guild's; the bot
        checks the other guilds it is in when it starts).
        """
        values = read_env(cls, env)
        if not values["token"]:
            raise ConfigError(
                f"{TOKEN_VARIABLE} is not set: the bot needs the token of a Discord application "
                "(see the README, section 'Discord bot'). "
                "To use the agents without Discord, run `sel-otel console`."
            )
        if values["guild_id"] in values["allowed_role_ids"]:
            raise ConfigError(everyone_role_problem([values["guild_id"]]))
        return cls(**values)
