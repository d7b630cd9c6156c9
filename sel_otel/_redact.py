"""Scrub values that look like secrets from text before it leaves the process in telemetry."""

from __future__ import annotations

import functools
import re

REDACTED = "[REDACTED]"

_PATTERNS = [
    # key=value and key: value pairs whose key names a secret
    re.compile(
        r"(?i)\b([\w.-]*(?:token|passw(?:or)?d|pwd|secret|api[_-]?key|access[_-]?key|auth)"
        r"[\w.-]*[\"']?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
    ),
    # HTTP authorization schemes
    re.compile(r"(?i)\b(bearer|basic)(\s+)[\w.~+/=-]{8,}"),
    # credentials in URLs: scheme://user:password@host
    re.compile(r"(://[^/\s:@]+:)[^@\s/]+(@)"),
]
_TOKENS = re.compile(
    r"\b(?:"
    r"[MNO][\w-]{23,27}\.[\w-]{6}\.[\w-]{27,}"  # Discord bot token
    r"|eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}"  # JSON Web Token
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub token
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|xox[abprs]-[\w-]{10,}"  # Slack token
    r"|sk-[A-Za-z0-9_-]{20,}"  # API secret keys
    r")"
)


def scrub(text: str) -> str:
    """`text` with secret-looking values replaced by `[REDACTED]`."""
    text = _PATTERNS[1].sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _PATTERNS[0].sub(lambda m: m.group(1) + REDACTED, text)
    text = _PATTERNS[2].sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
    return _TOKENS.sub(REDACTED, text)


@functools.lru_cache(maxsize=1024)
def span_content(text: str, limit: int) -> str:
    """`text` scrubbed and cut to at most `limit` characters (an ellipsis marks the cut).

    Memoized: the same inputs recur (that is why they are cached), and scrubbing costs more
    than the rest of a cache hit.
    """
    if len(text) > limit * 4:  # scrub no more than can be shown
        text = text[: limit * 4]
    text = scrub(text)
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"
