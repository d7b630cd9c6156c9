"""Run sync agents on daemon threads, at most N at a time.

A thread cannot be killed: a sync agent that hangs past its timeout is abandoned. Daemon
threads keep such an agent from holding up process exit (a thread pool's workers are joined
at exit), and a slot stays taken until the thread really ends, so hung agents cannot pile up
beyond the limit: once every slot is held, further sync calls wait for one.
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

    async def start(
        self,
        function: Callable[[str], Any],
        argument: str,
        *,
        on_abandoned: Callable[[], object] | None = None,
    ) -> asyncio.Future[Any]:
        """Start `function(argument)` on a daemon thread, in the caller's context, once a slot
        is free; the future returned gets its result or exception.

        `on_abandoned` is called on the event loop when the thread ends after its future was
        cancelled (the caller gave up), for work that must follow what the thread did.
        """
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()

        def settle(result: Any, error: BaseException | None) -> None:
            """On the loop, once the thread has ended."""
            self._slots.release()
            if future.done():  # the caller gave up (timeout, cancellation)
                if on_abandoned is not None:
                    on_abandoned()
            elif error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        def work() -> None:
            result: Any = None
            error: BaseException | None = None
            try:
                result = context.run(function, argument)
            except StopIteration as exc:  # a future refuses StopIteration: wrap it
                error = RuntimeError(f"StopIteration raised: {exc}")
                error.__cause__ = exc
            except BaseException as exc:  # handed to the awaiting caller
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, result, error)

        try:
            threading.Thread(target=work, name=self._name, daemon=True).start()
        except BaseException:
            self._slots.release()
            raise
        return future
