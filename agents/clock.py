"""The current time in any IANA time zone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sel_otel import AgentReplyError, code_span

DESCRIPTION = "Current date and time in a time zone, e.g. `Europe/Paris` (default UTC)"
CACHEABLE = False


class UnknownTimeZone(AgentReplyError):
    """The input names no IANA time zone; the message suggests close names."""


def run(query: str) -> str:
    name = query.strip() or "UTC"
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        close = sorted(z for z in available_timezones() if name.lower() in z.lower())[:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownTimeZone(f"⚠️ Unknown time zone {code_span(name)}.{hint}") from None
    now = datetime.now(zone)
    return f"{now:%Y-%m-%d %H:%M:%S} {now.tzname()} (UTC{now:%z}) in {name}"
