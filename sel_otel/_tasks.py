"""Run async agents on tasks of their own: left behind at their deadline, their steps timed.

The counterpart of `_threads.py` for async agents. A call awaits its agent's task without
owning it: when the call ends first (its timeout, or its caller cancelled), the task is
cancelled and left to end on its own, so an agent that swallows `CancelledError` holds
neither its call nor the process's exit. Whatever the agent raises reaches the call as its
error, and nothing escapes the task: a `KeyboardInterrupt` or `SystemExit` leaving a task
would stop the event loop.

Each step of the agent (what it runs between two awaits) is timed. A step still running when
the call's deadline passed held the event loop, so that the timeout could not fire on time:
`Steps.blocked` says for how long.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

from ._threads import Raised, unwrap

T = TypeVar("T")


class Steps(Generic[T]):
    """Awaits `start()` step by step, timing each step against `deadline`, a
    `time.monotonic()` time (the event loop's clock)."""

    __slots__ = ("_deadline", "_start", "blocked")

    def __init__(self, start: Callable[[], Awaitable[T]], deadline: float) -> None:
        self._start = start
        self._deadline = deadline
        #: Seconds the step running when the deadline passed held the event loop; 0 if none.
        self.blocked = 0.0

    def __await__(self) -> Generator[Any, Any, T]:
        steps = self._start().__await__()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            started = time.monotonic()
            try:
                yielded = steps.send(sent) if thrown is None else steps.throw(thrown)
            except StopIteration as stop:
                self._ended(started)
                return stop.value  # type: ignore[no-any-return]
            except BaseException:
                self._ended(started)
                raise
            self._ended(started)
            try:
                sent, thrown = (yield yielded), None
            except BaseException as exc:  # thrown into this step (a cancellation): pass it on
                sent, thrown = None, exc

    def _ended(self, started: float) -> None:
        ended = time.monotonic()
        if started <= self._deadline < ended:
            self.blocked = ended - started


async def detached(steps: Steps[T], on_abandoned: Callable[[], object] | None = None) -> T:
    """The result of `steps`, run on a task of its own; its exception, whatever it is, raised
    here. When this call ends first (cancelled, by its caller or a timeout) the task is
    cancelled and not awaited; `on_abandoned` is called once it really ends."""
    loop = asyncio.get_running_loop()
    settled = _settled(steps)
    task = loop.create_task(settled)
    ended = loop.create_future()  # awaited instead of the task: cancelling it leaves the task
    task.add_done_callback(functools.partial(_end, ended))
    try:
        await ended
    except BaseException:
        task.cancel()
        if on_abandoned is not None:
            task.add_done_callback(lambda _: on_abandoned())
        raise
    return unwrap(task.result())


def _end(ended: asyncio.Future[None], task: object) -> None:
    if not ended.done():
        ended.set_result(None)


async def _settled(steps: Steps[T]) -> T | Raised:
    """The result of `steps`, or what it raised: nothing leaves the task."""
    try:
        return await steps
    except BaseException as exc:
        return Raised(exc)
