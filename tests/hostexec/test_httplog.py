"""The service's log of what aiohttp refuses: one line each, a few a minute at most."""

from __future__ import annotations

import logging

from sel_otel.hostexec._httplog import RateLimit, RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_rate_limit_allows_its_lines_per_window_and_counts_the_rest() -> None:
    clock = Clock()
    limit = RateLimit(lines=2, per=60.0, clock=clock)
    assert [limit.allow() for _ in range(5)] == [True, True, False, False, False]
    clock.now = 59.0
    assert not limit.allow()
    clock.now = 60.0
    assert limit.allow()
    assert limit.take_left_out() == " (4 more left out)"
    assert limit.take_left_out() == ""


def _record(msg: str, *args: object, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord("http", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_a_refused_request_is_one_line_without_its_traceback() -> None:
    record = _record(
        "Error handling request from %s", "127.0.0.1", error=ValueError("bad\r\nheader\x1b[2J")
    )
    assert RefusalLog().filter(record)
    assert record.exc_info is None
    assert record.levelno == logging.WARNING
    line = record.getMessage()
    assert line == "refused a request from 127.0.0.1: ValueError 'bad\\r\\nheader\\x1b[2J'"
    assert "\n" not in line


def test_the_line_after_a_pause_says_how_many_were_left_out() -> None:
    clock = Clock()
    refusals = RefusalLog(RateLimit(lines=1, per=60.0, clock=clock))
    written = [refusals.filter(_record("Error handling request from %s", "x")) for _ in range(4)]
    assert written == [True, False, False, False]
    clock.now = 61.0
    record = _record("Unhandled exception")
    assert refusals.filter(record)
    assert record.getMessage() == "Unhandled exception (3 more left out)"
