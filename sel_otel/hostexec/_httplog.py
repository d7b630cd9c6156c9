"""What aiohttp writes to the service's log: the access log, and refused requests.

aiohttp's access log writes each request line whole, query string included, so a token a
client put in `?token=` would sit in the log; `AccessLog` writes the path alone, and the
lines of requests without the token (401) a few a minute at most. aiohttp also
logs a full traceback for each malformed request (847 bytes for an oversized header), so
anyone who can connect can fill the disk; `RefusalLog` makes that one line and, with
`RateLimit`, at most a few lines a minute, saying how many were left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import ClassVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .._redact import scrub

#: Characters of a request path, or of a refusal's reason, written to the log.
_MAX_LOGGED = 200


class AccessLog(AbstractAccessLogger):
    """One line per answer, `remote "METHOD path HTTP/x.y" status bytes seconds`: no query
    string, no header a client chose but the method and path, those scrubbed. Anyone may
    send requests without the token: their lines (401) are rate-limited (`RateLimit`), per
    logger, across connections (aiohttp makes an access logger per connection)."""

    _limits: ClassVar[dict[logging.Logger, RateLimit]] = {}

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._unauthorized = self._limits.setdefault(logger, RateLimit())

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        left_out = ""
        if response.status == 401:
            if not self._unauthorized.allow():
                return
            left_out = self._unauthorized.take_left_out()
        version = request.version
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs%s',
            request.remote,
            request.method[:16],
            scrub(request.path[:_MAX_LOGGED]),
            version.major,
            version.minor,
            response.status,
            response.body_length,
            time,
            left_out,
        )


class RateLimit:
    """At most `lines` log lines per `per` seconds; `allow` says whether the next may be
    written and `left_out` how many were not since the last one allowed."""

    def __init__(
        self, lines: int = 10, per: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lines, self._per, self._clock = lines, per, clock
        self._window_start = -per
        self._written = 0
        self.left_out = 0

    def allow(self) -> bool:
        now = self._clock()
        if now - self._window_start >= self._per:
            self._window_start, self._written = now, 0
        if self._written >= self._lines:
            self.left_out += 1
            return False
        self._written += 1
        return True

    def take_left_out(self) -> str:
        """The " (N more left out)" for the line about to be written, once; else ""."""
        count, self.left_out = self.left_out, 0
        return f" ({count} more left out)" if count else ""


class RefusalLog(logging.Filter):
    """For aiohttp's server logger: a request aiohttp refused (malformed, oversized headers)
    is one line without its traceback, and every line of that logger is rate-limited."""

    def __init__(self, limit: RateLimit | None = None) -> None:
        super().__init__()
        self._limit = limit or RateLimit()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._limit.allow():
            return False
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and str(record.msg).startswith("Error handling request"):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.msg = "refused a request from %s: %s %.*r"
            record.args = (remote, type(error).__name__, _MAX_LOGGED, str(error))
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = f"{record.msg}{self._limit.take_left_out()}"
        return True


def server_logger() -> logging.Logger:
    """The logger aiohttp's server writes refused requests and handler errors to."""
    logger = logging.getLogger("sel_otel.hostexec.http")
    if not any(isinstance(f, RefusalLog) for f in logger.filters):
        logger.addFilter(RefusalLog())
    return logger
