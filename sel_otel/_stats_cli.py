"""`sel-otel stats`: the deployment's stats for scripts and dashboards, as `/sel_agent_stats`
shows them, read from the shared Redis without starting any agent or recording anything."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from ._exceptions import StatsStoreError
from ._settings import Settings
from ._stats import AgentStats
from ._stats_report import InstanceFigures, StatsReport, format_report, merge


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `sel-otel stats`."""
    parser.add_argument("agent", nargs="?", metavar="NAME", help="only this agent")
    parser.add_argument(
        "--scope",
        choices=("all", "per-instance"),
        default="all",
        help="every instance merged (default), or each instance's totals",
    )
    parser.add_argument(
        "--instance", metavar="ID", help="only the instance whose service.instance.id is ID"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object")


async def show_stats(args: argparse.Namespace, settings: Settings) -> int:
    """Print the stats `args` ask for: 0, or 1 when there is no shared Redis to read or it
    cannot be read. A bad setting is a `ConfigError`, answered by `sel-otel`'s entry point."""
    # The Redis client is imported here, not with the parser: `sel-otel --help` needs none.
    from ._stats_shared import read_states, stats_store

    store = stats_store(settings)
    if store is None:
        print(
            "sel-otel: no shared Redis to read the stats from: set SEL_STATS_REDIS_URL, or "
            "SEL_CACHE_URL to a Redis URL",
            file=sys.stderr,
        )
        return 1
    try:
        states, unreadable = await asyncio.to_thread(read_states, store)
    except StatsStoreError as exc:
        print(f"sel-otel: the shared stats could not be read: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.instance is not None:
        states = [state for state in states if state.instance == args.instance]
        unreadable = [instance for instance in unreadable if instance == args.instance]
    report = merge(states, scope=args.scope, agent=args.agent, unreadable=unreadable)
    if args.json:
        print(json.dumps(report_json(report), indent=2, ensure_ascii=False))
    else:
        print(format_report(report, args.agent))
    return 0


def report_json(report: StatsReport) -> dict[str, Any]:
    """`report` as JSON: what it covers, then the figures per agent and per instance."""
    return {
        "scope": report.scope,
        "coverage": report.coverage(),
        "instances_covered": len(report.instances),
        "oldest_age_seconds": report.oldest_age,
        "notes": report.notes,
        "agents": [_row_json(row) for row in report.rows],
        "instances": [_instance_json(figures) for figures in report.instances],
    }


def _row_json(row: AgentStats) -> dict[str, Any]:
    return {
        "agent": row.agent,
        "calls": row.calls,
        "cached_calls": row.cached_calls,
        "errors": row.errors,
        "hit_rate": row.hit_rate,
        "error_rate": row.error_rate,
        "average_seconds": row.average_seconds,
        "p95_seconds": row.percentile(0.95),
    }


def _instance_json(figures: InstanceFigures) -> dict[str, Any]:
    return {
        "instance": figures.instance,
        "started": figures.started,
        "age_seconds": figures.age,
        "total": _row_json(figures.total) | {"agent": None},
        "agents": [_row_json(row) for row in figures.rows],
    }
