"""`sel-otel loadtest`: its options, the live progress line, and the run from start to report.

The progress (calls, calls/s, p99 of the last seconds, failures, faults in force) is drawn on
standard error when it is a terminal; the tables go to standard output, or to standard error
with `--json`, whose one JSON object is then standard output's only content.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from ._loadtest import WORK_AGENT, LoadDriver, LoadPlan, Progress, Recording, parse_mix
from ._loadtest_faults import (
    FaultSpec,
    check_faults,
    parse_fault,
    parse_seconds,
    run_with_faults,
)
from ._loadtest_report import plot, render, summarize
from ._settings import Settings
from ._telemetry import Telemetry

if TYPE_CHECKING:
    from rich.console import Console

    from ._loadtest_local import Environment

#: The longest run when only `--calls` bounds it, in seconds.
CALLS_TIME_LIMIT = 600.0
EXTRA = "pip install 'sel-otel[load]'"

FAULTS = """\
faults (--fault KIND@START[+DURATION], e.g. redis-pause@10s+5s; repeatable):
  reload             a new version of the work agent, hot-reloaded (instant)
  agent-hang         the work agent's executions hang until their 2 s timeout
  redis-pause        Redis stopped (SIGSTOP or docker pause), then resumed
  redis-kill         Redis killed, then started again, empty
  with --cache docker also:
  collector-down     the OTLP collector stopped, then started again
  hostexec-restart   the host-exec service stopped, then started again
  instance-kill      one sel-otel instance killed, then started again
  instance-cut       one instance disconnected from Redis's network, then reconnected
"""


def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `sel-otel loadtest`."""
    parser.description = f"{parser.description or ''}\n\n{FAULTS}"
    add = parser.add_argument
    add("--users", type=_count, default=10, metavar="N", help="simulated users (default: 10)")
    add("--duration", type=_seconds, metavar="SECONDS", help="how long to run (default: 10s)")
    add("--calls", type=_count, metavar="N", help="stop after N calls (within 600 s)")
    add(
        "--hit-ratio",
        type=float,
        default=0.7,
        metavar="R",
        help="the share of calls aimed at a cached input (default: 0.7)",
    )
    add(
        "--agent",
        dest="agents",
        action="append",
        metavar="NAME[:WEIGHT][=TEMPLATE]",
        help=f"an agent of the mix, its weight and its input ({{n}}: key number); "
        f"repeatable (default: {WORK_AGENT}, written by the load test)",
    )
    add(
        "--scope",
        choices=("shared", "per-user"),
        default="shared",
        help="whose inputs a user reuses",
    )
    add("--fanout", type=_count, default=1, metavar="F", help="calls asking each new input at once")
    add(
        "--think", type=_seconds_or_zero, default=0.0, metavar="SECONDS", help="pause between calls"
    )
    add("--work-ms", type=float, default=20.0, metavar="MS", help=f"{WORK_AGENT}'s execution time")
    add(
        "--cache",
        default="memory",
        metavar="memory|redis-server|redis://...|docker",
        help="this process's runtime on the memory cache, a redis-server of the test's own, or "
        "a Redis URL; docker: the testcontainers stack",
    )
    add("--stack", choices=("docker",), help="the same as --cache docker")
    add("--instances", type=_count, default=2, metavar="N", help="sel-otel instances (docker)")
    for name in ("app", "redis", "collector"):
        add(
            f"--{name}-image",
            default=f"sel-otel/{name}:test",
            metavar="IMAGE",
            help=f"the {name} image of the docker stack (scripts/docker-setup.sh builds it)",
        )
    add("--fault", dest="faults", action="append", default=[], metavar="SPEC", help="a fault")
    add("--json", action="store_true", help="one JSON object on standard output")
    add("--plot", type=Path, metavar="FILE", help="latency and throughput over time, as PNG")
    add("--seed", type=int, default=0, help="seed of the users' choices")


def _count(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1")
    return value


def _seconds(raw: str) -> float:
    try:
        value = parse_seconds(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _seconds_or_zero(raw: str) -> float:
    try:
        return parse_seconds(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def plan_from_args(args: argparse.Namespace) -> LoadPlan:
    duration = args.duration or (CALLS_TIME_LIMIT if args.calls else 10.0)
    mix = tuple(parse_mix(spec) for spec in args.agents or [WORK_AGENT])
    return LoadPlan(
        users=args.users,
        duration=duration,
        calls=args.calls,
        hit_ratio=args.hit_ratio,
        scope=args.scope,
        fanout=args.fanout,
        think=args.think,
        seed=args.seed,
        mix=mix,
    )


async def run_loadtest(args: argparse.Namespace, settings: Settings, telemetry: Telemetry) -> int:
    """Run the load `args` describe and report it; 2 when its extras are missing. A bad
    option or an environment that does not start is a `StartupError`, answered by
    `sel-otel`'s entry point."""
    try:
        from rich.console import Console
    except ImportError:
        print(f"sel-otel loadtest needs its extra: {EXTRA}", file=sys.stderr)
        return 2
    plan = plan_from_args(args)
    specs = [parse_fault(text) for text in args.faults]
    try:
        if args.plot is not None:
            import matplotlib  # noqa: F401  fail before the run, not after it
    except ImportError:
        print(f"sel-otel loadtest --plot needs matplotlib: {EXTRA}", file=sys.stderr)
        return 2
    stderr, stdout = Console(stderr=True), Console()
    for console in (stderr, stdout):
        if not console.is_terminal:  # a file or a pipe: room for the tables' columns
            console.width = 120
    async with _environment(args, plan, settings, telemetry) as environment:
        check_faults(specs, environment.faults, environment.description)
        driver = LoadDriver(plan, environment.target, probe=environment.probe)
        recording = await _drive(driver, specs, environment, stderr)
        stats_calls = await environment.target.stats_calls()
    summary = summarize(recording, stats_calls, environment.description)
    render(summary, stderr if args.json else stdout)
    if args.plot is not None:
        plot(recording, summary, args.plot)
    if args.json:
        print(json.dumps(summary.as_json()))
    return 0


def _environment(
    args: argparse.Namespace, plan: LoadPlan, settings: Settings, telemetry: Telemetry
) -> contextlib.AbstractAsyncContextManager[Environment]:
    cache = "docker" if args.stack == "docker" else args.cache
    if cache == "docker":
        from ._loadtest_stack import Images, docker_environment

        images = Images(args.app_image, args.redis_image, args.collector_image)
        return docker_environment(
            plan, instances=args.instances, work_ms=args.work_ms, images=images
        )
    # The runtime and its cache are imported when a run starts, not with the parser.
    from ._loadtest_local import local_environment

    return local_environment(plan, cache, telemetry, settings, work_ms=args.work_ms)


async def _drive(
    driver: LoadDriver, specs: list[FaultSpec], environment: Environment, console: Console
) -> Recording:
    """The run, with its faults on schedule and its progress shown."""
    async with _progress(driver, console):
        return await run_with_faults(driver, specs, environment.faults)


@contextlib.asynccontextmanager
async def _progress(driver: LoadDriver, console: Console) -> AsyncIterator[None]:
    """The live progress line on a terminal, redrawn four times a second."""
    if not console.is_terminal:
        yield
        return
    from rich.live import Live

    async def redraw(live: Live) -> None:
        while True:
            live.update(_progress_line(driver.progress()), refresh=True)
            await asyncio.sleep(0.25)

    with Live(console=console, transient=True, auto_refresh=False) as live:
        task = asyncio.create_task(redraw(live))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _progress_line(progress: Progress) -> str:
    faults = f"  [yellow]faults: {', '.join(progress.faults)}[/]" if progress.faults else ""
    failed = f"[red]{progress.failed:,}[/]" if progress.failed else "0"
    return (
        f"{progress.elapsed:6.1f} s  calls {progress.calls:,}  "
        f"{progress.calls_per_s:,.0f}/s  p99 {progress.p99_ms:.1f} ms  errors {failed}{faults}"
    )
