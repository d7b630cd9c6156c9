"""The `sel-otel` command: `console`, `run`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from opentelemetry import metrics, trace

from ._app import SelApp
from ._commands import RunAgent
from ._console import run_console
from ._exceptions import ConfigError
from ._settings import Settings
from ._telemetry import Telemetry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sel-otel", description="Observability-first agent runtime for the SEL bot."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("console", help="answer requests read line by line from standard input")
    run = commands.add_parser("run", help="run one agent call and exit (non-zero on error)")
    run.add_argument("agent", help="agent name")
    run.add_argument("input", nargs="*", help="agent input")
    return parser


async def _console(settings: Settings, telemetry: Telemetry) -> int:
    async with SelApp(settings, telemetry) as app:
        failures = await run_console(app.commands)
    return 1 if failures else 0


async def _run_once(settings: Settings, telemetry: Telemetry, agent: str, query: str) -> int:
    async with SelApp(settings, telemetry) as app:
        reply = await app.commands.execute(RunAgent(agent, query), user="cli")
    print(reply.text, file=sys.stdout if reply.ok else sys.stderr)
    return 0 if reply.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sel-otel` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("SEL_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The SDK exporters warn on every retry; sel_otel._export reports failures once instead.
    logging.getLogger("opentelemetry.exporter").setLevel(logging.ERROR)
    try:
        settings = Settings.from_env()
        telemetry = Telemetry.from_env()
    except ConfigError as exc:
        print(f"sel-otel: {exc}", file=sys.stderr)
        return 2
    # The process's own providers become the global ones, so instrumentations used inside
    # agents (httpx) report into the same traces.
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    try:
        if args.command == "console":
            return asyncio.run(_console(settings, telemetry))
        return asyncio.run(_run_once(settings, telemetry, args.agent, " ".join(args.input)))
    except KeyboardInterrupt:
        return 130
    finally:
        telemetry.shutdown(settings.telemetry_shutdown_timeout)


if __name__ == "__main__":
    sys.exit(main())
