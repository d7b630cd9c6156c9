"""`sel-otel history`: the execution history on a terminal, oldest first, like a log.

It reads what the process's own history would: `history.db` in `SEL_DATA_DIR`, and the
shared Redis Stream when one is configured; it starts no runtime and records nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys

from ._history import OUTCOMES, Cursor, HistoryEntry, HistoryQuery, HistoryReader
from ._history_format import DEFAULT_LIMIT, format_line
from ._history_setup import history_stores
from ._settings import Settings

#: Seconds between two reads of `--follow`.
FOLLOW_EVERY = 0.5
#: Ids of entries printed that `--follow` remembers, to print each once.
SEEN_KEPT = 100_000


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
        # Following, each store is followed from its latest write before the first page:
        # what is written meanwhile is in both, and printed once.
        if args.follow:
            _, cursors, _ = await reader.written_after(query, [None] * len(stores))
        page = await reader.query(query)
        for name in page.unavailable:
            print(f"sel-otel: the {name} history could not be read", file=sys.stderr)
        if len(page.unavailable) == len(stores):
            return 1
        printer.print(page.entries[::-1])
        if args.follow:
            await _follow(reader, query, cursors, [entry.id for entry in page.entries], printer)
    except BrokenPipeError:  # whoever read the output stopped (`| head`): done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        for store in stores:
            store.close()
    return 0


async def _follow(
    reader: HistoryReader,
    query: HistoryQuery,
    cursors: list[Cursor | None],
    shown: list[str],
    printer: _Printer,
) -> None:
    """Print entries as they are written, in each store's order of writes, each once (an
    instance's entries are in its file and in Redis): however long their calls took."""
    seen = dict.fromkeys(shown)
    while True:
        await asyncio.sleep(FOLLOW_EVERY)
        entries, cursors, _ = await reader.written_after(query, cursors)
        fresh = [entry for entry in entries if entry.id not in seen]
        printer.print(fresh)
        seen.update(dict.fromkeys(entry.id for entry in fresh))
        for old in list(itertools.islice(seen, max(len(seen) - SEEN_KEPT, 0))):
            del seen[old]


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
