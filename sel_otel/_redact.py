"""Scrub values that look like secrets from text before it leaves the process in telemetry."""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"

# Each pattern keeps its first group and replaces the rest of the match with REDACTED.
_KEEP_PREFIX = [
    # HTTP authorization schemes
    re.compile(r"(?i)\b((?:bearer|basic)\s+)[\w.~+/=-]{8,}"),
    # key=value and key: value pairs whose key names a secret
    re.compile(
        r"(?i)\b([\w.-]*(?:token|passw(?:or)?d|pwd|secret|api[_-]?key|access[_-]?key|auth)"
        r"[\w.-]*[\"']?\s*[:=]\s*)(?:\"[^\"]*\"|'[^']*'|\S+)"
    ),
    # command-line options naming a secret: --token abc, --api-key abc
    re.compile(r"(?i)(--?(?:token|passw(?:or)?d|secret|api[_-]?key|auth)\s+)\S+"),
    # user:password after -u/--user (curl and friends)
    re.compile(r"(?i)((?:^|\s)(?:-u|--user)(?:\s+|=)[^\s:]+:)\S+"),
]
# credentials in URLs: scheme://user:password@host and scheme://:password@host
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]*:)[^@\s/]+(@)")
_TOKENS = re.compile(
    r"\b(?:"
    r"[MNO][\w-]{23,27}\.[\w-]{6}\.[\w-]{27,}"  # Discord bot token
    r"|eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}"  # JSON Web Token
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub tokens
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|xox[abprs]-[\w-]{10,}"  # Slack token
    r"|sk-[A-Za-z0-9_-]{20,}"  # API secret keys
    r")"
)


def scrub(text: str) -> str:
    """`text` with secret-looking values replaced by `[REDACTED]`."""
    for pattern in _KEEP_PREFIX:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    text = _URL_CREDENTIALS.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
    return _TOKENS.sub(REDACTED, text)


def span_content(text: str, limit: int) -> str:
    """`text` scrubbed and cut to at most `limit` characters (an ellipsis marks the cut)."""
    if len(text) > limit * 4:  # scrub no more than can be shown
        text = text[: limit * 4]
    text = scrub(text)
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"
