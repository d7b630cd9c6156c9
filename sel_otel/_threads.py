"""Run sync agents on daemon threads: at most N at a time, and at most M for any one agent.

A thread cannot be killed: a sync agent that hangs past its timeout is abandoned. Daemon
threads keep such an agent from holding up process exit (a thread pool's workers are joined
at exit), and a slot stays taken until the thread really ends, so hung agents cannot pile up
beyond the limit: once every slot is held, further sync calls wait for one. Each agent (each
version of it: a reload starts with a share of its own) has a share of the slots, so one that
hangs holds at most its share, and the others keep theirs.

What the agent raises comes back as the result, in a `Raised`: a future cannot hand every
exception to a coroutine as it is (it refuses StopIteration, and GeneratorExit thrown into a
coroutine closes it and those awaiting it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class Raised:
    """What an agent raised, carried as the result of its thread or task."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def unwrap(outcome: T | Raised) -> T:
    """The result `outcome` stands for: its value, or its error raised here."""
    if isinstance(outcome, Raised):
        raise outcome.error
    return outcome


@dataclass
class _Share:
    """One owner's slots, how many of its calls hold or wait for one, and how many of its
    threads run."""

    slots: asyncio.Semaphore
    users: int = 0
    running: int = 0


class DaemonThreads:
    """Runs callables on daemon threads, at most `limit` at once and at most `share` for one
    owner."""

    def __init__(self, limit: int, share: int | None = None, name: str = "sel-agent") -> None:
        self._slots = asyncio.Semaphore(limit)
        self._share = min(share or limit, limit)
        self._shares: dict[Hashable, _Share] = {}
        self._name = name

    def exhausted(self, owner: Hashable) -> bool:
        """Whether `owner`'s threads still running take its whole share."""
        share = self._shares.get(owner)
        return share is not None and share.running >= self._share

    async def start(
        self,
        function: Callable[[str], Any],
        argument: str,
        *,
        owner: Hashable,
        on_abandoned: Callable[[], object] | None = None,
    ) -> asyncio.Future[Any]:
        """Start `function(argument)` on a daemon thread, in the caller's context, once a slot
        of `owner`'s share and a slot of the whole are free; the future returned gets its
        result, or what it raised in a `Raised`.

        `on_abandoned` is called on the event loop when the thread ends after its future was
        cancelled (the caller gave up), for work that must follow what the thread did.
        """
        share = self._join(owner)
        try:
            await share.slots.acquire()
            try:
                await self._slots.acquire()
            except BaseException:
                share.slots.release()
                raise
        except BaseException:
            self._leave(owner, share)
            raise
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()

        def settle(outcome: Any) -> None:
            """On the loop, once the thread has ended."""
            self._slots.release()
            share.slots.release()
            share.running -= 1
            self._leave(owner, share)
            if future.done():  # the caller gave up (timeout, cancellation)
                if on_abandoned is not None:
                    on_abandoned()
            else:
                future.set_result(outcome)

        def work() -> None:
            try:
                outcome = context.run(function, argument)
            except BaseException as exc:  # handed to the awaiting caller
                outcome = Raised(exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, outcome)

        try:
            threading.Thread(target=work, name=self._name, daemon=True).start()
        except BaseException:
            self._slots.release()
            share.slots.release()
            self._leave(owner, share)
            raise
        share.running += 1
        return future

    def _join(self, owner: Hashable) -> _Share:
        share = self._shares.get(owner)
        if share is None:
            share = self._shares[owner] = _Share(asyncio.Semaphore(self._share))
        share.users += 1
        return share

    def _leave(self, owner: Hashable, share: _Share) -> None:
        """One call of `owner` no longer holds or waits for a slot; an owner with none left
        is forgotten (agents come and go with reloads)."""
        share.users -= 1
        if not share.users:
            del self._shares[owner]
