"""Scrub values that look like secrets from text before it leaves the process in telemetry.

Every pattern runs in time linear in the text (bounded repetitions, no nested ambiguous
quantifiers): the scrubber runs on the event loop, on text users choose.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Sequence

REDACTED = "[REDACTED]"
#: Exceptions shown at most from a chain of causes (a cycle ends there too).
_MAX_CHAIN = 16

#: A quoted value, or everything up to the end of the line (header values hold spaces).
_LINE_VALUE = r"(?:\"[^\"\n]*\"|'[^'\n]*'|[^\r\n\"']+)"
#: Values that are settings, not secrets (PasswordAuthentication=no).
_SETTING_VALUE = r"(?:true|false|yes|no|on|off|none|null)"
#: A quoted value, or one word; not a bare setting value.
_WORD_VALUE = (
    rf"(?!{_SETTING_VALUE}(?![^\s,;}}\]\"']))"
    r"(?:\"[^\"\n]*\"|'[^'\n]*'|[^\s\"']+)"
)
#: Words naming a secret anywhere in a key (PGPASSWORD, accessToken, JWT_SECRET_KEY,
#: HTTP_AUTHORIZATION, DB_PASS); `auth`, `pass` and `pw` only as whole parts, so that
#: `author` and `bypass` are no secrets.
_SECRET_WORD = (
    r"(?:token|passw(?:or)?d|pwd|secret|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|credential|session[_-]?id|auth(?:orization)?(?![a-z])"
    r"|(?<![a-z])pass(?:phrase)?(?![a-z])|(?<![a-z])pw(?![a-z]))"
)
#: Characters of a key around its secret word.
_KEY_PART = r"[A-Za-z0-9_.-]"
#: Between a key and its value: `key: value`, `key=value`, `key = value`, `key => value`
#: (never `key= value`: in `grep password= /etc/app.conf` the path is no password).
_SEPARATOR = r"[\"']?(?:\s{0,8}:\s{0,8}|\s{1,8}=>?\s{1,8}|=)"

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
        rf"{_SEPARATOR}){_WORD_VALUE}"
    ),
    # command-line options naming a secret: --token abc, --client-secret=abc
    re.compile(
        rf"(?i)((?:^|\s)--?[A-Za-z0-9-]{{0,40}}?{_SECRET_WORD}[A-Za-z0-9-]{{0,20}}(?:\s+|=))"
        rf"{_WORD_VALUE}"
    ),
    # user:password after -u/--user (curl and friends)
    re.compile(r"(?i)((?:^|\s)(?:-u|--user)(?:\s+|=)[^\s:]+:)\S+"),
    # mysql's -pPASSWORD, option and value in one word (mysql as a command, not a path)
    re.compile(r"(?i)((?<![\w/.-])mysql(?:dump|admin)?\s(?:[^\n]{0,200}?\s)?-p)[^\s-]\S*"),
    # password options of common tools, value in the next word
    re.compile(
        r"(?i)((?<![\w/.-])(?:sshpass|docker\s+login|ldap\w{0,20}|ssh-keygen)\s"
        r"(?:[^\n]{0,200}?\s)?(?:-p|-w|-N|--password)\s+)\S+"
    ),
    re.compile(r"(?i)((?<![\w/.-])openssl\s+passwd\s+(?:-\S+\s+){0,4})\S+"),
    # smbclient and friends: -U user%password
    re.compile(r"((?:^|\s)-U\s+[^\s%]+%)\S+"),
    # secrets in query strings and XML elements
    re.compile(r"(?i)([?&](?:sig|signature|x-amz-signature|x-amz-credential)=)[^&\s\"']+"),
    re.compile(r"(?i)(<(?:password|secret|token|api_?key)(?:\s[^>]{0,200})?>)[^<]{1,400}"),
    # a URL whose user part is a token (https://TOKEN@github.com), and Slack webhooks
    re.compile(r"(://)[A-Za-z0-9_-]{20,}(?=@)"),
    re.compile(r"(hooks\.slack\.com/services/)[A-Za-z0-9/]+"),
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
    r"|npm_[A-Za-z0-9]{30,}|hf_[A-Za-z0-9]{30,}"  # npm and Hugging Face tokens
    r"|AGE-SECRET-KEY-1[0-9A-Z]{50,}"  # age secret key
    r")"
)
#: One argument assigning a value to a secret-named key: everything after `=` is the value.
_ASSIGNMENT = re.compile(
    rf"(?is)\A({_KEY_PART}{{0,60}}?{_SECRET_WORD}{_KEY_PART}{{0,30}}=)"
    rf"(?!{_SETTING_VALUE}\Z).+\Z"
)
#: Characters scrubbed beyond what is shown: a secret that starts in view is read whole.
_SCRUB_MARGIN = 4096


def _keep_prefix(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED


def scrub(text: str) -> str:
    """`text` with secret-looking values replaced by `[REDACTED]`."""
    for pattern in _KEEP_PREFIX:
        text = pattern.sub(_keep_prefix, text)
    text = _URL_CREDENTIALS.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
    return _TOKENS.sub(REDACTED, text)


def scrub_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with each argument scrubbed; an argument assigning a secret-named key
    (`PASSWORD='x y`) and one that follows a secret-named option (`--password x`,
    `-u user:x`) are redacted whole, quotes and all."""
    scrubbed = [_ASSIGNMENT.sub(_keep_prefix, argument) for argument in argv]
    scrubbed = [scrub(argument) for argument in scrubbed]
    for i in range(1, len(argv)):
        pair = f"{argv[i - 1]} {argv[i]}"
        if scrubbed[i] == argv[i] and not scrub(pair).endswith(" " + argv[i]):
            scrubbed[i] = REDACTED
    return scrubbed


def span_content(text: str, limit: int) -> str:
    """`text` scrubbed and cut to at most `limit` characters (an ellipsis marks the cut).

    What can be shown is scrubbed with a margin of `_SCRUB_MARGIN` characters, cut at a
    space, so that a secret starting in view is read whole, even when scrubbing shortens
    what comes before it.
    """
    cut = len(text) > limit + _SCRUB_MARGIN
    if cut:
        head = text[: limit + _SCRUB_MARGIN]
        text = head.rsplit(None, 1)[0] if head[-1:].strip() and " " in head else head
    text = scrub(text)
    if len(text) <= limit and not cut:
        return text
    return text[: max(limit - 1, 0)] + "…"


def frames_only(exc: BaseException) -> str:
    """The stack of `exc` and of the exceptions that led to it or that it groups, oldest
    first, with their types but none of their messages (which may quote what was not to be
    recorded); the source lines shown are scrubbed."""
    parts: list[str] = []
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending and len(parts) < _MAX_CHAIN:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(f"{frames}{type(current).__qualname__}\n")
        if isinstance(current, BaseExceptionGroup):
            pending.extend(reversed(current.exceptions))
        cause = current.__cause__
        if cause is None and not current.__suppress_context__:
            cause = current.__context__
        if cause is not None:
            pending.append(cause)
    return scrub("\nDuring or because of the above:\n\n".join(reversed(parts)))
