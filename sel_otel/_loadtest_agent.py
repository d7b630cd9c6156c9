"""The agent `sel-otel loadtest` calls by default, written into a directory of its own.

`loadtest_work` waits a fixed time (the cost of a miss), then answers with its input; it is
cached an hour. Two faults act on it through its directory: a new generation of the file,
reloaded, is the `reload` fault (same behaviour, new version, so new cache keys); the
sentinel file `loadtest_work.hang` makes it hang until its timeout (`agent-hang`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from ._loadtest import WORK_AGENT
from ._loadtest_faults import Fault

#: Seconds a call of the work agent may take before it times out (a hanging call's cost).
WORK_TIMEOUT = 2.0

_SOURCE = '''\
"""sel-otel loadtest: waits {work_ms:g} ms, then echoes its input (generation {generation})."""

import asyncio
import pathlib

DESCRIPTION = "Load-test work: waits {work_ms:g} ms, then echoes its input"
CACHE_TTL = 3600
TIMEOUT = {timeout!r}
_HANG = pathlib.Path(__file__).with_name("{agent}.hang")


async def run(query: str) -> str:
    if _HANG.exists():  # the agent-hang fault: hang until the timeout
        await asyncio.sleep(3600)
    await asyncio.sleep({work_s!r})
    return "done: " + query
'''


class WorkAgent:
    """The work agent's file in `directory`, and the faults that act on it."""

    def __init__(self, directory: Path, work_ms: float) -> None:
        self.directory = directory
        self.work_ms = work_ms
        self.generation = 0
        self.path = directory / f"{WORK_AGENT}.py"
        self.sentinel = directory / f"{WORK_AGENT}.hang"

    def write(self) -> None:
        """Write the current generation of the agent (atomically: a reload never reads half)."""
        text = _SOURCE.format(
            work_ms=self.work_ms,
            work_s=self.work_ms / 1000,
            generation=self.generation,
            timeout=WORK_TIMEOUT,
            agent=WORK_AGENT,
        )
        partial = self.path.with_suffix(".tmp")
        partial.write_text(text)
        partial.replace(self.path)

    def next_generation(self) -> None:
        """A new version of the agent, to be reloaded: same behaviour, new cache keys."""
        self.generation += 1
        self.write()

    def hang(self, hanging: bool) -> None:
        """Make the agent's executions hang until their timeout, or stop that."""
        if hanging:
            self.sentinel.touch()
        else:
            self.sentinel.unlink(missing_ok=True)

    def faults(self, reload: Callable[[], Awaitable[object]], reloaded: str) -> dict[str, Fault]:
        """The faults on this agent: `reload`, a new generation reloaded by `reload` (described
        as `reloaded`), and `agent-hang`."""

        async def new_generation() -> None:
            self.next_generation()
            await reload()

        async def hang() -> None:
            self.hang(True)

        async def unhang() -> None:
            self.hang(False)

        return {
            "reload": Fault(f"a new version of the work agent, {reloaded}", new_generation),
            "agent-hang": Fault("the work agent's executions hang until timeout", hang, unhang),
        }
