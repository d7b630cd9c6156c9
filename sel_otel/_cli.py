"""The `sel-otel` command: `console`, `run`, `stats`, `bot`, `host-exec`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from opentelemetry import metrics, trace

from ._bot_settings import BotSettings
from ._exceptions import StartupError
from ._exit import Lifetime, kill_child
from ._history_cli import add_history_arguments, show_history
from ._markup import printable
from ._registry import agent_directories
from ._settings import Settings, settings_help
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


def _runtime_help() -> str:
    runtime = settings_help(Settings, f"runtime {_SETTINGS}")
    return "\n\n".join([runtime, telemetry_help()])


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
    serve = commands.add_parser(
        "serve",
        help="answer requests over HTTP (POST /request), headless: for load tests and scripts",
        description='Answer requests over HTTP: POST /request with {"text": ..., "user": ...}; '
        "GET /health. No authentication: keep it on loopback or a private network.",
        settings_help=_runtime_help,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
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
    history = commands.add_parser(
        "history",
        help="who ran what, when, with what result: the latest agent calls and refusals",
        description="Print the latest agent calls and refusals, oldest first, from history.db\n"
        "and the shared Redis stream when there is one.",
        settings_help=_runtime_help,
    )
    add_history_arguments(history)
    return parser


@dataclass
class _Remains:
    """What the embedded service leaves behind if the process is ended outright: its process
    and its token's directory."""

    pid: int | None = None
    directory: Path | None = None

    def remove(self) -> None:
        if self.pid is not None:
            kill_child(self.pid)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def _embedded_host_exec(settings: Settings, lifetime: Lifetime) -> AsyncIterator[Settings]:
    """Without `HOST_EXEC_URL`, run a local host-exec service for the `host_exec` agent:
    `settings` pointing at it are yielded, for the runtime to hand the agent (`setup`).

    The service listens on a free loopback port with the default allow-list and a random
    token, and stops with the frontend; a forced exit (`Lifetime`) kills it and removes its
    token at once, even while it is being stopped.
    """
    directories = agent_directories(settings.agents_dir)
    if settings.host_exec_url or not any(
        (directory / "host_exec.py").exists() for directory in directories
    ):
        yield settings
        return
    from .hostexec._local import LocalHostExec

    remains = _Remains()
    with lifetime.last_resort(remains.remove):
        async with LocalHostExec() as service:
            remains.pid, remains.directory = service.pid, service.token_file.parent
            # The token stays in a private file, named in the settings alone: no environment
            # holds it, so child processes of the bot do not inherit it.
            yield replace(
                settings,
                host_exec_url=service.url,
                host_exec_token="",
                host_exec_token_file=service.token_file,
            )


async def _console(settings: Settings, telemetry: Telemetry, lifetime: Lifetime) -> int:
    from ._app import SelApp
    from ._console import run_console

    embedded = _embedded_host_exec(settings, lifetime)
    async with embedded as settings, SelApp(settings, telemetry) as app:
        failures = await run_console(app.commands)
    return 1 if failures else 0


async def _serve(
    settings: Settings, telemetry: Telemetry, lifetime: Lifetime, host: str, port: int
) -> int:
    from ._serve import serve

    async with _embedded_host_exec(settings, lifetime) as settings:
        return await serve(settings, telemetry, host, port)


async def _run_once(
    settings: Settings, telemetry: Telemetry, lifetime: Lifetime, agent: str, query: str
) -> int:
    embedded: contextlib.AbstractAsyncContextManager[Settings] = (
        _embedded_host_exec(settings, lifetime)
        if agent == "host_exec"
        else contextlib.nullcontext(settings)
    )
    from ._app import SelApp
    from ._commands import RunAgent

    async with embedded as settings, SelApp(settings, telemetry) as app:
        reply = await app.commands.execute(RunAgent(agent, query), user="cli", frontend="cli")
    print(printable(reply.text), file=sys.stdout if reply.ok else sys.stderr)
    return 0 if reply.ok else 1


async def _bot(
    settings: Settings, bot_settings: BotSettings, telemetry: Telemetry, lifetime: Lifetime
) -> int:
    from ._bot import run_bot  # discord.py is imported by the bot alone

    async with _embedded_host_exec(settings, lifetime) as settings:
        await run_bot(settings, bot_settings, telemetry)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sel-otel` console script.

    A process that cannot start (a bad setting, a service out of reach: `StartupError`) says
    why in one line on standard error and exits with status 2.
    """
    args = _parser().parse_args(argv)
    if args.command == "host-exec":
        from .hostexec import main as host_exec_main

        return host_exec_main([])  # its arguments were parsed here
    try:
        return _run(args)
    except StartupError as exc:
        print(f"sel-otel: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # From here SIGTERM, SIGINT and SIGHUP (its terminal closed) stop the process in order,
    # and it ends within SEL_TELEMETRY_SHUTDOWN_TIMEOUT and a grace after the first of them
    # whatever its agents do; a second one ends it at once.
    lifetime = Lifetime(settings.telemetry_shutdown_timeout)
    if args.command == "stats":  # reads what the instances publish: no telemetry, no runtime
        return lifetime.run(show_stats(args, settings))
    if args.command == "history":  # reads the history: no telemetry, no runtime
        return lifetime.run(show_history(args, settings))
    bot_settings = BotSettings.from_env() if args.command == "bot" else None
    telemetry = Telemetry.from_env()  # its exporters warn of settings they cannot use
    # The SDK exporters log every retry and failure; sel_otel._export reports them once.
    logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
    # The process's own providers become the global ones, so instrumentations used inside
    # agents (httpx) report into the same traces.
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    try:
        if args.command == "serve":
            return lifetime.run(_serve(settings, telemetry, lifetime, args.host, args.port))
        if args.command == "loadtest":
            from ._loadtest_cli import run_loadtest

            return lifetime.run(run_loadtest(args, settings, telemetry))
        if args.command == "console":
            return lifetime.run(_console(settings, telemetry, lifetime))
        if bot_settings is not None:
            return lifetime.run(_bot(settings, bot_settings, telemetry, lifetime))
        query = " ".join(args.input)
        return lifetime.run(_run_once(settings, telemetry, lifetime, args.agent, query))
    finally:
        # Within what is left before the exit deadline: the deadline is a deadline.
        telemetry.shutdown(lifetime.time_left(settings.telemetry_shutdown_timeout))
