"""Faults on a schedule for `sel-otel loadtest`: `KIND@START[+DURATION]`, e.g. `redis-pause@10s+5s`.

A fault begins START after the run starts and ends DURATION later (`reload@5s` is instant).
Which kinds exist depends on what the load runs against: each environment hands the schedule
a `Fault` per kind it can inject (the runtime in this process: `reload`, `agent-hang`, and
with a Redis it started, `redis-pause` and `redis-kill`; the Docker stack adds the others).
A fault that has begun is always ended, even when the run is cut short; a step of a fault
that fails is logged, and the load goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from ._exceptions import ConfigError
from ._loadtest import FaultWindow, LoadDriver, Recording

logger = logging.getLogger(__name__)

_SPEC = re.compile(r"(?P<kind>[a-z][a-z0-9-]*)@(?P<start>[^+]+)(?:\+(?P<duration>.+))?")
_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


@dataclass(frozen=True)
class FaultSpec:
    """One fault of the schedule: what, when (seconds from the start), for how long."""

    kind: str
    start: float
    duration: float = 0.0
    text: str = ""

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Fault:
    """How an environment injects one kind of fault: `begin`, then `end` (None: instant)."""

    help: str
    begin: Callable[[], Awaitable[None]]
    end: Callable[[], Awaitable[None]] | None = None


def parse_seconds(text: str) -> float:
    """`10s`, `500ms`, `1m` or `10` (seconds)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 10s, 500ms or 1m")
    return float(match["value"]) * _UNITS[match["unit"]]


def parse_fault(text: str) -> FaultSpec:
    """`KIND@START[+DURATION]`."""
    match = _SPEC.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            f"--fault {text!r}: expected KIND@START[+DURATION], e.g. redis-pause@10s+5s"
        )
    try:
        start = parse_seconds(match["start"])
        duration = parse_seconds(match["duration"]) if match["duration"] else 0.0
    except ValueError as exc:
        raise ConfigError(f"--fault {text!r}: {exc}") from exc
    return FaultSpec(match["kind"], start, duration, text.strip())


def check_faults(specs: Sequence[FaultSpec], faults: Mapping[str, Fault], where: str) -> None:
    """Refuse a kind that `faults` (the environment's, described by `where`) cannot inject,
    and a lasting fault given no duration."""
    for spec in specs:
        fault = faults.get(spec.kind)
        if fault is None:
            known = ", ".join(sorted(faults)) or "none"
            raise ConfigError(
                f"--fault {spec.text}: {where} offers no {spec.kind!r} (it has: {known})"
            )
        if fault.end is not None and spec.duration <= 0:
            raise ConfigError(f"--fault {spec.text}: {spec.kind} lasts: give it +DURATION")


def fault_help(faults: Mapping[str, Fault]) -> str:
    """One line per kind: what it does."""
    return "\n".join(f"  {kind:18} {fault.help}" for kind, fault in sorted(faults.items()))


async def run_schedule(
    specs: Sequence[FaultSpec], faults: Mapping[str, Fault], driver: LoadDriver
) -> None:
    """Inject each fault on the driver's clock, until cancelled; every fault begun is ended
    (also on cancellation), and recorded in `driver.recording.faults` as it happened."""
    async with asyncio.TaskGroup() as group:
        for spec in specs:
            group.create_task(_inject(spec, faults[spec.kind], driver))


async def run_with_faults(
    driver: LoadDriver, specs: Sequence[FaultSpec], faults: Mapping[str, Fault]
) -> Recording:
    """`driver`'s run, with `specs` injected on its clock; every fault begun is ended by the
    time it returns."""
    schedule = asyncio.create_task(run_schedule(specs, faults, driver))
    try:
        return await driver.run()
    finally:
        schedule.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await schedule


async def _inject(spec: FaultSpec, fault: Fault, driver: LoadDriver) -> None:
    await asyncio.sleep(max(spec.start - driver.now(), 0.0))
    begin = driver.now()
    driver.active_faults.add(spec.text)
    try:
        await _attempt(spec, "beginning", fault.begin)
        if fault.end is not None:
            await asyncio.sleep(max(spec.end - driver.now(), 0.0))
    finally:
        try:
            if fault.end is not None:
                # Shielded: a run cut short still resumes the paused Redis.
                await asyncio.shield(_attempt(spec, "end", fault.end))
        finally:
            driver.active_faults.discard(spec.text)
            driver.recording.faults.append(FaultWindow(spec.text, begin, driver.now()))


async def _attempt(spec: FaultSpec, step: str, action: Callable[[], Awaitable[None]]) -> None:
    """Run a fault's step; one that fails is logged and the load goes on."""
    try:
        await action()
    except Exception as exc:
        logger.error("fault %s: its %s failed: %s: %s", spec.text, step, type(exc).__name__, exc)
