"""OpenTelemetry providers for a sel_otel process, configured by the standard `OTEL_*` variables.

`Telemetry.from_env()` builds a TracerProvider and a MeterProvider that share one resource.
The MeterProvider always carries the stats reader (cumulative, read by `/sel_agent_stats`);
exporters are added beside it as the environment asks:

- `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER`: comma-separated `otlp`, `console`, `none`.
  Default: `otlp` when an `OTEL_EXPORTER_OTLP_*ENDPOINT` variable is set, else `none`.
- `OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]PROTOCOL`: `http/protobuf` (default) or `grpc`.
- Spans are batched by `PrioritySpanProcessor` (`_span_processor.py`), which drops cache hits
  and successes before errors when its queue is full, and counts what it drops; its queue,
  batch size and delay default to what a runtime at full speed needs (`BatchSettings`), and
  `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` and `OTEL_BSP_SCHEDULE_DELAY`
  override them. OTLP/HTTP spans are encoded by `_otlp_spans.py`, eight times faster.
- Metrics are exported by the stats reader itself (`_metric_export.py`), every
  `OTEL_METRIC_EXPORT_INTERVAL` ms (60000) within `OTEL_METRIC_EXPORT_TIMEOUT` ms (30000):
  one reader, so each record is aggregated once.
- Endpoint, headers, timeout, compression, sampler (`OTEL_TRACES_SAMPLER`) and resource
  attributes are read by the SDK itself.
- `OTEL_SDK_DISABLED=true`: no spans and no exporter; the stats reader still counts calls.
- `OTEL_SEMCONV_STABILITY_OPT_IN`: instrumentations (httpx) default to `http`, the stable HTTP
  conventions that the host-exec service's spans use too.

The console exporters write to standard error, apart from the replies on standard output.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter

from . import _semconv as names
from ._exceptions import ConfigError
from ._export import GuardedMetricExporter, GuardedSpanExporter
from ._metric_export import ExportingStatsReader, shares_stats_reader
from ._scrub import ScrubbingSpanExporter
from ._settings import help_paragraph
from ._span_processor import BatchSettings, PrioritySpanProcessor

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "sel-bot"
#: Seconds before the shutdown timeout when exporters still sending are stopped, so that
#: what they hold is let go of by the timeout.
_STOP_MARGIN = 0.2

CUMULATIVE: dict[type, AggregationTemporality] = {
    kind: AggregationTemporality.CUMULATIVE
    for kind in (
        Counter,
        UpDownCounter,
        Histogram,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
    )
}


def package_version() -> str:
    """The installed sel-otel version."""
    try:
        return version("sel-otel")
    except PackageNotFoundError:
        return "0+unknown"


_SELF_METRICS = "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"
_SDK_DISABLED = "OTEL_SDK_DISABLED"
_SEMCONV_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"


def counts_exports(env: Mapping[str, str]) -> bool:
    """Whether exporters (and log processors) are to get the SDK's own metrics although
    the SDK, reading `OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED` unset, made them without.

    They count exports, failed ones by `error.type`, per batch. The SDK reads one switch for
    all its self-metrics, from `os.environ`, each time a component is built, and its per-span
    ones (spans started, live) double the cost of a span; so unless the variable is set
    explicitly, sel_otel makes the export counts of its exporters itself, as the SDK makes
    them when the switch is on, and leaves the rest off. The environment is never edited:
    it is the process's, and not thread-safe to change.
    """
    return _SELF_METRICS not in env


def _count_exports(exporter: SpanExporter, meter_provider: MeterProvider) -> None:
    """Give an OTLP span exporter the export counts the SDK gives it when its self-metrics
    switch is on (`counts_exports`)."""
    from opentelemetry.exporter.otlp.common._exporter_metrics import create_exporter_metrics
    from opentelemetry.semconv._incubating.attributes.otel_attributes import (
        OtelComponentTypeValues,
    )

    endpoint = getattr(exporter, "_endpoint", None)
    if not isinstance(endpoint, str) or not hasattr(exporter, "_metrics"):
        return  # an SDK of another shape: its exporters count as it decides
    component = getattr(
        exporter, "_component_type", OtelComponentTypeValues.OTLP_HTTP_SPAN_EXPORTER
    )
    exporter._metrics = create_exporter_metrics(component, "traces", endpoint, meter_provider, True)


def _self_metrics_on(env: Mapping[str, str]) -> bool:
    return env.get(_SELF_METRICS, "true").strip().lower() == "true"


def _milliseconds(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds from the variable `name`, in milliseconds (`default` when unset); `inf`, or
    more than a thread can wait, is as long as a thread can wait."""
    raw = env.get(name, "").strip()
    try:
        seconds = float(raw or default) / 1000
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of milliseconds") from None
    if math.isnan(seconds):
        raise ValueError(f"{name}={raw!r} is not a number of milliseconds")
    return min(seconds, threading.TIMEOUT_MAX)


def _sdk_disabled(env: Mapping[str, str]) -> bool:
    return env.get(_SDK_DISABLED, "").strip().lower() == "true"


def telemetry_help(default_service_name: str = DEFAULT_SERVICE_NAME) -> str:
    """What `--help` says of the variables `Telemetry.from_env` reads."""
    return help_paragraph(
        "Telemetry: the standard OTEL_* variables (see the README, section Configuration); "
        f"OTEL_SERVICE_NAME defaults to {default_service_name}; the console exporter writes to "
        "standard error."
    )


def _prefer_stable_http_semconv(env: Mapping[str, str]) -> None:
    """Instrumentations created from now on record the stable HTTP semantic conventions
    (`http.request.method`, `url.full`, `http.client.request.duration` in seconds), unless
    `OTEL_SEMCONV_STABILITY_OPT_IN` is set: then the library reads the user's choice itself.

    opentelemetry-instrumentation reads the opt-in from `os.environ` only, once per process,
    into the state of `_OpenTelemetrySemanticConventionStability`. Rather than write the
    variable into the process environment (inherited by every child process, and not sel_otel's
    to edit), that state is set here as reading `OTEL_SEMCONV_STABILITY_OPT_IN=http` sets it:
    HTTP stable, every other signal at its default.
    """
    if env.get(_SEMCONV_OPT_IN, "").strip():
        return
    from opentelemetry.instrumentation._semconv import (
        _OpenTelemetrySemanticConventionStability as Stability,
    )
    from opentelemetry.instrumentation._semconv import (
        _OpenTelemetryStabilitySignalType as Signal,
    )
    from opentelemetry.instrumentation._semconv import _StabilityMode as Mode

    with Stability._lock:
        Stability._OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING = {Signal.HTTP: Mode.HTTP}
        Stability._initialized = True


def stats_reader() -> InMemoryMetricReader:
    """A metric reader with cumulative temporality, so reading it never resets the figures."""
    return InMemoryMetricReader(preferred_temporality=CUMULATIVE)


def build_resource(default_service_name: str = DEFAULT_SERVICE_NAME) -> Resource:
    """Default service name, version and instance id; the `OTEL_*` variables override them."""
    defaults = Resource.create(
        {
            "service.name": default_service_name,
            "service.version": package_version(),
            "service.instance.id": str(uuid.uuid4()),
        }
    )
    return defaults.merge(OTELResourceDetector().detect())


@dataclass(frozen=True)
class Telemetry:
    """The providers of one process, the reader behind its stats, and its exporters."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    stats_reader: InMemoryMetricReader
    exporters: tuple[GuardedSpanExporter | GuardedMetricExporter, ...] = ()

    @classmethod
    def from_env(cls, default_service_name: str = DEFAULT_SERVICE_NAME) -> Telemetry:
        """Providers with exporters chosen by the `OTEL_*` variables (see the module doc).

        The providers do not register their own shutdown at exit: their owner calls
        `shutdown`, which bounds the time it takes.
        """
        env = os.environ
        _prefer_stable_http_semconv(env)
        resource = build_resource(default_service_name)
        if _sdk_disabled(env):
            logger.info("OTEL_SDK_DISABLED: no telemetry is exported; the stats still count")
        try:
            batch = BatchSettings.from_env(env)
            metric_exporters = [GuardedMetricExporter(e) for e in _metric_exporters(env)]
            # One reader for the stats and the export, when the exporter wants what the stats
            # want; an exporter asking for deltas gets a periodic reader of its own.
            shared = [e for e in metric_exporters if shares_stats_reader(e, CUMULATIVE)]
            reader = ExportingStatsReader(
                shared,
                interval=_milliseconds(env, "OTEL_METRIC_EXPORT_INTERVAL", 60_000),
                timeout=_milliseconds(env, "OTEL_METRIC_EXPORT_TIMEOUT", 30_000),
                preferred_temporality=CUMULATIVE,
            )
            readers: list[MetricReader] = [reader]
            readers += [
                PeriodicExportingMetricReader(e) for e in metric_exporters if e not in shared
            ]
            meter_provider = MeterProvider(
                resource=resource, metric_readers=readers, shutdown_on_exit=False
            )
            # The stats are read from this provider: it records even when the SDK is
            # disabled (which it reads from os.environ when it is made), and then exports
            # nothing.
            meter_provider._disabled = False
            tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            exporters = _span_exporters(env, meter_provider)
            span_exporters = [GuardedSpanExporter(ScrubbingSpanExporter(e)) for e in exporters]
            counted = meter_provider if _self_metrics_on(env) else None
            for i, (exporter, span_exporter) in enumerate(
                zip(exporters, span_exporters, strict=True)
            ):
                processor = PrioritySpanProcessor(
                    span_exporter,
                    batch,
                    meter_provider=counted,
                    name=f"{names.BATCHING_SPAN_PROCESSOR}/{i}",
                )
                if hasattr(exporter, "on_unreachable"):  # FastOTLPSpanExporter: a refusal
                    exporter.on_unreachable = processor.exports_failing  # is known at once
                tracer_provider.add_span_processor(processor)
        except ConfigError:
            raise
        except ValueError as exc:  # the SDK's own checks of OTEL_BSP_* and friends
            raise ConfigError(f"invalid OpenTelemetry setting: {exc}") from exc
        except Exception as exc:  # an exporter's (a compression it lacks, a certificate path
            # that is a directory): what the environment asks cannot be built
            raise ConfigError(
                f"invalid OpenTelemetry setting: {type(exc).__name__}: {exc}"
            ) from exc
        return cls(tracer_provider, meter_provider, reader, (*span_exporters, *metric_exporters))

    def shutdown(self, timeout: float = 2.0) -> None:
        """Flush and stop both providers, returning within `timeout` seconds.

        Exporters already failing are stopped at once. The others deliver what is left on
        daemon threads, the metrics after the spans; when they have not finished shortly
        before the timeout (a collector that hangs mid-request), their retries are stopped,
        what was not sent is dropped, and this returns at the timeout, not after it.
        """
        for exporter in self.exporters:
            if exporter.failing:
                exporter.abort()
        deadline = time.monotonic() + timeout
        traces = threading.Thread(
            target=self.tracer_provider.shutdown, name="sel-telemetry-flush-traces", daemon=True
        )

        def metrics_after_traces() -> None:
            # The span processors record their last counts into the meter provider as they
            # stop: wait for them, yet leave the metrics half the time, so that a trace
            # endpoint that hangs does not cost the last metrics.
            traces.join(max(deadline - time.monotonic() - timeout / 2, 0.0))
            self.meter_provider.shutdown()

        metrics = threading.Thread(
            target=metrics_after_traces, name="sel-telemetry-flush-metrics", daemon=True
        )
        flushes = [traces, metrics]
        for flush in flushes:
            flush.start()
        stop_at = deadline - min(_STOP_MARGIN, timeout / 4)
        for flush in flushes:
            flush.join(max(stop_at - time.monotonic(), 0.0))
        if any(flush.is_alive() for flush in flushes):
            for exporter in self.exporters:
                exporter.abort()
            for flush in flushes:
                flush.join(max(deadline - time.monotonic(), 0.0))
            if not any(exporter.failing for exporter in self.exporters):  # else said already
                logger.warning("telemetry not flushed within %gs; the rest is dropped", timeout)


def _exporter_names(env: Mapping[str, str], signal: str) -> list[str]:
    if _sdk_disabled(env):
        return []
    raw = env.get(f"OTEL_{signal}_EXPORTER")
    if raw is None or not raw.strip():
        has_endpoint = any(
            env.get(name)
            for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        )
        return ["otlp"] if has_endpoint else []
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    unknown = set(names) - {"otlp", "console", "none"}
    if unknown:
        raise ConfigError(
            f"OTEL_{signal}_EXPORTER={raw!r}: unsupported {sorted(unknown)}; "
            "use otlp, console or none"
        )
    return [name for name in names if name != "none"]


def _protocol(env: Mapping[str, str], signal: str) -> str:
    protocol = (
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in {"http/protobuf", "grpc"}:
        raise ConfigError(f"OTLP protocol {protocol!r} is not supported; use http/protobuf or grpc")
    return protocol


def _span_exporters(env: Mapping[str, str], meter_provider: MeterProvider) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in _exporter_names(env, "TRACES"):
        if name == "console":
            exporters.append(ConsoleSpanExporter(out=sys.stderr))
        elif _protocol(env, "TRACES") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )

            exporters.append(GrpcSpanExporter(meter_provider=meter_provider))
        else:
            from ._otlp_exporter import FastOTLPSpanExporter

            exporters.append(FastOTLPSpanExporter(meter_provider=meter_provider))
        if name != "console" and counts_exports(env):
            _count_exports(exporters[-1], meter_provider)
    return exporters


def _metric_exporters(env: Mapping[str, str]) -> list[MetricExporter]:
    exporters: list[MetricExporter] = []
    for name in _exporter_names(env, "METRICS"):
        if name == "console":
            exporters.append(ConsoleMetricExporter(out=sys.stderr))
        elif _protocol(env, "METRICS") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcMetricExporter,
            )

            exporters.append(GrpcMetricExporter())
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            exporters.append(OTLPMetricExporter())
    return exporters
