"""`BatchWriter`: the thread that writes one history sink's pending entries, in batches."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import _semconv as names

if TYPE_CHECKING:
    from ._history import HistoryEntry, HistorySink, Row, RowFormat

logger = logging.getLogger(__name__)

#: Entries written at once; the writer writes as soon as it finds this many pending. A batch
#: of many users' calls dirties an index page per user: 4,096 rows cost SQLite 6.4 µs a row
#: with 1,000 users, 1,024 rows 9.0 µs (the same, 2.9 µs, for one user).
BATCH = 4096

#: Seconds between the writer's looks at its queue (`put` wakes no one: see `BatchWriter`).
LOOK_INTERVAL = 0.05

#: Called with the store's name, the error type and how many entries were dropped.
OnDropped = Callable[[str, str, int], None]


class BatchWriter:
    """Writes the rows `put` on the event loop to one sink, on a daemon thread of its own.

    `put` is the queue's own `append`: no code of ours runs for an entry on the event loop.
    The queue keeps the latest `max_pending` rows: a full one lets its oldest go. Rows are put
    numbered from 0 in order (a row's first field), so the thread counts what was let go by
    the gaps (`on_dropped`, logged once until the queue keeps up again). The thread writes
    what is pending every `interval` seconds, as soon as it finds `BATCH` rows pending (it
    looks every `LOOK_INTERVAL` seconds), on `flush`, and when stopped; the sink is given the
    rows and their `format`. A failed write drops its batch: counted by `on_dropped`, logged
    once until a write succeeds.
    """

    def __init__(
        self,
        sink: HistorySink,
        interval: float,
        max_pending: int,
        on_dropped: OnDropped,
        format: RowFormat,
    ) -> None:
        self.sink = sink
        self._format = format
        self._interval = interval
        self._max_pending = max_pending
        self._on_dropped = on_dropped
        self._pending: deque[Row] = deque(maxlen=max_pending)
        #: Queue a row for the sink (the oldest pending goes when `max_pending` are).
        self.put: Callable[[Row], None] = self._pending.append
        self._writing: list[Row] = []  # the batch being written
        self._wake = threading.Event()
        self._handled = threading.Condition()
        self._next = 0  # the number of the first row neither written nor dropped
        self._asked = 0  # rows put before the latest `flush` or `stop`, all to be handled
        self._stopping = False
        self._abandoned = False  # given up by `join`: what it counted is not counted again
        self._failing = False
        self._overflowing = False
        self._thread = threading.Thread(
            target=self._run, name=f"sel-history-{sink.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def unwritten(self) -> list[HistoryEntry]:
        """The entries put and not written yet (being written, or pending), oldest first:
        each is either here, or in the sink already when this returns."""
        pending = list(self._pending)  # copied in C, under the GIL: no pop interleaves
        rows = [*self._writing, *pending]  # read second: a batch gone from it is written
        return [*map(self._format.entry, rows)]

    def flush(self, put: int, timeout: float) -> bool:
        """Wait until the first `put` rows are written (or dropped); False after `timeout`."""
        with self._handled:
            self._asked = max(self._asked, put)
        self._wake.set()
        with self._handled:
            return self._handled.wait_for(lambda: self._next >= put, max(timeout, 0.0))

    def stop(self, put: int) -> None:
        """Ask the thread to write the first `put` rows (all those put), close the sink and
        end."""
        with self._handled:
            self._asked = max(self._asked, put)
        self._stopping = True
        self._wake.set()

    def join(self, timeout: float) -> None:
        """Wait for the thread to end; when it does not in time (its sink hangs, or it never
        started), count every row it did not write: those the full queue let go, and those
        pending or being written."""
        if self._thread.ident is not None:
            self._thread.join(max(timeout, 0.0))
            if not self._thread.is_alive():
                return
        with self._handled:
            writing = self._writing
            last = writing[-1][0] if writing else -1
            pending = [row for row in self._pending if row[0] > last]  # not yet popped
            self._let_go((pending[0][0] if pending else self._asked) - len(writing))
            left = len(writing) + len(pending)
            self._abandoned = True
        if left:
            self._on_dropped(self.sink.name, names.HISTORY_ERROR_NOT_WRITTEN, left)
        logger.warning(
            "history store %s did not finish writing in time; %d entries dropped",
            self.sink.name,
            left,
        )

    def _run(self) -> None:
        written = time.monotonic()
        while True:
            asked = self._wake.wait(min(self._interval, LOOK_INTERVAL))
            if (
                not asked
                and len(self._pending) < BATCH
                and time.monotonic() - written < self._interval
            ):
                continue
            self._wake.clear()
            stopping = self._stopping
            self._write_pending()
            written = time.monotonic()
            if stopping:
                break
        try:
            self.sink.close()
        except Exception:
            logger.exception("closing history store %s failed", self.sink.name)

    def _write_pending(self) -> None:
        pending = self._pending
        while True:
            asked = self._asked  # read before the queue is found empty: see the end
            if not pending:
                break
            batch = list(itertools.islice(pending, BATCH))
            self._writing = batch
            for _ in batch:  # a full queue letting a row go meanwhile makes one more pop:
                pending.popleft()  # a gap that the next batch (or `asked`) counts
            with self._handled:
                self._let_go(batch[0][0])
            try:
                self.sink.write_rows(batch, self._format)
            except Exception as exc:
                if not self._abandoned:
                    self._on_dropped(self.sink.name, type(exc).__qualname__, len(batch))
                if not self._failing:
                    self._failing = True
                    logger.error(
                        "history store %s failing (%s: %s); entries are dropped until it recovers",
                        self.sink.name,
                        type(exc).__qualname__,
                        exc,
                    )
            else:
                if self._failing:
                    self._failing = False
                    logger.warning("history store %s recovered", self.sink.name)
            self._writing = []
            with self._handled:
                self._next = batch[-1][0] + 1
                self._handled.notify_all()
        # Every row put before the flush (or stop) that asked for `asked` rows was in a batch
        # taken above, or let go by the full queue.
        with self._handled:
            self._let_go(asked)
            self._handled.notify_all()

    def _let_go(self, first: int) -> None:
        """Count the rows before row `first` that were neither written nor dropped yet: the
        full queue let them go (`_handled` held)."""
        missed = first - self._next
        if missed <= 0:
            self._overflowing = False  # the queue kept up
            return
        self._next = first
        if self._abandoned:
            return
        self._on_dropped(self.sink.name, names.HISTORY_ERROR_QUEUE_FULL, missed)
        if not self._overflowing:
            self._overflowing = True
            logger.error(
                "history store %s is behind: over %d entries pending; dropping the oldest",
                self.sink.name,
                self._max_pending,
            )
