"""The load driver of `sel-otel loadtest`: simulated users calling agents through a `Target`.

```
LoadPlan ──► users (tasks) ──KeySpace picks an input──► Target.call ──► Recorder
                                                         (the runtime in this process,
                                                          or instances over HTTP)
FaultSchedule (_loadtest_faults) ──begin/end on its clock──► Recorder.faults
```

Each user loops: pick an agent by weight, pick an input (a warm one, whose result was
computed before, with probability `hit_ratio`; else the next cold one), call, record, think.
Every call is recorded once, with its start, latency and how it was answered (read from the
cache, executed, or coalesced with an identical call in flight), so the counts can be set
against what `/sel_agent_stats` reports. The run stops after `duration` seconds or `calls`
calls, whichever comes first.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import os
import random
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ._exceptions import ConfigError

#: The agent `sel-otel loadtest` writes and calls unless told otherwise (`_loadtest_agent`).
WORK_AGENT = "loadtest_work"
#: Seconds a user waits after a call that no instance answered (a refused connection fails
#: at once: without a pause, a user pinned to a dead instance would loop on it).
UNREACHED_PAUSE = 0.1
#: Seconds of latency the live progress reads its p99 from.
LIVE_WINDOW = 2.0

Scope = Literal["shared", "per-user"]


@dataclass(frozen=True)
class AgentMix:
    """One agent of the mix: its name, its share of the calls, and its inputs (`{n}` is the
    key number, so `key-{n}` gives key-0, key-1...)."""

    name: str
    weight: float = 1.0
    template: str = "key-{n}"


def parse_mix(spec: str) -> AgentMix:
    """`NAME[:WEIGHT][=TEMPLATE]`, e.g. `loadtest_work:3` or `calc:1={n}+1`."""
    head, has_template, template = spec.partition("=")
    name, _, weight = head.partition(":")
    if not name.strip():
        raise ConfigError(f"--agent {spec!r}: expected NAME[:WEIGHT][=TEMPLATE]")
    try:
        share = float(weight) if weight else 1.0
    except ValueError:
        share = -1.0
    if not share > 0:
        raise ConfigError(f"--agent {spec!r}: the weight must be a number greater than 0")
    if has_template and "{n}" not in template:
        raise ConfigError(f"--agent {spec!r}: the input template must contain {{n}}")
    return AgentMix(name.strip(), share, template if has_template else "key-{n}")


@dataclass(frozen=True)
class LoadPlan:
    """What the simulated users do, and for how long."""

    users: int = 10
    duration: float = 10.0  # seconds; the run also stops after `calls` calls, when given
    calls: int | None = None
    hit_ratio: float = 0.7  # share of calls aimed at an input whose result is cached
    mix: tuple[AgentMix, ...] = (AgentMix(WORK_AGENT),)
    scope: Scope = "shared"  # per-user: a user reuses only its own inputs
    fanout: int = 1  # calls that ask for each cold input (>1: concurrent identical misses)
    think: float = 0.0  # mean seconds a user waits between two calls (uniform, ±50 %)
    warm_keys: int = 256  # the most recent computed inputs a hit is aimed at, per key space
    seed: int = 0

    def __post_init__(self) -> None:
        if self.users < 1 or self.duration <= 0 or (self.calls is not None and self.calls < 1):
            raise ConfigError("a load plan needs users >= 1, duration > 0 and calls >= 1")
        if not 0 <= self.hit_ratio <= 1:
            raise ConfigError(f"--hit-ratio {self.hit_ratio}: expected a number from 0 to 1")
        if self.fanout < 1 or self.think < 0 or self.warm_keys < 1 or not self.mix:
            raise ConfigError("a load plan needs fanout >= 1, think >= 0 and one agent or more")


class Outcome(enum.IntEnum):
    """How a call was answered."""

    HIT = 0  # read from the cache
    MISS = 1  # executed here (or without the cache)
    COALESCED = 2  # an identical call in flight was awaited
    FAILED = 3  # the call returned an error


@dataclass(frozen=True, slots=True)
class CallResult:
    """What a target says of one call."""

    outcome: Outcome
    error_type: str | None = None  # for FAILED: the call's `error.type`, or a transport error
    reached: bool = True  # False: no instance answered (a transport error), none counted it


class Target(Protocol):
    """Where the calls go: the runtime of this process, or instances of a stack."""

    async def call(self, agent: str, query: str, user: str) -> CallResult:
        """One agent call; never raises but on cancellation."""
        ...

    async def stats_calls(self) -> int:
        """The calls `/sel_agent_stats` counts, every agent and instance together."""
        ...


@dataclass
class _Keys:
    """The inputs of one agent in one key space: the cold frontier and the warm ones."""

    warm: collections.deque[int]
    frontier: int = 0
    handed: int = 0


class KeySpace:
    """Picks each call's input so that about `hit_ratio` of the calls are cache hits.

    A warm key is one whose result a call computed (and so stored); a cold key is the next
    never asked for, handed to `fanout` calls before the frontier moves on. In the per-user
    scope each user has its own keys (numbers that no other user gets).
    """

    def __init__(self, plan: LoadPlan) -> None:
        self._plan = plan
        self._spaces: dict[tuple[int, int], _Keys] = {}

    def _space(self, agent: int, user: int) -> _Keys:
        owner = user if self._plan.scope == "per-user" else -1
        space = self._spaces.get((agent, owner))
        if space is None:
            space = self._spaces[(agent, owner)] = _Keys(
                collections.deque(maxlen=self._plan.warm_keys)
            )
        return space

    def pick(self, agent: int, user: int, rng: random.Random) -> int:
        """The key number of the next call of `agent` by `user`."""
        space = self._space(agent, user)
        if space.warm and rng.random() < self._plan.hit_ratio:
            return space.warm[rng.randrange(len(space.warm))]
        number = space.frontier
        space.handed += 1
        if space.handed >= self._plan.fanout:
            space.frontier, space.handed = space.frontier + 1, 0
        if self._plan.scope == "per-user":  # disjoint numbers per user
            return number * self._plan.users + user
        return number

    def computed(self, agent: int, user: int, number: int) -> None:
        """The result of key `number` was just computed: later calls may aim at it."""
        self._space(agent, user).warm.append(number)


@dataclass(frozen=True)
class FaultWindow:
    """A fault as it happened: seconds from the start of the run."""

    spec: str
    begin: float
    end: float


def process_resources() -> tuple[int, int]:
    """This process's resident memory in bytes and its open file descriptors (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE"), len(os.listdir("/proc/self/fd"))


@dataclass
class Recording:
    """Every call of a run, column by column (seconds from the start), and what happened."""

    plan: LoadPlan
    started: float = 0.0  # time.monotonic() at the start
    elapsed: float = 0.0
    starts: array[float] = field(default_factory=lambda: array("d"))
    latencies: array[float] = field(default_factory=lambda: array("d"))
    outcomes: array[int] = field(default_factory=lambda: array("b"))
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    unreached: int = 0  # failed calls that no instance answered
    executions: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    faults: list[FaultWindow] = field(default_factory=list)
    #: (seconds, resident bytes, open descriptors), about once a second, when probed.
    resources: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.outcomes)

    def record(
        self, start: float, latency: float, result: CallResult, key: tuple[str, str]
    ) -> None:
        self.starts.append(start)
        self.latencies.append(latency)
        self.outcomes.append(result.outcome)
        if result.outcome is Outcome.FAILED:
            self.errors[result.error_type or "unknown"] += 1
            self.unreached += not result.reached
        elif result.outcome is Outcome.MISS:
            self.executions[key] += 1


@dataclass(frozen=True)
class Progress:
    """The live figures: calls so far, calls/s and p99 of the last seconds, failures."""

    elapsed: float
    calls: int
    calls_per_s: float
    p99_ms: float
    failed: int
    faults: tuple[str, ...]  # the faults in force


class LoadDriver:
    """Runs a `LoadPlan` against a target; `run` returns the `Recording`."""

    def __init__(
        self,
        plan: LoadPlan,
        target: Target,
        *,
        probe: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.plan = plan
        self.target = target
        self.recording = Recording(plan)
        self.active_faults: set[str] = set()
        self._probe = probe
        self._keys = KeySpace(plan)
        self._issued = 0
        self._deadline = 0.0
        self._recent: collections.deque[tuple[float, float]] = collections.deque()

    def now(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.recording.started

    def _more(self) -> bool:
        """Whether another call may start; counts it when it may."""
        if time.monotonic() >= self._deadline:
            return False
        if self.plan.calls is not None and self._issued >= self.plan.calls:
            return False
        self._issued += 1
        return True

    async def run(self) -> Recording:
        """Run the users until the duration or the call count is reached; every user's last
        call is awaited, so every issued call is recorded."""
        recording = self.recording
        recording.started = time.monotonic()
        self._deadline = recording.started + self.plan.duration
        async with asyncio.TaskGroup() as users:
            sampler = users.create_task(self._sample()) if self._probe else None
            tasks = [users.create_task(self._user(index)) for index in range(self.plan.users)]
            await asyncio.gather(*tasks)
            if sampler is not None:
                sampler.cancel()
        recording.elapsed = self.now()
        if self._probe is not None:
            recording.resources.append((recording.elapsed, *self._probe()))
        return recording

    async def _user(self, index: int) -> None:
        plan, recording = self.plan, self.recording
        rng = random.Random(plan.seed * 1_000_003 + index)
        agents = range(len(plan.mix))
        weights = [agent.weight for agent in plan.mix]
        user = f"loadtest-{index}"
        while self._more():
            agent = rng.choices(agents, weights)[0] if len(plan.mix) > 1 else 0
            mix = plan.mix[agent]
            number = self._keys.pick(agent, index, rng)
            query = mix.template.format(n=number)
            start = self.now()
            result = await self.target.call(mix.name, query, user)
            latency = self.now() - start
            recording.record(start, latency, result, (mix.name, query))
            self._remember(start + latency, latency)
            if result.outcome is Outcome.MISS:
                self._keys.computed(agent, index, number)
            if not result.reached:  # a user retries a silent instance no faster than this
                await asyncio.sleep(max(UNREACHED_PAUSE, plan.think))
            elif plan.think:
                await asyncio.sleep(plan.think * rng.uniform(0.5, 1.5))
            else:
                await asyncio.sleep(0)  # a hit may never suspend: let the other users run

    async def _sample(self) -> None:
        assert self._probe is not None
        while True:
            self.recording.resources.append((self.now(), *self._probe()))
            await asyncio.sleep(1.0)

    def _remember(self, end: float, latency: float) -> None:
        """Keep the calls that ended in the last `LIVE_WINDOW` seconds, for `progress`."""
        recent = self._recent
        recent.append((end, latency))
        while recent[0][0] < end - LIVE_WINDOW:
            recent.popleft()

    def progress(self) -> Progress:
        """The live figures, for a progress display."""
        now = self.now()
        recent = [call for call in self._recent if call[0] >= now - LIVE_WINDOW]
        latencies = sorted(latency for _, latency in recent)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0
        span = min(now, LIVE_WINDOW) or 1.0
        return Progress(
            now,
            self.recording.calls,
            len(recent) / span,
            p99 * 1000,
            sum(self.recording.errors.values()),
            tuple(sorted(self.active_faults)),
        )
