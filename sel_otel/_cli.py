"""The `sel-otel` command: `console`, `run`, `stats`, `bot`, `host-exec`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from opentelemetry import metrics, trace

from ._app import SelApp
from ._bot_settings import BotSettings
from ._commands import RunAgent
from ._console import run_console
from ._exceptions import ConfigError
from ._registry import agent_directories
from ._settings import Settings, help_paragraph, settings_help
from ._stats_cli import add_stats_arguments, show_stats
from ._telemetry import Telemetry, telemetry_help


class _Parser(argparse.ArgumentParser):
    """A parser whose help ends with the settings its command reads, written only when shown:
    the host-exec settings would import the service at every start."""

    def __init__(self, *, settings_help: Callable[[], str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs | {"formatter_class": argparse.RawDescriptionHelpFormatter})
        self._settings_help = settings_help

    def format_help(self) -> str:
        if self._settings_help is not None:
            self.epilog = self._settings_help()
        return super().format_help()


_SETTINGS = "settings (environment variables)"
_HOST_EXEC_AGENT = help_paragraph(
    "The host_exec agent reads HOST_EXEC_URL, the service's base URL (unset: a local service "
    "is started), and its token from HOST_EXEC_TOKEN_FILE or HOST_EXEC_TOKEN."
)


def _runtime_help() -> str:
    runtime = settings_help(Settings, f"runtime {_SETTINGS}")
    return "\n\n".join([runtime, _HOST_EXEC_AGENT, telemetry_help()])


def _bot_help() -> str:
    return "\n\n".join([settings_help(BotSettings, f"Discord {_SETTINGS}"), _runtime_help()])


def _host_exec_help() -> str:
    from .hostexec._service import service_help

    return service_help()


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sel-otel", description="Observability-first agent runtime for the SEL bot."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "console",
        help="answer requests read line by line from standard input",
        description="Answer requests read line by line from standard input.",
        settings_help=_runtime_help,
    )
    run = commands.add_parser(
        "run",
        help="run one agent call and exit (non-zero on error)",
        description="Run one agent call and exit (non-zero on error).",
        settings_help=_runtime_help,
    )
    run.add_argument("agent", help="agent name")
    run.add_argument("input", nargs=argparse.REMAINDER, help="agent input")
    stats = commands.add_parser(
        "stats",
        help="the agent stats of every instance on the shared Redis, without running agents",
        description="Print /sel_agent_stats as every instance publishes it to the shared Redis "
        "(SEL_STATS_REDIS_URL): merged, per instance or of one instance; with --json, for "
        "scripts and dashboards. Starts no agent.",
        settings_help=_runtime_help,
    )
    add_stats_arguments(stats)
    commands.add_parser(
        "bot",
        help="run the Discord bot (DISCORD_TOKEN, SEL_DISCORD_* settings)",
        description="Run the Discord bot.",
        settings_help=_bot_help,
    )
    commands.add_parser(
        "host-exec",
        help="serve the host-exec API (HOST_EXEC_* settings)",
        description="Serve the host-exec API: run allow-listed commands for the host_exec agent.",
        settings_help=_host_exec_help,
    )
    from ._loadtest_cli import add_loadtest_arguments

    add_loadtest_arguments(
        commands.add_parser(
            "loadtest",
            help="simulated users calling agents, with faults on a schedule; a report and a plot",
            description="Drive the runtime (or a stack of instances in containers) with N "
            "simulated users, inject faults, and report throughput, latency and each fault's "
            "effect.",
            settings_help=_runtime_help,
        )
    )
    return parser


@contextlib.asynccontextmanager
async def _embedded_host_exec(settings: Settings) -> AsyncIterator[None]:
    """Without `HOST_EXEC_URL`, run a local host-exec service for the `host_exec` agent.

    The service listens on a free loopback port with the default allow-list and a random
    token, and stops with the frontend.
    """
    directories = agent_directories(settings.agents_dir)
    if os.environ.get("HOST_EXEC_URL") or not any(
        (directory / "host_exec.py").exists() for directory in directories
    ):
        yield
        return
    from .hostexec import LocalHostExec

    async with LocalHostExec() as service:
        # The token travels as a private file: child processes of the bot do not inherit it.
        names = ("HOST_EXEC_URL", "HOST_EXEC_TOKEN", "HOST_EXEC_TOKEN_FILE")
        saved = {name: os.environ.get(name) for name in names}
        os.environ.pop("HOST_EXEC_TOKEN", None)
        os.environ["HOST_EXEC_URL"] = service.url
        os.environ["HOST_EXEC_TOKEN_FILE"] = str(service.token_file)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


async def _until_signalled(main: Coroutine[Any, Any, int]) -> int:
    """Run `main`; SIGTERM or SIGINT cancels it, so every resource closes in order.

    Returns what `main` returns, or 128 + the signal number when a signal ended it.
    """
    task = asyncio.ensure_future(main)
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await task
    except asyncio.CancelledError:
        if not received:
            raise
        return 128 + received[0]


async def _console(settings: Settings, telemetry: Telemetry) -> int:
    async with _embedded_host_exec(settings), SelApp(settings, telemetry) as app:
        failures = await run_console(app.commands)
    return 1 if failures else 0


async def _run_once(settings: Settings, telemetry: Telemetry, agent: str, query: str) -> int:
    embedded = _embedded_host_exec(settings) if agent == "host_exec" else contextlib.nullcontext()
    async with embedded, SelApp(settings, telemetry) as app:
        reply = await app.commands.execute(RunAgent(agent, query), user="cli", frontend="cli")
    print(reply.text, file=sys.stdout if reply.ok else sys.stderr)
    return 0 if reply.ok else 1


async def _bot(settings: Settings, bot_settings: BotSettings, telemetry: Telemetry) -> int:
    from ._bot import run_bot  # discord.py is imported by the bot alone

    try:
        async with _embedded_host_exec(settings):
            await run_bot(settings, bot_settings, telemetry)
    except ConfigError as exc:
        print(f"sel-otel: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sel-otel` console script."""
    args = _parser().parse_args(argv)
    if args.command == "host-exec":
        from .hostexec import main as host_exec_main

        return host_exec_main([])  # its arguments were parsed here
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"sel-otel: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "stats":  # reads what the instances publish: no telemetry, no runtime
        return asyncio.run(_until_signalled(show_stats(args, settings)))
    # The SDK exporters log every retry and failure; sel_otel._export reports them once.
    logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
    try:
        bot_settings = BotSettings.from_env() if args.command == "bot" else None
        telemetry = Telemetry.from_env()
    except ConfigError as exc:
        print(f"sel-otel: {exc}", file=sys.stderr)
        return 2
    # The process's own providers become the global ones, so instrumentations used inside
    # agents (httpx) report into the same traces.
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    try:
        if args.command == "loadtest":
            from ._loadtest_cli import run_loadtest

            return asyncio.run(_until_signalled(run_loadtest(args, settings, telemetry)))
        if args.command == "console":
            return asyncio.run(_until_signalled(_console(settings, telemetry)))
        if bot_settings is not None:
            return asyncio.run(_until_signalled(_bot(settings, bot_settings, telemetry)))
        query = " ".join(args.input)
        return asyncio.run(_until_signalled(_run_once(settings, telemetry, args.agent, query)))
    except ConfigError as exc:  # met while starting: the cache backend, the local service
        print(f"sel-otel: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        telemetry.shutdown(settings.telemetry_shutdown_timeout)


if __name__ == "__main__":
    sys.exit(main())
