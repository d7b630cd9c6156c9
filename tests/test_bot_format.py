"""Replies sized for Discord: cut at the limits with a note, code blocks closed; embeds."""

from __future__ import annotations

import itertools

import pytest

from sel_otel import code_span
from sel_otel._discord_format import (
    CHOICE_NAME_LIMIT,
    CONTENT_LIMIT,
    EMBED_DESCRIPTION_LIMIT,
    choice_name,
    fit,
    format_uptime,
    stats_pages,
)
from sel_otel._stats import AgentStats
from sel_otel._stats_report import StatsReport


def report(rows: list[AgentStats], notes: list[str] | None = None) -> StatsReport:
    """A report of this process's figures alone."""
    return StatsReport("all", rows, [], shared=False, notes=notes or [], alone="scope:this")


@pytest.mark.parametrize("limit", [CONTENT_LIMIT, EMBED_DESCRIPTION_LIMIT])
def test_text_at_the_limit_is_left_whole(limit: int) -> None:
    text = "a" * limit
    assert fit(text, limit) == text


@pytest.mark.parametrize("limit", [CONTENT_LIMIT, EMBED_DESCRIPTION_LIMIT])
def test_text_one_over_the_limit_is_cut_with_a_note(limit: int) -> None:
    text = "a" * (limit + 1)
    cut = fit(text, limit)
    assert len(cut) <= limit
    assert cut.startswith("a" * (limit - 100))
    assert cut.endswith(f" of {limit + 1:,} characters shown)_")
    shown = len(cut.partition("\n_(")[0])
    assert f"{shown:,} of" in cut


def test_an_open_code_block_is_closed_when_cut() -> None:
    text = "Output:\n```\n" + "line\n" * 1000 + "```"
    cut = fit(text, CONTENT_LIMIT)
    body = cut.partition("\n_(cut")[0]
    assert body.count("```") == 2
    assert body.endswith("\n```")
    assert len(cut) <= CONTENT_LIMIT


def test_a_closed_code_block_gets_no_extra_fence() -> None:
    text = "```\nshort\n```\n" + "plain " * 500
    body = fit(text, CONTENT_LIMIT).partition("\n_(cut")[0]
    assert body.count("```") == 2


@pytest.mark.parametrize("offset", range(-6, 7))
def test_a_cut_through_a_fence_never_leaves_stray_backticks(offset: int) -> None:
    # Place a fence so that the cut falls before, inside and after it.
    budget = len(fit("z" * 5000, CONTENT_LIMIT).partition("\n_(cut")[0])
    text = "y" * (budget + offset) + "```python\ncode\n```" + "z" * 3000
    cut = fit(text, CONTENT_LIMIT)
    body = cut.partition("\n_(cut")[0]
    assert len(cut) <= CONTENT_LIMIT
    assert body.count("```") % 2 == 0
    assert not body.rstrip("`").endswith("y`") and "y``\n" not in body


def test_every_size_around_the_limit_fits() -> None:
    for size in range(CONTENT_LIMIT - 5, CONTENT_LIMIT + 200):
        text = ("```\n" + "x" * size)[:size]
        cut = fit(text, CONTENT_LIMIT)
        assert len(cut) <= CONTENT_LIMIT, size
        if size > CONTENT_LIMIT:
            assert cut.partition("\n_(cut")[0].count("```") == 2, size


def test_uptime_leaves_out_leading_zero_units() -> None:
    assert format_uptime(5.9) == "5s"
    assert format_uptime(65) == "1m 5s"
    assert format_uptime(3600) == "1h 0m 0s"
    assert format_uptime(2 * 86400 + 3 * 3600 + 4 * 60 + 5) == "2d 3h 4m 5s"


def test_stats_embed_has_per_agent_blocks_coverage_uptime_and_totals() -> None:
    rows = [
        AgentStats("calc", calls=4, cached_calls=3, errors=1, total_seconds=0.004),
        AgentStats("clock", calls=2, cached_calls=0, errors=0, total_seconds=0.002),
    ]
    [embed] = stats_pages(report(rows), uptime=3661)
    assert embed.title == "SEL agent stats"
    assert embed.description is not None
    assert embed.description.startswith("**calc**\n  Calls: 4 (cached: 3)")
    assert "**clock**" in embed.description
    fields = {field.name: field.value for field in embed.fields}
    assert fields == {
        "Coverage": "this instance only (scope:this)",
        "Uptime": "1h 1m 1s",
        "Total calls": "6 (cached: 3)",
        "Total errors": "1 (16.7%)",
    }
    assert embed.footer.text is None


def test_stats_embed_for_an_agent_without_calls_says_so() -> None:
    [embed] = stats_pages(report([]), uptime=1, agent="calc")
    assert embed.title == "SEL agent stats: calc"
    assert embed.description == "No calls of `calc` yet."


def test_stats_embed_for_any_name_a_user_typed_fits_and_stays_inert() -> None:
    name = "x`**" * 100
    [embed] = stats_pages(report([]), uptime=1, agent=name)
    assert embed.title is not None and len(embed.title) == 256  # Discord's title limit
    assert embed.description == f"No calls of {code_span(name)} yet."


def test_stats_notes_come_first_on_every_page() -> None:
    rows = [AgentStats(f"agent_{i:03}", calls=1) for i in range(100)]
    pages = stats_pages(report(rows, ["the shared Redis could not be read"]), uptime=0)
    assert len(pages) > 1
    for page in pages:
        assert page.description is not None
        assert page.description.startswith("⚠️ the shared Redis could not be read\n\n**agent_")


def test_a_report_too_long_for_one_embed_is_paged_most_called_first_totals_on_each() -> None:
    rows = [AgentStats(f"agent_{i:03}", calls=300 - i, errors=1) for i in range(200)]
    pages = stats_pages(report(rows), uptime=0)
    assert len(pages) > 5
    shown = []
    for number, page in enumerate(pages, 1):
        assert page.description is not None
        assert len(page.description) <= EMBED_DESCRIPTION_LIMIT
        assert "cut to fit" not in page.description
        shown += [line.strip("*") for line in page.description.split("\n") if line[:2] == "**"]
        fields = {field.name: field.value for field in page.fields}
        assert fields["Total calls"] == f"{sum(r.calls for r in rows)} (cached: 0)"
        assert fields["Total errors"] == "200 (0.5%)"
        assert page.footer.text == f"Page {number}/{len(pages)}"
        assert len(page) <= 6000  # Discord's limit for an embed as a whole
    assert shown == [row.agent for row in rows]
    # pages are filled: a page and the next one's first block would not fit together
    for page, following in itertools.pairwise(pages):
        assert page.description is not None and following.description is not None
        first = following.description.split("\n\n")[0]
        assert len(page.description) + 2 + len(first) > EMBED_DESCRIPTION_LIMIT


def test_choice_names_stay_within_discords_limit() -> None:
    assert choice_name("calc", "Arithmetic") == "calc: Arithmetic"
    long = choice_name("calc", "x" * 300)
    assert len(long) == CHOICE_NAME_LIMIT and long.endswith("…")
