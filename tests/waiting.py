"""Waiting in tests: for a condition, polled until a generous deadline, never for a fixed time.

A test that sleeps for "long enough" fails on a loaded machine, where long enough is longer.
These helpers wait for what the test needs to have happened instead, and only fail once the
deadline, far beyond any load, has passed: `wait_until` in async tests (the condition may be a
coroutine function), `block_until` in sync ones. `within` repeats a check that only holds
before a timer runs out until one run was quick enough to count. A `Gate` keeps a command
running until the test lets it end; `agent_globals` reaches the events an agent shares with
its test.
"""

from __future__ import annotations

import asyncio
import inspect
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sel_otel import AgentRuntime

T = TypeVar("T")

#: Seconds a condition may take to come true: far beyond any load, well within the per-test
#: timeout (pyproject.toml), so that a wait that never ends fails with its own message.
DEADLINE_S = 30.0
#: Seconds between two looks at a condition.
INTERVAL_S = 0.01


def _polls(what: str, deadline_s: float) -> Iterator[None]:
    """One item per look at the condition; AssertionError once the deadline has passed."""
    deadline = time.monotonic() + deadline_s
    while True:
        yield
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {deadline_s:g}s for {what}")


async def wait_until(
    condition: Callable[[], object], what: str, *, deadline_s: float = DEADLINE_S
) -> None:
    """Return once `condition()` is true (awaited when it returns an awaitable), looking every
    `INTERVAL_S` without blocking the event loop; `what` names it in the failure."""
    for _ in _polls(what, deadline_s):
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        await asyncio.sleep(INTERVAL_S)


async def within(
    seconds: float,
    attempt: Callable[[], Awaitable[T]],
    what: str,
    *,
    deadline_s: float = DEADLINE_S,
) -> T:
    """What `attempt()` returned on its first run that took less than `seconds`; each run
    must start afresh (a new key, a new counter).

    For checks that hold only until a timer started inside the attempt runs out, such as a
    cache entry read back within its TTL: a run that the machine's load stretched past the
    timer proves nothing either way, and is made again.
    """
    for _ in _polls(what, deadline_s):
        started = time.monotonic()
        result = await attempt()
        if time.monotonic() - started < seconds:
            return result
    raise AssertionError("unreachable: _polls ends only by raising")


def block_until(
    condition: Callable[[], object], what: str, *, deadline_s: float = DEADLINE_S
) -> None:
    """Return once `condition()` is true, looking every `INTERVAL_S`: for sync tests."""
    for _ in _polls(what, deadline_s):
        if condition():
            return
        time.sleep(INTERVAL_S)


def agent_globals(runtime: AgentRuntime, agent: str) -> dict[str, Any]:
    """The globals of the module `agent` runs from now: the events it shares with its test
    (`STARTED = asyncio.Event()` in its source, set when a call begins, for instance)."""
    return runtime.registry.get(agent).function.__globals__


class Gate:
    """A file that commands wait for: `command` runs until the test calls `open()`.

    ```python
    gate = Gate(tmp_path / "open")
    running = asyncio.create_task(post_exec(service, {"command": gate.command}))
    await wait_until(lambda: gate.waiting() == 1, "the command to run")
    ...  # the command is still running here, whatever the load
    gate.open()
    ```
    """

    SCRIPT = Path(__file__).with_name("gate.py")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._waiting = path.with_name(f"{path.name}.waiting")  # a line per command started

    @property
    def argv(self) -> list[str]:
        return [sys.executable, str(self.SCRIPT), str(self.path)]

    @property
    def command(self) -> str:
        """`argv` as one command line."""
        return shlex.join(self.argv)

    def waiting(self) -> int:
        """How many commands have started waiting since the gate was closed."""
        try:
            return len(self._waiting.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def open(self) -> None:
        """Let every command waiting on this gate end."""
        self.path.touch()

    def close(self) -> None:
        """Make the commands started from now on wait again."""
        self.path.unlink(missing_ok=True)
        self._waiting.unlink(missing_ok=True)
