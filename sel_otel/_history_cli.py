"""`sel-otel history`: the execution history on a terminal, oldest first, like a log.

It reads what the process's own history would: `history.db` in `SEL_DATA_DIR`, and the
shared Redis Stream when one is configured; it starts no runtime and records nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from ._history import OUTCOMES, HistoryEntry, HistoryQuery, HistoryReader
from ._history_format import DEFAULT_LIMIT, format_line
from ._history_setup import history_stores
from ._settings import Settings

#: Seconds between two reads of `--follow`.
FOLLOW_EVERY = 0.5


def add_history_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `sel-otel history`."""
    parser.add_argument("--agent", metavar="NAME", help="only calls of this agent")
    parser.add_argument("--user", metavar="ID", help="only this user's calls")
    parser.add_argument("--outcome", choices=OUTCOMES, help="only calls that ended so")
    parser.add_argument(
        "--limit",
        metavar="N",
        type=_positive,
        default=DEFAULT_LIMIT,
        help=f"the N latest entries (default: {DEFAULT_LIMIT})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="a JSON array of entries (with --follow: one JSON object per line)",
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="then print new entries as they are written, until interrupted",
    )


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1")
    return value


async def show_history(args: argparse.Namespace, settings: Settings) -> int:
    """Print the entries `args` ask for; 1 when no store could be read. A bad setting is a
    `ConfigError`, answered by `sel-otel`'s entry point."""
    stores = history_stores(settings)
    reader = HistoryReader(stores)
    printer = _Printer(args.json, args.follow, settings.trace_url_template)
    query = HistoryQuery(args.agent, args.user, args.outcome, args.limit)
    try:
        # Following, what is there before the first page is no news, shown in it or not.
        since = time.time() - _lookback(settings)
        before = await reader.query(_window(query, since)) if args.follow else None
        page = await reader.query(query)
        for name in page.unavailable:
            print(f"sel-otel: the {name} history could not be read", file=sys.stderr)
        if len(page.unavailable) == len(stores):
            return 1
        printer.print(page.entries[::-1])
        if before is not None:
            seen = {entry.id: entry.time for entry in [*before.entries, *page.entries]}
            await _follow(reader, query, seen, printer, settings)
    except BrokenPipeError:  # whoever read the output stopped (`| head`): done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        for store in stores:
            store.close()
    return 0


def _lookback(settings: Settings) -> float:
    """Seconds back an entry may still be written: it is dated when its call started and
    written when it ended, a flush interval later at most (two are allowed)."""
    return settings.agent_timeout + 2 * settings.history_flush_interval


def _window(query: HistoryQuery, since: float) -> HistoryQuery:
    """Every entry of `query` dated after `since`."""
    return HistoryQuery(query.agent, query.user, query.outcome, limit=10_000, since=since)


async def _follow(
    reader: HistoryReader,
    query: HistoryQuery,
    seen: dict[str, float],
    printer: _Printer,
    settings: Settings,
) -> None:
    """Print entries as they appear: each read takes the window of entries that may still be
    written and prints those not `seen` yet."""
    while True:
        await asyncio.sleep(FOLLOW_EVERY)
        since = time.time() - _lookback(settings)
        page = await reader.query(_window(query, since))
        fresh = [entry for entry in reversed(page.entries) if entry.id not in seen]
        printer.print(fresh)
        seen = {id_: at for id_, at in seen.items() if at > since}
        seen.update((entry.id, entry.time) for entry in fresh)


class _Printer:
    """Entries to standard output: lines of text; with `--json`, one JSON array, or one
    JSON object per line when following."""

    def __init__(self, as_json: bool, follow: bool, template: str | None) -> None:
        self.as_json = as_json
        self.follow = follow
        self.template = template

    def print(self, entries: list[HistoryEntry]) -> None:
        if self.as_json and not self.follow:
            array = [entry.to_json() for entry in entries]
            print(json.dumps(array, indent=2, ensure_ascii=False))
        elif self.as_json:
            for entry in entries:
                print(json.dumps(entry.to_json(), ensure_ascii=False))
        else:
            for entry in entries:
                print(format_line(entry, self.template))
        sys.stdout.flush()
