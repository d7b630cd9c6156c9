"""Discord-sized replies: cut to the message limits, code blocks closed, stats as embeds
(paged when they do not fit one)."""

from __future__ import annotations

from collections.abc import Sequence

import discord

from ._commands import AgentsReply
from ._markup import code_span, printable
from ._stats import format_stats, total
from ._stats_report import StatsReport, format_instance

#: Discord's limits, in characters: message content and embed description.
CONTENT_LIMIT = 2000
EMBED_DESCRIPTION_LIMIT = 4096
EMBED_TITLE_LIMIT = 256
#: Characters of a stats page given to notes (instances left out, Redis unreachable).
NOTES_LIMIT = 1000
#: Discord's 25-choice limit for autocomplete, and the length of a choice's name.
MAX_CHOICES = 25
CHOICE_NAME_LIMIT = 100

FENCE = "```"
STATS_COLOR = discord.Colour.blurple()


def fit(text: str, limit: int = CONTENT_LIMIT) -> str:
    """`text`, its control characters shown as symbols, within `limit` characters: when cut,
    an open code block is closed and a note added.

    The note says how much was shown, so nobody mistakes a cut output for the whole of it.
    """
    text = printable(text)
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


def stats_pages(
    report: StatsReport, uptime: float, agent: str | None = None
) -> list[discord.Embed]:
    """`/sel_agent_stats`: the report of every agent (or one) in as many embeds as it takes,
    most called first, each with the coverage, uptime and totals."""
    title = f"SEL agent stats: {agent}" if agent else "SEL agent stats"
    if report.scope == "per-instance":
        blocks = [format_instance(figures) for figures in report.instances]
    elif agent and not report.rows:
        blocks = [f"No calls of {code_span(agent)} yet."]
    else:
        blocks = [format_stats([row]) for row in report.rows] or [format_stats([])]
    head = fit("\n".join(f"⚠️ {note}" for note in report.notes), NOTES_LIMIT)
    descriptions = _pack(blocks, EMBED_DESCRIPTION_LIMIT - len(head) - 2)
    merged = total(report.rows)
    calls, cached, errors = merged.calls, merged.cached_calls, merged.errors
    pages = []
    for number, description in enumerate(descriptions, 1):
        embed = discord.Embed(
            title=printable(title)[:EMBED_TITLE_LIMIT],
            description=f"{head}\n\n{description}" if head else description,
            colour=STATS_COLOR,
        )
        embed.add_field(name="Coverage", value=report.coverage(), inline=False)
        embed.add_field(name="Uptime", value=format_uptime(uptime))
        embed.add_field(name="Total calls", value=f"{calls} (cached: {cached})")
        embed.add_field(name="Total errors", value=f"{errors} ({merged.error_rate:.1%})")
        if len(descriptions) > 1:
            embed.set_footer(text=f"Page {number}/{len(descriptions)}")
        pages.append(embed)
    return pages


def _pack(blocks: Sequence[str], limit: int) -> list[str]:
    """`blocks` joined by blank lines into as few texts of at most `limit` characters as
    they fit in, in order (a block longer than `limit` alone is cut)."""
    pages: list[str] = []
    current = ""
    for block in blocks:
        block = fit(block, limit)
        if current and len(current) + 2 + len(block) > limit:
            pages.append(current)
            current = ""
        current = f"{current}\n\n{block}" if current else block
    return [*pages, current]


def agents_embed(reply: AgentsReply) -> discord.Embed:
    """`/sel_agents`: the agent list, in an embed."""
    return discord.Embed(
        title=f"SEL agents ({len(reply.agents)})",
        description=fit(reply.text, EMBED_DESCRIPTION_LIMIT),
        colour=STATS_COLOR,
    )


def choice_name(name: str, description: str) -> str:
    """An autocomplete label, `name: description`, within Discord's 100 characters."""
    label = f"{name}: {description}"
    if len(label) <= CHOICE_NAME_LIMIT:
        return label
    return label[: CHOICE_NAME_LIMIT - 1] + "…"
