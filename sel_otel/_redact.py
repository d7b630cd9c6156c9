"""Scrub values that look like secrets from text before it leaves the process in telemetry.

Every pattern runs in time linear in the text (bounded repetitions, no nested ambiguous
quantifiers): the scrubber runs on the event loop, on text users choose.
"""

from __future__ import annotations

import re
import traceback

REDACTED = "[REDACTED]"
#: Exceptions shown at most from a chain of causes (a cycle ends there too).
_MAX_CHAIN = 16

#: A quoted value (its closing quote may be cut off), or everything up to the end of the
#: line (header values hold spaces).
_LINE_VALUE = r"(?:\"[^\"\n]*\"?|'[^'\n]*'?|[^\r\n\"']+)"
#: A quoted value (its closing quote may be cut off), or one word.
_WORD_VALUE = r"(?:\"[^\"\n]*\"?|'[^'\n]*'?|[^\s\"']+)"
#: Words naming a secret anywhere in a key (PGPASSWORD, accessToken, JWT_SECRET_KEY,
#: HTTP_AUTHORIZATION); `auth` alone only as a whole part, so that `author` is no secret.
_SECRET_WORD = (
    r"(?:token|passw(?:or)?d|pwd|secret|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|credential|session[_-]?id|auth(?:orization)?(?![a-z]))"
)
#: Characters of a key around its secret word.
_KEY_PART = r"[A-Za-z0-9_.-]"

# Each pattern keeps its first group and replaces the rest of the match with REDACTED.
_KEEP_PREFIX = [
    # HTTP headers whose whole value is a credential, whatever the scheme
    re.compile(
        rf"(?i)(?<![A-Za-z0-9])((?:proxy-)?(?:authorization|cookie|set-cookie)\s*[:=]\s*)"
        rf"{_LINE_VALUE}"
    ),
    # HTTP authorization schemes outside a header (a path after `token` is no credential)
    re.compile(r"(?i)\b((?:bearer|basic|token|digest)\s+)(?!/)[\w.~+/=-]{8,}"),
    # key=value and key: value pairs whose key holds a word naming a secret
    re.compile(
        rf"(?i)(?<!{_KEY_PART})({_KEY_PART}{{0,60}}?{_SECRET_WORD}{_KEY_PART}{{0,30}}"
        rf"[\"']?\s{{0,8}}[:=]\s{{0,8}}){_WORD_VALUE}"
    ),
    # command-line options naming a secret: --token abc, --client-secret=abc
    re.compile(
        rf"(?i)((?:^|\s)--?[A-Za-z0-9-]{{0,40}}?{_SECRET_WORD}[A-Za-z0-9-]{{0,20}}(?:\s+|=))"
        rf"{_WORD_VALUE}"
    ),
    # user:password after -u/--user (curl and friends)
    re.compile(r"(?i)((?:^|\s)(?:-u|--user)(?:\s+|=)[^\s:]+:)\S+"),
    # mysql's -pPASSWORD, option and value in one word, when mysql is the command
    re.compile(r"(?im)(^\s*mysql(?:dump|admin)?\s[^\n]{0,200}?\s-p)[^\s-]\S*"),
]
# credentials in URLs: scheme://user:password@host and scheme://:password@host
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]*:)[^@\s/]+(@)")
# Tokens start where a run of token characters starts, so that a long run of look-alikes
# (eyJ-eyJ-...) is read once, not once per look-alike.
_TOKENS = re.compile(
    r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]{0,40}PRIVATE KEY-----|$)"
    r"|(?<![\w-])(?:"
    r"[MNO][\w-]{23,27}\.[\w-]{6}\.[\w-]{27,}"  # Discord bot token
    r"|eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}"  # JSON Web Token
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub tokens
    r"|glpat-[\w-]{20,}"  # GitLab personal access token
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|AIza[\w-]{35}"  # Google API key
    r"|xox[abprs]-[\w-]{10,}"  # Slack token
    r"|sk-[A-Za-z0-9_-]{20,}"  # API secret keys
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{10,}"  # Stripe keys
    r")"
)
#: Characters scrubbed beyond what is shown: a secret that starts in view is read whole.
_SCRUB_MARGIN = 4096


def scrub(text: str) -> str:
    """`text` with secret-looking values replaced by `[REDACTED]`."""
    for pattern in _KEEP_PREFIX:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    text = _URL_CREDENTIALS.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
    return _TOKENS.sub(REDACTED, text)


def span_content(text: str, limit: int) -> str:
    """`text` scrubbed and cut to at most `limit` characters (an ellipsis marks the cut)."""
    text = scrub(text[: limit + _SCRUB_MARGIN])  # scrub what can be shown, and a margin
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def frames_only(exc: BaseException) -> str:
    """The stack of `exc` and of the exceptions that led to it, oldest first, with their
    types but none of their messages (which may quote what was not to be recorded)."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < _MAX_CHAIN:
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(f"{frames}{type(current).__qualname__}\n")
        current = current.__cause__ or current.__context__
    return "\nDuring or because of the above:\n\n".join(reversed(parts))
