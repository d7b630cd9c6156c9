"""Discord bot settings: one frozen dataclass, built from the environment in one place."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._exceptions import ConfigError
from ._settings import _get, _parse_bool

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


def _seconds(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < math.inf:  # also rejects nan
        raise ValueError("must be a finite number of seconds >= 0")
    return value


@dataclass(frozen=True)
class BotSettings:
    """How the Discord frontend connects, syncs its commands and who may run what."""

    token: str = field(default="", repr=False)
    #: Sync the slash commands to this guild only (instant); None syncs them globally.
    guild_id: int | None = None
    #: May reload agents and run privileged agents; empty means the application's owner(s).
    owner_ids: frozenset[int] = frozenset()
    #: Users and roles that may run privileged agents (besides the owners).
    allowed_user_ids: frozenset[int] = frozenset()
    allowed_role_ids: frozenset[int] = frozenset()
    #: Seconds a user waits between two agent calls (0: no cooldown; owners are exempt).
    cooldown: float = 3.0
    #: Answer `agent:NAME INPUT` messages (needs the privileged message content intent).
    message_prefix: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BotSettings:
        """Build settings from `DISCORD_TOKEN` and `SEL_DISCORD_*` (`os.environ` when None).

        Raise `ConfigError` when `DISCORD_TOKEN` is missing or a value is invalid.
        """
        env = os.environ if env is None else env
        token = env.get(TOKEN_VARIABLE, "").strip()
        if not token:
            raise ConfigError(
                f"{TOKEN_VARIABLE} is not set: the bot needs the token of a Discord application "
                "(see the README, section 'Discord bot'). "
                "To use the agents without Discord, run `sel-otel console`."
            )
        guild_ids = _get(env, "SEL_DISCORD_GUILD_ID", _ids, NO_IDS)
        if len(guild_ids) > 1:
            raise ConfigError(f"SEL_DISCORD_GUILD_ID={env['SEL_DISCORD_GUILD_ID']!r}: one id only")
        return cls(
            token=token,
            guild_id=next(iter(guild_ids), None),
            owner_ids=_get(env, "SEL_DISCORD_OWNER_IDS", _ids, NO_IDS),
            allowed_user_ids=_get(env, "SEL_DISCORD_ALLOWED_USER_IDS", _ids, NO_IDS),
            allowed_role_ids=_get(env, "SEL_DISCORD_ALLOWED_ROLE_IDS", _ids, NO_IDS),
            cooldown=_get(env, "SEL_DISCORD_COOLDOWN", _seconds, cls.cooldown),
            message_prefix=_get(env, "SEL_DISCORD_MESSAGE_PREFIX", _parse_bool, False),
        )
