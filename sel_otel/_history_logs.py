"""`LogRecordSink`: each history entry as an OpenTelemetry log record, exported over OTLP.

A record carries the trace context of its call's span, so a logs backend links it to the
trace; its attributes are the entry's, named as on the span (`_semconv`). The sink exists
only when `OTEL_LOGS_EXPORTER` asks for it (`otlp`, `console`): the audit trail holds user
ids and inputs, and leaves the host only by choice. Endpoint, headers, protocol, timeout and
batching are the standard `OTEL_EXPORTER_OTLP_[LOGS_]*` and `OTEL_BLRP_*` variables.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    LogRecordExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext
from opentelemetry.util.types import AnyValue

from . import _semconv as names
from ._export import GuardedLogExporter
from ._history import HistoryEntry, HistorySink
from ._telemetry import _exporter_names, _protocol, counts_exports, package_version

LOGS_EXPORTER = "OTEL_LOGS_EXPORTER"


class LogRecordSink(HistorySink):
    """Emits each entry as a log record (event `sel.agent.execution`) into `provider`, which
    this sink owns: closing the sink flushes and shuts it down."""

    name = "otlp_logs"

    def __init__(self, provider: LoggerProvider) -> None:
        self.provider = provider
        self._logger = provider.get_logger(names.SCOPE_NAME, package_version())

    def write(self, entries: Sequence[HistoryEntry]) -> None:
        for entry in entries:
            ok = entry.outcome == names.OUTCOME_OK
            self._logger.emit(
                timestamp=int(entry.time * 1e9),
                context=_span_context(entry),
                severity_number=SeverityNumber.INFO if ok else SeverityNumber.WARN,
                severity_text="INFO" if ok else "WARN",
                body=_summary(entry),
                attributes=_attributes(entry),
                event_name=names.HISTORY_EVENT,
            )

    def close(self) -> None:
        self.provider.shutdown()


def log_sink_from_env(
    env: Mapping[str, str], resource: Resource, meter_provider: MeterProvider | None = None
) -> LogRecordSink | None:
    """The sink `OTEL_LOGS_EXPORTER` asks for, with the process's resource; None when unset,
    `none`, or when `OTEL_SDK_DISABLED` is true."""
    if not env.get(LOGS_EXPORTER, "").strip():
        return None
    exporters = [GuardedLogExporter(exporter) for exporter in _log_exporters(env)]
    if not exporters:
        return None
    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        processor = BatchLogRecordProcessor(exporter, meter_provider=meter_provider)
        if counts_exports(env):
            _count_processed(processor, meter_provider)
        provider.add_log_record_processor(processor)
    return LogRecordSink(provider)


def _count_processed(
    processor: BatchLogRecordProcessor, meter_provider: MeterProvider | None
) -> None:
    """Give `processor` the counts (records processed, dropped, queue size) the SDK gives it
    when its self-metrics switch is on (`counts_exports`), without editing the environment
    the SDK reads that switch from."""
    from opentelemetry.metrics import get_meter_provider
    from opentelemetry.sdk._shared_internal._processor_metrics import create_processor_metrics
    from opentelemetry.semconv._incubating.attributes.otel_attributes import (
        OtelComponentTypeValues,
    )

    batch = getattr(processor, "_batch_processor", None)
    queue = getattr(batch, "_queue", None)
    if batch is None or queue is None or not hasattr(batch, "_metrics"):
        return  # an SDK of another shape: its processors count as it decides
    metrics = create_processor_metrics(
        "logs",
        OtelComponentTypeValues.BATCHING_LOG_PROCESSOR,
        meter_provider or get_meter_provider(),
        capacity=queue.maxlen,
        enabled=True,
    )
    metrics.register_queue_size(lambda: len(queue))
    batch._metrics = metrics


def _log_exporters(env: Mapping[str, str]) -> list[LogRecordExporter]:
    exporters: list[LogRecordExporter] = []
    for name in _exporter_names(env, "LOGS"):
        if name == "console":
            exporters.append(ConsoleLogRecordExporter(out=sys.stderr))
        elif _protocol(env, "LOGS") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
                OTLPLogExporter as GrpcLogExporter,
            )

            exporters.append(GrpcLogExporter())
        else:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

            exporters.append(OTLPLogExporter())
    return exporters


def _span_context(entry: HistoryEntry) -> Context | None:
    if not entry.trace_id:
        return None
    span = NonRecordingSpan(
        SpanContext(int(entry.trace_id, 16), int(entry.span_id, 16), is_remote=False)
    )
    return trace.set_span_in_context(span, Context())


def _summary(entry: HistoryEntry) -> str:
    """`calc ok by 1234 (discord) in 1.2 ms, cached`, `host_exec refused: forbidden`, ..."""
    text = f"{entry.agent} {entry.outcome}"
    if entry.error_type:
        text += f": {entry.error_type}"
    if entry.user:
        text += f" by {entry.user}"
    if entry.frontend:
        text += f" ({entry.frontend})"
    if entry.outcome != names.OUTCOME_REFUSED:
        text += f" in {entry.duration_ms:.1f} ms"
    return text + (", cached" if entry.cached else "")


def _attributes(entry: HistoryEntry) -> dict[str, AnyValue]:
    attributes: dict[str, AnyValue] = {
        names.SEL_HISTORY_ID: entry.id,
        names.GEN_AI_AGENT_NAME: entry.agent,
        names.SEL_OUTCOME: entry.outcome,
        names.SEL_CACHE_HIT: entry.cached,
        names.SEL_AGENT_DURATION_MS: entry.duration_ms,
    }
    optional = {
        names.ERROR_TYPE: entry.error_type,
        names.SEL_USER_ID: entry.user,
        names.SEL_FRONTEND: entry.frontend,
        names.SEL_AGENT_INPUT: entry.input,
        names.SEL_AGENT_OUTPUT: entry.output,
    }
    attributes.update((key, value) for key, value in optional.items() if value is not None)
    return attributes
