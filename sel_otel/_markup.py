"""Text that users control, made inert wherever it is shown.

- `code_span(text)`: what a user typed, quoted in a reply as an inline code span that nothing in
  it can close, on one line, so that no link, heading, mention or formatting of its own
  renders in Discord's markdown. Agents quote their input with it (`from sel_otel import
  code_span`); it imports nothing but the standard library.
- `printable(text)`: control characters (C0, DEL, C1) shown as visible symbols, so that an
  escape sequence in a command's output cannot retitle a terminal or clear its screen, and
  text a stream cannot encode (lone surrogates) shown as U+FFFD. Every frontend passes
  replies through it.
- `printable_line(text)`: the same, on one line (line feeds and tabs shown as symbols too).
- `writable_text(text)`: lone surrogates as U+FFFD, so that text kept for later (the
  execution history) can always be written as UTF-8.
"""

from __future__ import annotations

import re
from typing import Final

#: A quoted text longer than this is cut (with `…`): a span cut by a reply's size limit
#: would lose its closing backticks, and what followed the opening one would render.
QUOTE_LIMIT: Final = 200

#: Control characters but tab and line feed, and surrogates (text no codec can write).
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
#: ... and inside a code span, tab and line feed too: a span stays on one line.
_UNPRINTABLE_INLINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: Lone surrogates: what a JSON escape or a byte that could not be decoded leaves in a str.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: A backtick followed by another: a zero-width space goes between them.
_BACKTICK_RUN = re.compile(r"`(?=`)")
_BROKEN_RUN: Final = "`\u200b"


def _symbol(match: re.Match[str]) -> str:
    """U+2400's control pictures for C0 and DEL (`␛` for ESC), `\\x9b` for C1, U+FFFD for a
    surrogate."""
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    if code <= 0x9F:
        return f"\\x{code:02x}"
    return "\ufffd"


def writable_text(text: str) -> str:
    """`text` with each lone surrogate as U+FFFD: text that UTF-8 can encode."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)


def printable(text: str) -> str:
    """`text` with its control characters shown as symbols, line feeds and tabs kept (a
    carriage return before a line feed is dropped), and lone surrogates as U+FFFD."""
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_symbol, text.replace("\r\n", "\n"))


def printable_line(text: str) -> str:
    """`text` on one line: its control characters, line feeds and tabs included, shown as
    symbols, and lone surrogates as U+FFFD."""
    return _UNPRINTABLE_INLINE.sub(_symbol, text)


def code_span(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` as an inline code span, cut to `limit` characters, that it cannot close: control
    characters (line breaks too) shown as symbols, runs of backticks broken up by zero-width
    spaces, and double backticks around a text that holds one."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = _UNPRINTABLE_INLINE.sub(_symbol, text)
    if "`" not in text:
        return f"`{text}`"
    return f"`` {_BACKTICK_RUN.sub(_BROKEN_RUN, text)} ``"
