"""The service process: settings from the environment, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Mapping

from aiohttp import web
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from .._exceptions import ConfigError
from ._server import create_app
from ._settings import HostExecSettings

logger = logging.getLogger(__name__)

_DEFAULT_SERVICE_NAME = "sel-otel-host-exec"


def run_service(
    settings: HostExecSettings, *, tracer_provider: TracerProvider | None = None
) -> None:
    """Serve the host-exec API until SIGTERM or SIGINT; raises ConfigError on bad settings."""
    asyncio.run(_serve(settings, tracer_provider))


async def _serve(settings: HostExecSettings, tracer_provider: TracerProvider | None) -> None:
    app = create_app(settings, tracer_provider=tracer_provider)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
            ) from exc
        logger.info("host-exec listening on %s", ", ".join(map(str, runner.addresses)))
        if not _is_loopback(settings.host):
            logger.warning("host-exec listens beyond loopback: the token crosses the network")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        logger.info("host-exec stopping")
    finally:
        await runner.cleanup()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _tracer_provider_from_env(env: Mapping[str, str]) -> TracerProvider | None:
    """A TracerProvider when `OTEL_TRACES_EXPORTER` asks for `otlp` or `console`, else None."""
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter in ("", "none"):
        return None
    processor: SpanProcessor
    if exporter == "console":
        processor = BatchSpanProcessor(ConsoleSpanExporter())
    elif exporter == "otlp":
        processor = BatchSpanProcessor(_otlp_exporter(env))
    else:
        raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter!r}: expected otlp, console or none")
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: _DEFAULT_SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(processor)
    return provider


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    # Imported on demand: each exporter pulls in its own transport (grpc is heavy).
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    raise ConfigError(f"OTLP protocol {protocol!r}: expected grpc or http/protobuf")


def main() -> int:
    """Entry point of `python -m sel_otel.hostexec`; returns the process exit status."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    provider: TracerProvider | None = None
    try:
        settings = HostExecSettings.from_env()
        provider = _tracer_provider_from_env(os.environ)
        run_service(settings, tracer_provider=provider)
    except ConfigError as exc:
        print(f"host-exec: {exc}", file=sys.stderr)
        return 2
    finally:
        if provider is not None:
            provider.shutdown()
    return 0
