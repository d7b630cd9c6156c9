"""Discord-sized replies: cut to the message limits, code blocks closed, stats as embeds."""

from __future__ import annotations

from collections.abc import Sequence

import discord

from ._stats import AgentStats, format_stats

#: Discord's limits, in characters: message content and embed description.
CONTENT_LIMIT = 2000
EMBED_DESCRIPTION_LIMIT = 4096
EMBED_TITLE_LIMIT = 256
#: Discord's 25-choice limit for autocomplete, and the length of a choice's name.
MAX_CHOICES = 25
CHOICE_NAME_LIMIT = 100

FENCE = "```"
STATS_COLOR = discord.Colour.blurple()


def fit(text: str, limit: int = CONTENT_LIMIT) -> str:
    """`text` within `limit` characters: when cut, an open code block is closed and a note added.

    The note says how much was shown, so nobody mistakes a cut output for the whole of it.
    """
    if len(text) <= limit:
        return text
    total = f"{len(text):,}"

    def note(shown: int) -> str:
        return f"\n_(cut to fit Discord: {shown:,} of {total} characters shown)_"

    budget = limit - len(note(len(text))) - len("\n" + FENCE)
    kept = text[:budget]
    if text[budget] == "`":  # never keep part of a fence
        kept = kept.rstrip("`")
    shown = len(kept)
    if kept.count(FENCE) % 2:
        kept += "\n" + FENCE
    return kept + note(shown)


def format_uptime(seconds: float) -> str:
    """`3d 4h 5m 6s`, leading zero units left out."""
    remaining = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, remaining = divmod(remaining, size)
        if count or parts:
            parts.append(f"{count}{unit}")
    parts.append(f"{remaining}s")
    return " ".join(parts)


def stats_embed(
    rows: Sequence[AgentStats], uptime: float, agent: str | None = None
) -> discord.Embed:
    """`/sel_agent_stats`: the stats report of every agent (or one), uptime and totals."""
    title = f"SEL agent stats: {agent}" if agent else "SEL agent stats"
    if agent and not rows:
        # Agent names are identifiers; anything else a user typed is shown inert.
        name = f"`{agent}`" if agent.isidentifier() else discord.utils.escape_markdown(agent)
        description = f"No calls of {name} yet."
    else:
        description = format_stats(rows)
    embed = discord.Embed(
        title=title[:EMBED_TITLE_LIMIT],
        description=fit(description, EMBED_DESCRIPTION_LIMIT),
        colour=STATS_COLOR,
    )
    calls = sum(row.calls for row in rows)
    cached = sum(row.cached_calls for row in rows)
    errors = sum(row.errors for row in rows)
    embed.add_field(name="Uptime", value=format_uptime(uptime))
    embed.add_field(name="Total calls", value=f"{calls} (cached: {cached})")
    embed.add_field(name="Total errors", value=f"{errors} ({errors / calls if calls else 0.0:.1%})")
    return embed


def agents_embed(text: str, count: int) -> discord.Embed:
    """`/sel_agents`: the agent list of the shared command module, in an embed."""
    return discord.Embed(
        title=f"SEL agents ({count})",
        description=fit(text, EMBED_DESCRIPTION_LIMIT),
        colour=STATS_COLOR,
    )


def choice_name(name: str, description: str) -> str:
    """An autocomplete label, `name: description`, within Discord's 100 characters."""
    label = f"{name}: {description}"
    if len(label) <= CHOICE_NAME_LIMIT:
        return label
    return label[: CHOICE_NAME_LIMIT - 1] + "…"
