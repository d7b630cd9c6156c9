"""Scrub values that look like secrets from text before it leaves the process in telemetry.

Each rule has a name (`redact` says which matched, as the export-side scrubber records).
Every pattern runs in time linear in the text (bounded repetitions, no nested ambiguous
quantifiers, token shapes tried only where a run of token characters starts): the scrubber
runs on the event loop, on text users choose.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

REDACTED = "[REDACTED]"

#: A quoted value, or everything up to the end of the line (header values hold spaces).
_LINE_VALUE = r"(?:\"[^\"\n]*\"|'[^'\n]*'|[^\r\n\"']+)"
#: Values that are settings, not secrets (PasswordAuthentication=no).
_SETTING_VALUE = r"(?:true|false|yes|no|on|off|none|null)"
#: A quoted value, or one word; not a bare setting value, nor one redacted already.
_WORD_VALUE = (
    rf"(?!{_SETTING_VALUE}(?![^\s,;}}\]\"'])|{re.escape(REDACTED)})"
    r"(?:\"[^\"\n]*\"|'[^'\n]*'|[^\s\"']+)"
)
#: Words naming a secret anywhere in a key (PGPASSWORD, accessToken, JWT_SECRET_KEY,
#: HTTP_AUTHORIZATION, DB_PASS, AccountKey); `auth`, `pass` and `pw` only as whole parts, so
#: that `author` and `bypass` are no secrets; counts of tokens (`max_tokens`, `tokenizer`) and
#: a secretary neither.
_SECRET_WORD = (
    r"(?:token(?!s|i[sz])|passw(?:or)?d|pwd|secret(?!ar)|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|(?:account|shared[_-]?access|signing|encryption|master)[_-]?key"
    r"|credential|session[_-]?id|auth(?:orization)?(?![a-z])"
    r"|(?<![a-z])pass(?:phrase)?(?![a-z])|(?<![a-z])pw(?![a-z]))"
    # what names a secret's kind, place or size is not one (token_type, password_file)
    r"(?![_.-]?(?:file|path|stdin|url|uri|endpoint|type|expiry|expires|ttl|count|limit"
    r"|length|len|usage|budget|policy)(?![a-z]))"
)
#: Characters of a key around its secret word.
_KEY_PART = r"[A-Za-z0-9_.-]"
#: Between a key and its value: `key: value`, `key=value`, `key = value`, `key => value`
#: (never `key= value`: in `grep password= /etc/app.conf` the path is no password).
_SEPARATOR = r"[\"']?(?:\s{0,8}:\s{0,8}|\s{1,8}=>?\s{1,8}|=)"

#: Rules that keep their first group and replace the rest of the match with REDACTED.
_KEEP_PREFIX: tuple[tuple[str, re.Pattern[str]], ...] = (
    # HTTP headers whose whole value is a credential, whatever the scheme
    (
        "credential_header",
        re.compile(
            r"(?i)(?<![A-Za-z0-9])((?:proxy-)?(?:authorization|cookie|set-cookie)\s*[:=]\s*)"
            rf"{_LINE_VALUE}"
        ),
    ),
    # HTTP authorization schemes outside a header (a path after `token` is no credential,
    # nor a word of prose: a token value holds a digit or is long)
    ("auth_scheme", re.compile(r"(?i)\b((?:bearer|basic|digest)\s+)(?!/)[\w.~+/=-]{8,}")),
    (
        "auth_scheme",
        re.compile(r"(?i)\b(token\s+)(?!/)(?=[\w.~+/=-]{0,80}?\d|[\w.~+/=-]{24})[\w.~+/=-]{8,}"),
    ),
    # query parameters naming a secret, up to the next parameter
    (
        "query_secret",
        re.compile(
            rf"(?i)([?&][A-Za-z0-9_.-]{{0,60}}?{_SECRET_WORD}[A-Za-z0-9_.-]{{0,30}}=)"
            r"[^&#\s\"']+"
        ),
    ),
    # key=value and key: value pairs whose key holds a word naming a secret
    (
        "secret_key_value",
        re.compile(
            rf"(?i)(?<!{_KEY_PART})(?={_KEY_PART}{{1,91}}{_SEPARATOR})"  # a key, at a glance
            rf"({_KEY_PART}{{0,60}}?{_SECRET_WORD}{_KEY_PART}{{0,30}}{_SEPARATOR}){_WORD_VALUE}"
        ),
    ),
    # command-line options naming a secret: --token abc, --client-secret=abc
    (
        "secret_option",
        re.compile(
            rf"(?i)((?:^|\s)--?[A-Za-z0-9-]{{0,40}}?{_SECRET_WORD}[A-Za-z0-9-]{{0,20}}"
            rf"(?:\s+|=)){_WORD_VALUE}"
        ),
    ),
    # user:password after -u/--user (curl and friends)
    ("user_password_option", re.compile(r"(?i)((?:^|\s)(?:-u|--user)(?:\s+|=)[^\s:]+:)\S+")),
    # mysql's -pPASSWORD, option and value in one word (mysql as a command, not a path)
    (
        "password_option",
        re.compile(r"(?i)((?<![\w/.-])mysql(?:dump|admin)?\s(?:[^\n]{0,200}?\s)?-p)[^\s-]\S*"),
    ),
    # password options of common tools, value in the next word
    (
        "password_option",
        re.compile(
            r"(?i)((?<![\w/.-])(?:sshpass|docker\s+login|ldap\w{0,20}|ssh-keygen)\s"
            r"(?:[^\n]{0,200}?\s)?(?:-p|-w|-N|--password)\s+)\S+"
        ),
    ),
    ("password_option", re.compile(r"(?i)((?<![\w/.-])openssl\s+passwd\s+(?:-\S+\s+){0,4})\S+")),
    # smbclient and friends: -U user%password; .netrc: login user password secret
    ("password_option", re.compile(r"((?:^|\s)-U\s+[^\s%]+%)\S+")),
    (
        "netrc_password",
        re.compile(r"(?i)((?:\bmachine\s+\S+|\bdefault)\s+login\s+\S+\s+password\s+)\S+"),
    ),
    # secrets in query strings, connection strings and XML elements
    (
        "url_signature",
        re.compile(r"(?i)([?&](?:sig|signature|x-amz-signature|x-amz-credential)=)[^&\s\"']+"),
    ),
    (
        "connection_string_key",
        re.compile(
            r"(?i)((?<![A-Za-z0-9])(?:AccountKey|SharedAccessKey|SharedAccessSignature)"
            r"\s{0,8}=\s{0,8})[^;\s\"']+"
        ),
    ),
    (
        "xml_secret",
        re.compile(r"(?i)(<(?:password|secret|token|api_?key)(?:\s[^>]{0,200})?>)[^<]{1,400}"),
    ),
    # a URL whose user part is a token (https://TOKEN@github.com), and webhooks
    ("url_token_user", re.compile(r"(://)[A-Za-z0-9_-]{20,}(?=@)")),
    ("slack_webhook", re.compile(r"(hooks\.slack\.com/services/)[A-Za-z0-9/]+")),
    (
        "discord_webhook",
        re.compile(r"(?i)(discord(?:app)?\.com/api/(?:v\d{1,2}/)?webhooks/\d{1,25}/)[\w-]+"),
    ),
)
#: Credentials in URLs: scheme://user:password@host and scheme://:password@host.
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]*:)[^@\s/]+(@)")
#: Token shapes from the rules of secret scanners (gitleaks, detect-secrets, trufflehog),
#: each a named group: the name is the rule. They start where a run of token characters
#: starts, so that a long run of look-alikes (eyJ-eyJ-...) is read once, not once per
#: look-alike; a repetition that could cross into the next run is bounded.
_TOKENS = re.compile(
    r"(?P<private_key>-----BEGIN [A-Z ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
    r"(?:-----END [A-Z ]{0,40}PRIVATE KEY(?: BLOCK)?-----|$))"
    r"|(?<![\w-])(?=[\w.~+/=%-]{15})(?:"  # no shape is shorter: words are skipped at once
    r"(?P<discord_bot_token>[MNO][\w-]{23,27}\.[\w-]{6}\.[\w-]{27,})"
    r"|(?P<jwt>eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,})"
    r"|(?P<github_token>gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})"
    r"|(?P<gitlab_token>gl(?:pat|dt|rt|ptt|ft|soat|cbt|imt|oas)-[\w-]{20,}"
    r"|GR1348941[\w-]{20,})"
    r"|(?P<aws_access_key_id>(?:AKIA|ASIA|ABIA|ACCA|AROA|AIDA)[0-9A-Z]{16}(?![0-9A-Z]))"
    r"|(?P<google_api_key>AIza[\w-]{35})"
    r"|(?P<google_oauth>GOCSPX-[\w-]{28}|ya29\.[\w-]{20,})"
    r"|(?P<slack_token>xox[abeprs]-[\w-]{10,}|xapp-\d-[\w-]{20,})"
    r"|(?P<api_secret_key>sk-[A-Za-z0-9_-]{20,})"
    r"|(?P<stripe_key>[sr]k_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{24,})"
    r"|(?P<package_registry_token>npm_[A-Za-z0-9]{30,}|pypi-AgE[\w-]{50,})"
    r"|(?P<ai_platform_token>hf_[A-Za-z0-9]{30,}|gsk_[A-Za-z0-9]{40,}|r8_[A-Za-z0-9]{37,}"
    r"|pplx-[A-Za-z0-9]{40,}|xai-[A-Za-z0-9]{60,}|lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10})"
    r"|(?P<age_secret_key>AGE-SECRET-KEY-1[0-9A-Z]{50,})"
    r"|(?P<sendgrid_key>SG\.[\w-]{16,32}\.[\w-]{16,64})"
    r"|(?P<twilio_key>SK[0-9a-fA-F]{32}(?![\w-]))"
    r"|(?P<mail_service_key>key-[0-9a-zA-Z]{32}(?![\w-])|[0-9a-f]{32}-us\d{1,2}(?![\w-]))"
    r"|(?P<shopify_token>shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32})"
    r"|(?P<cloud_token>do[opr]_v1_[a-f0-9]{64}|dapi[a-f0-9]{32}|sbp_[a-f0-9]{40}"
    r"|pul-[a-f0-9]{40}|fo1_[\w-]{43}|HRKU-[\w-]{40,}|LTAI[A-Za-z0-9]{20}"
    r"|tskey-[a-z]{1,10}-[\w-]{10,}|v1\.0-[a-f0-9]{24}-[a-f0-9]{146})"
    r"|(?P<saas_token>ATATT3[\w=-]{150,200}|lin_api_[A-Za-z0-9]{40}"
    r"|PMAK-[a-f0-9]{24}-[a-f0-9]{34}|glc_[A-Za-z0-9+/]{32,}={0,2}"
    r"|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}|NRAK-[A-Z0-9]{27}|sntry[su]_[A-Za-z0-9+/=]{30,}"
    r"|ntn_\d{11}[A-Za-z0-9]{35}|secret_[A-Za-z0-9]{43}|figd_[\w-]{40}"
    r"|dp\.(?:pt|st|sa|ct)\.[A-Za-z0-9]{40,}|ops_eyJ[A-Za-z0-9+/]{250,}={0,3})"
    r"|(?P<vault_token>hv[sb]\.[\w-]{24,}|[a-z0-9]{14}\.atlasv1\.[\w=-]{60,70})"
    r"|(?P<mapbox_secret_token>sk\.eyJ[\w-]{20,}\.[\w-]{20,})"
    r"|(?P<payment_token>sq0(?:atp|csp)-[\w-]{22,43}|EAAA[\w+=-]{60})"
    r"|(?P<social_token>EAA[A-Za-z0-9]{90,}|A{22}[A-Za-z0-9%]{30,200}(?![A-Za-z0-9%]))"
    r"|(?P<azure_client_secret>[\w~.]{3}\dQ~[\w~.-]{31,34})"
    r")"
    # Telegram: bot id, colon, 35 characters; also in an API path (/bot<token>/)
    r"|(?=\d{5})(?:(?<![\w:-])|(?<=/bot))(?P<telegram_bot_token>\d{5,16}:[Aa][\w-]{34}(?![\w-]))"
    # AWS secret access key, bare: 40 base64 characters in a run of exactly that length, with
    # both cases and two digits or more (a git SHA has no upper case, a class name one
    # digit, a path more slashes)
    r"|(?<![A-Za-z0-9/+])(?=(?:[A-Za-z/+]{0,38}[0-9]){2})(?=[A-Za-z0-9/+]{0,39}[a-z])"
    r"(?=[A-Za-z0-9/+]{0,39}[A-Z])(?!(?:[A-Za-z0-9+]{0,39}/){4})"
    r"(?P<aws_secret_access_key>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
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


def _keep_url_parts(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED + match.group(2)


def redact(text: str) -> tuple[str, tuple[str, ...]]:
    """`text` with secret-looking values replaced by `[REDACTED]`, and the names of the
    rules that matched, each once, in the order the rules run."""
    rules: list[str] = []
    for name, pattern in _KEEP_PREFIX:
        text, count = pattern.subn(_keep_prefix, text)
        if count and name not in rules:
            rules.append(name)
    text, count = _URL_CREDENTIALS.subn(_keep_url_parts, text)
    if count:
        rules.append("url_credentials")
    text = _TOKENS.sub(_named_token(rules), text)
    return text, tuple(rules)


def _named_token(rules: list[str]) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        if match.lastgroup is not None and match.lastgroup not in rules:
            rules.append(match.lastgroup)
        return REDACTED

    return replace


def scrub(text: str) -> str:
    """`text` with secret-looking values replaced by `[REDACTED]`."""
    return redact(text)[0]


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
