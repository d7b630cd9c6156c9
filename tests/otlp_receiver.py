"""A small, real OTLP/HTTP receiver for tests.

`OtlpReceiver` is an HTTP server on 127.0.0.1 (a free port unless one is given) that runs in
its own thread, so code under test may export from any thread, including the SDK's
background export threads. It accepts what an OpenTelemetry SDK sends with the
`http/protobuf` protocol:

- `POST /v1/traces`: `ExportTraceServiceRequest`, decoded into `ReceivedSpan` records;
- `POST /v1/metrics`: `ExportMetricsServiceRequest`, decoded into `ReceivedMetric` records;
- `POST /v1/logs`: accepted (200) and counted, not decoded.

Bodies may be gzip- or deflate-compressed (`Content-Encoding`). Every request, whatever its
outcome, is recorded as a `ReceivedRequest`.

Fault modes, switchable while the receiver runs:

- `ok()`: answer 200 and store what was sent (the default);
- `hang(seconds)`: hold each request for `seconds` (at most `MAX_HANG`), then answer 503
  without storing it; `stop()` releases held requests at once;
- `fail(status)`: answer `status` (503 by default) without storing anything;
- `stop()` / `start()`: close the listening socket (connections are refused) and open it
  again on the same port, as a collector going away and coming back.

Pytest fixture: `otlp_receiver` yields a started receiver and stops it at teardown.
Register it from `tests/conftest.py` with `pytest_plugins = ["tests.otlp_receiver"]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.server
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.trace import SpanKind, StatusCode

__all__ = [
    "MAX_HANG",
    "OtlpReceiver",
    "ReceivedMetric",
    "ReceivedPoint",
    "ReceivedRequest",
    "ReceivedSpan",
    "otlp_receiver_fixture",
]

#: Upper bound on `hang(seconds)`, so a forgotten hang cannot stall a test run.
MAX_HANG = 30.0

#: Largest request body read (the SDK's own default cap is 64 MiB).
MAX_BODY = 64 * 1024 * 1024

Mode = Literal["ok", "hang", "error"]
T = TypeVar("T")

# The protobuf SpanKind enum counts from SPAN_KIND_UNSPECIFIED = 0; the API's starts at INTERNAL.
_SPAN_KINDS = {
    0: SpanKind.INTERNAL,
    1: SpanKind.INTERNAL,
    2: SpanKind.SERVER,
    3: SpanKind.CLIENT,
    4: SpanKind.PRODUCER,
    5: SpanKind.CONSUMER,
}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as decoded from an `ExportTraceServiceRequest`."""

    name: str
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    parent_span_id: str  # 16 hex digits, or "" for a root span
    kind: SpanKind
    attributes: Mapping[str, Any]
    status_code: StatusCode
    status_message: str
    resource: Mapping[str, Any]
    scope_name: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    events: tuple[tuple[str, Mapping[str, Any]], ...] = ()

    @property
    def duration_s(self) -> float:
        return (self.end_time_unix_nano - self.start_time_unix_nano) / 1e9


@dataclass(frozen=True)
class ReceivedPoint:
    """One metric data point. Number points fill `value`; histograms fill the rest."""

    attributes: Mapping[str, Any]
    value: float | int | None = None
    count: int | None = None
    sum: float | None = None
    bucket_counts: tuple[int, ...] = ()
    explicit_bounds: tuple[float, ...] = ()


@dataclass(frozen=True)
class ReceivedMetric:
    """One metric (with its points) as decoded from an `ExportMetricsServiceRequest`."""

    name: str
    unit: str
    description: str
    type: str  # "gauge", "sum", "histogram", "exponential_histogram" or "summary"
    points: tuple[ReceivedPoint, ...]
    resource: Mapping[str, Any]
    scope_name: str


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as the receiver saw it, whatever the answer."""

    path: str
    status: int
    content_encoding: str
    mode: Mode


def _any_value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(_any_value(item) for item in value.array_value.values)
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which)


def _attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {pair.key: _any_value(pair.value) for pair in pairs}


def _decode_spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=_SPAN_KINDS.get(span.kind, SpanKind.INTERNAL),
                        attributes=_attributes(span.attributes),
                        status_code=StatusCode(span.status.code),
                        status_message=span.status.message,
                        resource=resource,
                        scope_name=scope_spans.scope.name,
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                        events=tuple(
                            (event.name, _attributes(event.attributes)) for event in span.events
                        ),
                    )
                )
    return spans


def _number(point: Any) -> float | int | None:
    which = point.WhichOneof("value")
    return None if which is None else getattr(point, which)


def _decode_metric_points(metric: Any) -> tuple[str, tuple[ReceivedPoint, ...]]:
    kind = metric.WhichOneof("data") or ""
    data = getattr(metric, kind) if kind else None
    points: list[ReceivedPoint] = []
    for point in getattr(data, "data_points", ()):
        attributes = _attributes(point.attributes)
        if kind in ("gauge", "sum"):
            points.append(ReceivedPoint(attributes=attributes, value=_number(point)))
        elif kind == "histogram":
            points.append(
                ReceivedPoint(
                    attributes=attributes,
                    count=point.count,
                    sum=point.sum if point.HasField("sum") else None,
                    bucket_counts=tuple(point.bucket_counts),
                    explicit_bounds=tuple(point.explicit_bounds),
                )
            )
        else:  # exponential histograms and summaries: count and sum are enough here
            points.append(ReceivedPoint(attributes=attributes, count=point.count, sum=point.sum))
    return kind, tuple(points)


def _decode_metrics(request: ExportMetricsServiceRequest) -> list[ReceivedMetric]:
    metrics = []
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind, points = _decode_metric_points(metric)
                metrics.append(
                    ReceivedMetric(
                        name=metric.name,
                        unit=metric.unit,
                        description=metric.description,
                        type=kind,
                        points=points,
                        resource=resource,
                        scope_name=scope_metrics.scope.name,
                    )
                )
    return metrics


class _DecodeError(Exception):
    pass


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, EOFError, zlib.error) as exc:
        raise _DecodeError(f"bad {encoding} body: {exc}") from exc
    if encoding in ("", "identity"):
        return body
    raise _DecodeError(f"unsupported Content-Encoding {encoding!r}")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a client's idle keep-alive connection
    allow_reuse_address = True
    receiver: OtlpReceiver

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut every open connection, so a client's keep-alive connection dies with us."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (exporter timeout while hanging) is expected; stay quiet.
        return


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        self.server.receiver._handle(self)

    def do_GET(self) -> None:
        self._reply(404, b"", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


class OtlpReceiver:
    """A loopback OTLP/HTTP receiver that stores what it decodes. See the module docstring."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._lock = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._metrics: list[ReceivedMetric] = []
        self._requests: list[ReceivedRequest] = []
        self._log_records = 0
        self._mode: Mode = "ok"
        self._hang_seconds = 0.0
        self._error_status = 503
        self._release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        """Listen (again) on `port`; the first start picks a free port when `port` is 0."""
        if self._server is not None:
            return self
        self._release.clear()
        server = _Server((self.host, self.port))
        server.receiver = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"otlp-receiver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: new connections are refused, held (hanging) requests released."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        self._release.set()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, as for `OTEL_EXPORTER_OTLP_ENDPOINT` (no signal path)."""
        return f"http://{self.host}:{self.port}"

    @property
    def traces_url(self) -> str:
        return self.url + "/v1/traces"

    @property
    def metrics_url(self) -> str:
        return self.url + "/v1/metrics"

    @property
    def logs_url(self) -> str:
        return self.url + "/v1/logs"

    # -- fault modes ---------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode, *, seconds: float = 5.0, status: int = 503) -> None:
        """Switch the fault mode: "ok", "hang" (for `seconds`) or "error" (with `status`)."""
        if mode not in ("ok", "hang", "error"):
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "hang" and not 0 < seconds <= MAX_HANG:
            raise ValueError(f"hang seconds must be in (0, {MAX_HANG}], not {seconds}")
        if mode == "error" and not 400 <= status <= 599:
            raise ValueError(f"error status must be 4xx or 5xx, not {status}")
        with self._lock:
            self._mode = mode
            self._hang_seconds = seconds
            self._error_status = status

    def ok(self) -> None:
        self.set_mode("ok")

    def hang(self, seconds: float = 5.0) -> None:
        self.set_mode("hang", seconds=seconds)

    def fail(self, status: int = 503) -> None:
        self.set_mode("error", status=status)

    # -- what was received ---------------------------------------------------------------

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    @property
    def metrics(self) -> list[ReceivedMetric]:
        with self._lock:
            return list(self._metrics)

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def log_records(self) -> int:
        with self._lock:
            return self._log_records

    def metric_names(self) -> set[str]:
        return {metric.name for metric in self.metrics}

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._metrics.clear()
            self._requests.clear()
            self._log_records = 0

    def wait_for_spans(
        self,
        predicate: Callable[[ReceivedSpan], bool] = lambda span: True,
        timeout: float = 5.0,
        count: int = 1,
    ) -> list[ReceivedSpan]:
        """Block until at least `count` received spans match `predicate`; return them all.

        Raises `TimeoutError` naming the spans seen when `timeout` seconds pass first.
        """
        return self._wait(lambda: [s for s in self._spans if predicate(s)], timeout, count, "spans")

    def wait_for_metrics(
        self,
        predicate: Callable[[ReceivedMetric], bool] = lambda metric: True,
        timeout: float = 5.0,
        count: int = 1,
    ) -> list[ReceivedMetric]:
        """Block until at least `count` received metrics match `predicate`; return them all."""
        return self._wait(
            lambda: [m for m in self._metrics if predicate(m)], timeout, count, "metrics"
        )

    def wait_for_requests(
        self,
        predicate: Callable[[ReceivedRequest], bool] = lambda request: True,
        timeout: float = 5.0,
        count: int = 1,
    ) -> list[ReceivedRequest]:
        """Block until at least `count` requests (any outcome) match `predicate`."""
        return self._wait(
            lambda: [r for r in self._requests if predicate(r)], timeout, count, "requests"
        )

    async def wait_for_spans_async(
        self,
        predicate: Callable[[ReceivedSpan], bool] = lambda span: True,
        timeout: float = 5.0,  # noqa: ASYNC109 - same signature as wait_for_spans
        count: int = 1,
    ) -> list[ReceivedSpan]:
        """`wait_for_spans` without blocking the running event loop."""
        return await asyncio.to_thread(self.wait_for_spans, predicate, timeout, count)

    def _wait(
        self, select: Callable[[], list[T]], timeout: float, count: int, what: str
    ) -> list[T]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = select()
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = sorted({str(getattr(item, "name", None) or item) for item in select()})
                    names = sorted({s.name for s in self._spans}) if what == "spans" else seen
                    raise TimeoutError(
                        f"{len(found)} of {count} {what} after {timeout}s; "
                        f"received so far: {names or 'nothing'}"
                    )
                self._lock.wait(remaining)

    # -- request handling (server threads) -----------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        path = handler.path.split("?", 1)[0]
        encoding = handler.headers.get("Content-Encoding", "")
        with self._lock:
            mode, hang_seconds, error_status = self._mode, self._hang_seconds, self._error_status
        length = int(handler.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._record(path, 413, encoding, mode)
            handler.close_connection = True
            handler._reply(413, b"", "text/plain")
            return
        body = handler.rfile.read(length)

        if mode == "hang":
            self._record(path, 503, encoding, mode)
            self._release.wait(hang_seconds)
            handler.close_connection = True
            handler._reply(503, b"", "text/plain")
            return
        if mode == "error":
            self._record(path, error_status, encoding, mode)
            handler._reply(error_status, b"", "text/plain")
            return

        handlers: dict[str, tuple[Any, Any]] = {
            "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
            "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
            "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse),
        }
        if path not in handlers:
            self._record(path, 404, encoding, mode)
            handler._reply(404, b"", "text/plain")
            return
        content_type = handler.headers.get("Content-Type", "").split(";", 1)[0].strip()
        if content_type != "application/x-protobuf":
            self._record(path, 415, encoding, mode)
            handler._reply(415, b"only application/x-protobuf", "text/plain")
            return
        request_type, response_type = handlers[path]
        try:
            message = request_type.FromString(_decompress(body, encoding))
        except Exception as exc:  # DecodeError from protobuf, or a bad compressed body
            self._record(path, 400, encoding, mode)
            handler._reply(400, str(exc).encode(), "text/plain")
            return

        with self._lock:
            if path == "/v1/traces":
                self._spans.extend(_decode_spans(message))
            elif path == "/v1/metrics":
                self._metrics.extend(_decode_metrics(message))
            else:
                self._log_records += sum(
                    len(scope.log_records)
                    for resource in message.resource_logs
                    for scope in resource.scope_logs
                )
            self._requests.append(ReceivedRequest(path, 200, encoding, mode))
            self._lock.notify_all()
        handler._reply(200, response_type().SerializeToString(), "application/x-protobuf")

    def _record(self, path: str, status: int, encoding: str, mode: Mode) -> None:
        with self._lock:
            self._requests.append(ReceivedRequest(path, status, encoding, mode))
            self._lock.notify_all()


@pytest.fixture(name="otlp_receiver")
def otlp_receiver_fixture() -> Iterator[OtlpReceiver]:
    """A started `OtlpReceiver` on a free loopback port, stopped at teardown."""
    receiver = OtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
