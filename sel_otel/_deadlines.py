"""Deadlines for the operations of a remote store: one timer for every operation in flight,
and a deadline that never fails an operation whose reply is already in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

_T = TypeVar("_T")

#: A deadline reached this share of the timeout late or more: the loop was blocked meanwhile.
LATE_SHARE: Final = 0.1


class Deadlines:
    """Bound every operation of a backend by one timeout, with one timer for all of them; and
    never fail an operation whose reply is already in.

    `asyncio.timeout` arms a timer per operation (a handle pushed on the loop's heap, then
    cancelled). Worse, when the event loop is blocked past a deadline (a sync call in an
    async agent, say) while the reply comes in, the loop runs the reply's socket callback and
    the expired timer in the same iteration: the timer cancels the task before the task wakes
    up to take the reply, and a healthy Redis counts as failed (the breaker opens, another
    instance runs the same key).

    Here the operations in flight are kept in the order they started, which is the order of
    their deadlines (all have the same timeout), and one timer is armed for the oldest. A
    deadline that passes cancels its operation one loop iteration later, so that a reply that
    came in by then wakes its task first; and a deadline that the loop reached late (by
    `LATE_SHARE` of the timeout or more: it was blocked) is moved one timeout on, once, so
    that an operation of two round trips gets the loop for its second. An operation thus
    takes at most two timeouts plus the loop's stall. Cancellation is that of
    `asyncio.timeout`: the operation sees `CancelledError`, its caller `TimeoutError`, and a
    cancellation of the task from elsewhere is never swallowed. Operations do not nest: a
    task runs one at a time.
    """

    __slots__ = ("_expired", "_expiring", "_late", "_loop", "_running", "_timer", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._late = (timeout or 0.0) * LATE_SHARE
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Operations in flight by task, oldest first: [deadline, the task's cancellation
        #: count at the start, whether the deadline was moved on already].
        self._running: dict[asyncio.Task[Any], list[Any]] = {}
        #: Operations past their deadline, cancelled in the next loop iteration unless done.
        self._expiring: dict[asyncio.Task[Any], list[Any]] = {}
        #: Operations cancelled by their deadline.
        self._expired: dict[asyncio.Task[Any], list[Any]] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, operation: Awaitable[_T]) -> _T:
        """Await `operation` within the timeout; `TimeoutError` when it runs out."""
        if not self.timeout:  # unbounded
            return await operation
        task = self.enter()
        try:
            result = await operation
        except asyncio.CancelledError:
            if self.leave(task):
                raise TimeoutError from None
            raise
        except BaseException:
            self.leave(task)
            raise
        self.leave(task)
        return result

    def enter(self) -> asyncio.Task[Any]:
        """Start the current task's operation: its deadline is one timeout from now."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop: nothing of the old one can still run
            self._loop = loop
            self._running, self._expiring, self._expired = {}, {}, {}
            self._timer = None
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a Redis operation must run in a task")
        deadline = loop.time() + (self.timeout or 0.0)
        self._running[task] = [deadline, task.cancelling(), False]
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._fire)
        return task

    def leave(self, task: asyncio.Task[Any]) -> bool:
        """End `task`'s operation; True when its deadline cancelled it and nothing else
        cancelled the task since (its `CancelledError` is the deadline's)."""
        if self._running.pop(task, None) is not None:
            return False
        if self._expiring.pop(task, None) is not None:
            return False
        operation = self._expired.pop(task, None)
        if operation is None:
            return False
        cancelling: int = operation[1]
        return task.uncancel() <= cancelling

    def _fire(self) -> None:
        """The oldest deadline is due: expire or move on every operation past its deadline,
        and arm the timer for the next one."""
        self._timer = None
        loop, running = self._loop, self._running
        assert loop is not None
        now = loop.time()
        due = []
        for task, operation in running.items():
            if operation[0] > now:
                break
            due.append(task)
        for task in due:
            operation = running.pop(task)
            if not operation[2] and now - operation[0] >= self._late:
                operation[0], operation[2] = now + (self.timeout or 0.0), True
                running[task] = operation  # last: the latest deadline
            else:
                self._expiring[task] = operation
                loop.call_soon(self._expire, task, operation)
        if running:
            self._timer = loop.call_at(next(iter(running.values()))[0], self._fire)

    def _expire(self, task: asyncio.Task[Any], operation: list[Any]) -> None:
        """One loop iteration after its deadline: cancel the operation if it is still on."""
        if self._expiring.get(task) is operation:
            del self._expiring[task]
            self._expired[task] = operation
            task.cancel()
