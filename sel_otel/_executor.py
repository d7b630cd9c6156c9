"""The event loop's default executor (`asyncio.to_thread`), on threads that never hold up exit.

A thread pool's workers are joined at interpreter exit, and `asyncio.run` waits for them:
one job that hangs (an agent's `to_thread` call) would keep the process alive for ever.
`DaemonExecutor` runs jobs on daemon threads instead, reused like a pool's, at most `limit`
at once (the rest queue), and nothing waits for them unless asked (`shutdown(wait=True)`).
It is a `ThreadPoolExecutor` only in name (an event loop takes no other as its default):
it starts and stops threads of its own.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

#: A job: its future, and what fills it in.
_Job = tuple[concurrent.futures.Future[Any], Callable[[], Any]]


def default_limit() -> int:
    """As many threads as asyncio's default executor has."""
    return min(32, (os.cpu_count() or 1) + 4)


class DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs jobs on up to `limit` daemon threads named `name`."""

    def __init__(self, limit: int | None = None, name: str = "sel-to-thread") -> None:
        super().__init__(limit or default_limit(), name)
        self._limit = limit or default_limit()
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job and not yet promised one
        self._shut = False

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._jobs.put((future, lambda: fn(*args, **kwargs)))
            if self._idle:
                self._idle -= 1
            elif len(self._workers) < self._limit:
                thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                thread.start()
                self._workers.append(thread)
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            _run(*job)
            del job  # nothing of the last job is kept while waiting for the next
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more jobs; with `cancel_futures`, drop those not started; with `wait`,
        wait for the threads to finish what they run (a hung job: for ever)."""
        with self._lock:
            self._shut = True
            threads = list(self._workers)
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
        for _ in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                thread.join()


def _run(future: concurrent.futures.Future[Any], call: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = call()
    except BaseException as exc:  # the caller's to see, as a pool hands it
        future.set_exception(exc)
    else:
        future.set_result(result)
