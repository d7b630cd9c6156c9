"""How a `sel-otel` process ends: in order when it can, on time whatever its agents do.

A `Lifetime` takes SIGTERM, SIGINT and SIGHUP for the rest of the process, and runs the
process's coroutine on an event loop of its own (`run`):

- the first signal cancels the coroutine, so that every resource closes in order, and starts
  the exit deadline: `timeout` (`SEL_TELEMETRY_SHUTDOWN_TIMEOUT`) plus `GRACE` seconds later
  the process ends, whatever still runs (an agent that ignores its cancellation or blocks the
  event loop, a thread that hangs), after its last resorts (`last_resort`);
- a second signal ends it at once, the same way;
- when the coroutine ends by itself, the same deadline starts for what exit still does.

Signals are read from the wakeup fd (`signal.set_wakeup_fd`) by a thread of this object's
own, so they are taken even while an agent holds the event loop (nothing else in the process
may take them: `loop.add_signal_handler` would replace that fd). Once the coroutine has
ended, the tasks left are cancelled and given `LEFTOVER_WAIT` seconds, and the loop's default
executor runs on daemon threads that nothing waits for (`_executor.py`): `asyncio.run` would
wait for both for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from ._executor import DaemonExecutor

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Seconds past the shutdown timeout before exit is forced.
GRACE = 0.5
#: Seconds the tasks left when the coroutine ends have to end once cancelled.
LEFTOVER_WAIT = 0.25
#: Seconds a forced exit gives its last resorts and the flush of the standard streams: it
#: starts this long before the deadline, so that the process has ended by then.
_LAST_WORDS = 0.1


class Lifetime:
    """The end of this process: orderly, then forced `timeout` + `grace` seconds after the
    first signal (or after the coroutine ended). Create it in the main thread."""

    def __init__(self, timeout: float, *, grace: float = GRACE) -> None:
        self.timeout = timeout
        self.grace = grace
        self._lock = threading.Lock()
        self._deadline: float | None = None  # time.monotonic() of the forced exit
        self._signals: list[int] = []
        self._main: tuple[asyncio.AbstractEventLoop, asyncio.Task[int]] | None = None
        self._code = 1  # the exit status of a forced exit that no signal caused
        self._last_resorts: list[Callable[[], object]] = []
        #: Tasks that ignored their cancellation, kept to the end: left alone, not destroyed.
        self._left_behind: list[asyncio.Task[Any]] = []
        self._terminal = _terminal_restorer()
        self._wakeup, notify = socket.socketpair()
        notify.setblocking(False)
        self._notify = notify
        for signum in SIGNALS:
            signal.signal(signum, _noted)
        signal.set_wakeup_fd(notify.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="sel-exit", daemon=True).start()

    def run(self, main: Coroutine[Any, Any, int]) -> int:
        """Run `main` on a new event loop; its result, or 128 + the number of the signal
        that cancelled it."""
        if self._signals:  # a signal came first: nothing starts
            main.close()
            return 128 + self._signals[0]
        loop = asyncio.new_event_loop()
        loop.set_default_executor(DaemonExecutor())
        asyncio.set_event_loop(loop)
        try:
            task = loop.create_task(main)
            with self._lock:
                self._main = (loop, task)
                if self._signals:
                    task.cancel()
            try:
                self._code = loop.run_until_complete(task)
            except asyncio.CancelledError:
                if not self._signals:
                    raise
                self._code = 128 + self._signals[0]
            finally:
                with self._lock:
                    self._main = None
                self._arm()
                self._left_behind += _wind_down(loop, self.time_left(LEFTOVER_WAIT))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        return self._code

    def time_left(self, limit: float) -> float:
        """`limit` seconds, or fewer when the exit deadline leaves less (keeping its grace)."""
        with self._lock:
            deadline = self._deadline
        if deadline is None:
            return limit
        return max(min(limit, deadline - self.grace - time.monotonic()), 0.0)

    @contextlib.contextmanager
    def last_resort(self, cleanup: Callable[[], object]) -> Iterator[None]:
        """Within the block, a forced exit calls `cleanup` first (from another thread, and
        for at most a moment): what an orderly exit would have done, done at once."""
        self._last_resorts.append(cleanup)
        try:
            yield
        finally:
            self._last_resorts.remove(cleanup)

    def _arm(self) -> None:
        with self._lock:
            if self._deadline is None:
                self._deadline = time.monotonic() + self.timeout + self.grace
        with contextlib.suppress(OSError):  # full: the watcher is awake anyway
            self._notify.send(b"\0")

    def _watch(self) -> None:
        """The watcher thread: signals, and the deadline."""
        while True:
            with self._lock:
                deadline = self._deadline
            if deadline is None:
                self._wakeup.settimeout(None)
            else:
                self._wakeup.settimeout(deadline - _LAST_WORDS - time.monotonic())
            try:
                received = self._wakeup.recv(64)
            except (TimeoutError, ValueError):  # ValueError: the deadline is past already
                self._force(self._signals[0] + 128 if self._signals else self._code, None)
                return
            for signum in received:
                if signum in SIGNALS:
                    self._signalled(signum)

    def _signalled(self, signum: int) -> None:
        with self._lock:
            self._signals.append(signum)
            main = self._main
        if len(self._signals) > 1:
            self._force(128 + signum, signum)
        self._arm()
        if main is not None:
            loop, task = main
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                loop.call_soon_threadsafe(task.cancel)

    def _force(self, code: int, signum: int | None) -> None:
        """End the process now, with `code`, after its last resorts."""
        why = "deadline passed" if signum is None else f"{signal.Signals(signum).name} again"
        last_words = threading.Thread(target=self._last_words, args=(why,), daemon=True)
        last_words.start()
        last_words.join(_LAST_WORDS)
        os._exit(code)

    def _last_words(self, why: str) -> None:
        for cleanup in reversed(list(self._last_resorts)):
            try:
                cleanup()
            except Exception:
                logger.exception("a clean-up at forced exit failed")
        if self._terminal is not None:
            self._terminal()
        logger.warning("exit forced (%s): what still ran is dropped", why)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()


def kill_child(pid: int) -> None:
    """SIGKILL this process's child `pid`, unless it has ended and been reaped already (its
    number may be another process's by now)."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    if not reaped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _noted(signum: int, frame: object) -> None:
    """The Python-level handler: the watcher thread acts on the signal (from the wakeup fd)."""


def _wind_down(loop: asyncio.AbstractEventLoop, wait: float) -> list[asyncio.Task[Any]]:
    """Cancel the tasks left on `loop` and give them `wait` seconds to end; those that
    ignore cancellation are left behind, and returned."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=wait))
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception during shutdown",
                        "exception": task.exception(),
                        "task": task,
                    }
                )
        tasks = [task for task in tasks if not task.done()]
        if tasks:
            logger.warning("%d task(s) ignored their cancellation at exit: left behind", len(tasks))
    loop.run_until_complete(
        asyncio.wait([loop.create_task(loop.shutdown_asyncgens())], timeout=wait)
    )
    return tasks


def _terminal_restorer() -> Callable[[], None] | None:
    """What puts standard input's terminal modes back as they are now, if it is a terminal."""
    try:
        import termios
    except ImportError:  # not a POSIX system
        return None
    try:
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError, AttributeError):  # not a terminal, or none
        return None

    def restore() -> None:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    return restore
