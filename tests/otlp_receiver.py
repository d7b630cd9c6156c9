"""A real OTLP/HTTP receiver for tests, on loopback, for the SDK's own exporters to send to.

`OtlpReceiver` serves http/protobuf from a thread of its own, so any thread may export to it.
Each signal it serves is one `Signal` in `SIGNALS`: a path, the protobuf request, and how a
request flattens into records (spans into `ReceivedSpan`, metrics into their OTLP `Metric`,
log records into `ReceivedLog`).
Every request is also logged as (path, status). Its faults are a collector's: `fail(status)`
answers an error and keeps nothing, `hang(seconds)` holds each request and then answers 503,
`stop()` closes the port (connections refused, held requests released) and `start()` opens
the same port again; `ok()` ends a fault. No connection is kept alive, so a stopped receiver
takes no more requests. The `otlp_receiver` fixture yields a started receiver.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.trace import SpanKind, StatusCode

#: How long a test waits for what it expects to arrive, unless it says otherwise.
WAIT = 10.0


def attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP key-value pairs as a dict, arrays as tuples."""
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    return None if which is None else getattr(value, which)


@dataclass(frozen=True)
class ReceivedSpan:
    """One span with its resource's attributes; ids in lowercase hex, "" for no parent."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: SpanKind
    status_code: StatusCode
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]


def _spans(request: ExportTraceServiceRequest) -> Iterator[ReceivedSpan]:
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ReceivedSpan(
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    kind=SpanKind(max(span.kind - 1, 0)),  # OTLP counts from UNSPECIFIED = 0
                    status_code=StatusCode(span.status.code),
                    attributes=attributes(span.attributes),
                    resource=resource,
                )


@dataclass(frozen=True)
class ReceivedLog:
    """One log record with its resource's attributes; ids in lowercase hex, "" for none."""

    event_name: str
    body: Any
    severity_text: str
    trace_id: str
    span_id: str
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]


def _logs(request: ExportLogsServiceRequest) -> Iterator[ReceivedLog]:
    for resource_logs in request.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                yield ReceivedLog(
                    event_name=record.event_name,
                    body=_value(record.body),
                    severity_text=record.severity_text,
                    trace_id=record.trace_id.hex(),
                    span_id=record.span_id.hex(),
                    attributes=attributes(record.attributes),
                    resource=resource,
                )


def _metrics(request: ExportMetricsServiceRequest) -> Iterator[Metric]:
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            yield from scope_metrics.metrics


@dataclass(frozen=True)
class Signal:
    """One OTLP signal: where it is posted, its request message, how a request flattens."""

    path: str
    request: Any  # a protobuf message class
    flatten: Callable[[Any], Iterable[Any]]


TRACES = Signal("/v1/traces", ExportTraceServiceRequest, _spans)
METRICS = Signal("/v1/metrics", ExportMetricsServiceRequest, _metrics)
LOGS = Signal("/v1/logs", ExportLogsServiceRequest, _logs)
SIGNALS = {signal.path: signal for signal in (TRACES, METRICS, LOGS)}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.server.receiver._receive(self.path, body))
        # A full success answers the empty Export*ServiceResponse: zero bytes of protobuf.
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests assert on what was received, not on an access log."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() does not wait for held requests: it releases them
    allow_reuse_address = True  # start() again on the same port at once

    def __init__(self, port: int, receiver: OtlpReceiver) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.receiver = receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client giving up on a held request is one of the faults under test."""


class OtlpReceiver:
    """A loopback OTLP/HTTP receiver keeping what it decodes; see the module docstring."""

    def __init__(self) -> None:
        self.port = 0
        self._changed = threading.Condition()
        self._received: dict[str, list[Any]] = {path: [] for path in SIGNALS}
        self._requests: list[tuple[str, int]] = []
        self._status, self._hang = 200, 0.0
        self._release = threading.Event()
        self._server: _Server | None = None

    def start(self) -> OtlpReceiver:
        """Listen on `port` (a free one the first time)."""
        self._release.clear()
        self._server = _Server(self.port, self)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the port and release held requests; what was received stays."""
        if self._server is not None:
            self._release.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, as for `OTEL_EXPORTER_OTLP_ENDPOINT`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        return self.url + TRACES.path

    @property
    def metrics_url(self) -> str:
        return self.url + METRICS.path

    def ok(self) -> None:
        self._set_fault(200, 0.0)

    def fail(self, status: int = 503) -> None:
        self._set_fault(status, 0.0)

    def hang(self, seconds: float) -> None:
        self._set_fault(503, seconds)

    @property
    def spans(self) -> list[ReceivedSpan]:
        return self._snapshot(self._received[TRACES.path])

    @property
    def metrics(self) -> list[Metric]:
        return self._snapshot(self._received[METRICS.path])

    @property
    def logs(self) -> list[ReceivedLog]:
        return self._snapshot(self._received[LOGS.path])

    @property
    def requests(self) -> list[tuple[str, int]]:
        """(path, status) of every request, in order of arrival."""
        return self._snapshot(self._requests)

    def wait_for_spans(
        self, where: Callable[[ReceivedSpan], bool] = bool, timeout: float = WAIT, count: int = 1
    ) -> list[ReceivedSpan]:
        """Every span `where` accepts, once there are `count`; `TimeoutError` if not in time."""
        return self._wait(self._received[TRACES.path], where, timeout, count)

    def wait_for_metrics(
        self, where: Callable[[Metric], bool] = bool, timeout: float = WAIT, count: int = 1
    ) -> list[Metric]:
        return self._wait(self._received[METRICS.path], where, timeout, count)

    def wait_for_logs(
        self, where: Callable[[ReceivedLog], bool] = bool, timeout: float = WAIT, count: int = 1
    ) -> list[ReceivedLog]:
        return self._wait(self._received[LOGS.path], where, timeout, count)

    def wait_for_requests(
        self, where: Callable[[tuple[str, int]], bool] = bool, timeout: float = WAIT, count: int = 1
    ) -> list[tuple[str, int]]:
        return self._wait(self._requests, where, timeout, count)

    def _set_fault(self, status: int, hang: float) -> None:
        with self._changed:
            self._status, self._hang = status, hang

    def _snapshot(self, records: list[Any]) -> list[Any]:
        with self._changed:
            return list(records)

    def _wait(
        self, records: list[Any], where: Callable[[Any], bool], timeout: float, count: int
    ) -> list[Any]:
        with self._changed:
            if self._changed.wait_for(lambda: sum(map(where, records)) >= count, timeout):
                return [record for record in records if where(record)]
            seen = sorted({str(getattr(record, "name", record)) for record in records})
        raise TimeoutError(f"fewer than {count} after {timeout}s; received: {seen or 'nothing'}")

    def _receive(self, path: str, body: bytes) -> int:
        """Decode and keep one request unless a fault is on; the status to answer."""
        signal = SIGNALS.get(path)
        with self._changed:
            status, hang = (self._status, self._hang) if signal else (404, 0.0)
            try:
                if signal and status == 200:
                    self._received[path] += signal.flatten(signal.request.FromString(body))
            except DecodeError:
                status = 400
            self._requests.append((path, status))
            self._changed.notify_all()
        self._release.wait(hang)
        return status


@pytest.fixture(name="otlp_receiver")
def otlp_receiver_fixture() -> Iterator[OtlpReceiver]:
    """A started `OtlpReceiver` on a free loopback port, stopped at teardown."""
    with OtlpReceiver() as receiver:
        yield receiver
