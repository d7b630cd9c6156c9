"""Run sync agents on daemon threads, at most N at a time.

A thread cannot be killed: a sync agent that hangs past its timeout is abandoned. Daemon
threads keep such an agent from holding up process exit (a thread pool's workers are joined
at exit), and a slot stays taken until the thread really ends, so hung agents cannot pile up
beyond the limit: once every slot is held, further sync calls wait and time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any


class DaemonThreads:
    """Runs callables on daemon threads, at most `limit` running at once."""

    def __init__(self, limit: int, name: str = "sel-agent") -> None:
        self._slots = asyncio.Semaphore(limit)
        self._name = name

    async def run(self, function: Callable[[str], Any], argument: str) -> Any:
        """`function(argument)` on a daemon thread, in the caller's context."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()

        def work() -> None:
            try:
                result = context.run(function, argument)
            except StopIteration as exc:  # a future refuses StopIteration: wrap it
                error = RuntimeError(f"StopIteration raised: {exc}")
                error.__cause__ = exc
                _deliver(loop, future, None, error, self._slots)
            except BaseException as exc:  # handed to the awaiting caller
                _deliver(loop, future, None, exc, self._slots)
            else:
                _deliver(loop, future, result, None, self._slots)

        try:
            threading.Thread(target=work, name=self._name, daemon=True).start()
        except BaseException:
            self._slots.release()
            raise
        return await future


def _deliver(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
    slots: asyncio.Semaphore,
) -> None:
    def settle() -> None:
        slots.release()
        if future.done():  # the caller gave up (timeout, cancellation)
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)
