"""Reading the history: `/sel_agent_history` arguments in, entries out as text with trace links."""

from __future__ import annotations

from datetime import UTC, datetime

from . import _semconv as names
from ._history import OUTCOMES, HistoryEntry, HistoryPage, HistoryQuery
from ._markup import code_span, printable, printable_line

HISTORY_USAGE = "/sel_agent_history [agent=NAME] [user=ID] [outcome=ok|error|refused] [limit=N]"
DEFAULT_LIMIT = 20
#: Entries one reply shows at most (a Discord message holds 2,000 characters).
MAX_LIMIT = 50
_ICONS = {names.OUTCOME_OK: "✅", names.OUTCOME_ERROR: "❌", names.OUTCOME_REFUSED: "🔒"}
_INPUT_SHOWN = 60


def parse_history_args(text: str) -> HistoryQuery | str:
    """`agent=NAME user=ID outcome=ok|error|refused limit=N`, each optional, in any order (a
    bare word is the agent), as a query; or what is wrong with them."""
    fields: dict[str, str] = {}
    for word in text.split():
        key, equals, value = word.partition("=")
        if not equals:
            key, value = "agent", word
        if key not in ("agent", "user", "outcome", "limit") or not value:
            return f"not understood: {word[:40]!r}; use {HISTORY_USAGE}"
        fields[key] = value
    outcome = fields.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        return f"outcome must be {', '.join(OUTCOMES)}"
    limit = fields.get("limit", str(DEFAULT_LIMIT))
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
        return f"limit must be a whole number from 1 to {MAX_LIMIT}"
    return HistoryQuery(fields.get("agent"), fields.get("user"), outcome, int(limit))


def trace_url(template: str | None, trace_id: str) -> str | None:
    """The link to trace `trace_id`: `template` with `{trace_id}` replaced (None without
    either)."""
    if not template or not trace_id:
        return None
    return template.replace("{trace_id}", trace_id)


def format_history(page: HistoryPage, template: str | None, limit: int | None = None) -> str:
    """The entries as markdown lines, newest first, each linked to its trace, after a warning
    naming the stores that could not be read. Within `limit` characters when given: whole
    lines only, and a last line saying how many of the entries were shown."""
    head = []
    if page.unavailable:
        unread = ", ".join(page.unavailable)
        head.append(f"⚠️ Not read: the {unread} history; these come from the other stores.")
    lines = [printable(_markdown_line(entry, template)) for entry in page.entries]
    if not lines:
        lines.append("No history entries match.")
    if limit is None:
        return "\n".join([*head, *lines])
    budget = limit - sum(len(line) + 1 for line in head) - len(_shown(len(lines), len(lines)))
    shown: list[str] = []
    for line in lines:
        budget -= len(line) + 1
        if budget < 0:
            break
        shown.append(line)
    if len(shown) < len(lines):
        shown.append(_shown(len(shown), len(lines)))
    return "\n".join([*head, *shown])


def _shown(count: int, total: int) -> str:
    return f"_({count} of {total} entries shown: ask for fewer, or filter them)_"


def _markdown_line(entry: HistoryEntry, template: str | None) -> str:
    # A call of an unknown agent records the name as the user typed it: shown inert.
    agent = f"**{entry.agent}**" if entry.agent.isidentifier() else code_span(entry.agent)
    parts = [f"`{_clock(entry.time)}` {_ICONS.get(entry.outcome, '•')} {agent}"]
    if entry.input:
        parts.append(f"`{_shown_input(entry.input)}`")
    parts.append(_who(entry))
    parts.append(_result(entry))
    url = trace_url(template, entry.trace_id)
    if url is not None:
        parts.append(f"[trace](<{url}>)")  # <...>: no link preview
    elif entry.trace_id:
        parts.append(f"trace `{entry.trace_id}`")
    return " · ".join(part for part in parts if part)


def format_line(entry: HistoryEntry, template: str | None) -> str:
    """One entry as a plain-text line, for a terminal: what users typed (an unknown agent's
    name, a user id, the input) cannot move the cursor or retitle the terminal."""
    url = trace_url(template, entry.trace_id)
    columns = [
        _clock(entry.time),
        f"{entry.outcome:<7}",
        entry.agent,
        _who(entry) or "-",
        _result(entry),
        f"trace={url or entry.trace_id or '-'}",
    ]
    if entry.input:
        columns.append(repr(entry.input))
    return printable_line("  ".join(columns))


def _clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _shown_input(text: str) -> str:
    text = " ".join(text.split()).replace("`", "'")
    return text if len(text) <= _INPUT_SHOWN else text[: _INPUT_SHOWN - 1] + "…"


def _who(entry: HistoryEntry) -> str:
    who = entry.user or ""
    if entry.frontend:
        who = f"{who} ({entry.frontend})" if who else entry.frontend
    return who


def _result(entry: HistoryEntry) -> str:
    if entry.outcome == names.OUTCOME_REFUSED:
        return entry.error_type or "refused"
    text = f"{entry.duration_ms:.1f} ms"
    if entry.cached:
        text += " cached"
    if entry.error_type:
        text += f" {entry.error_type}"
    return text
