"""`FastOTLPSpanExporter`: the SDK's OTLP/HTTP span exporter (endpoint, headers, TLS,
compression, retries and self-metrics all its own) encoding with `SpanEncoder`
(`_otlp_spans`), and a requests session that reads the environment's proxy and CA bundle
settings once rather than on every request, and says when a request cannot connect
(`EnvironmentOnceSession`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from urllib3.exceptions import ConnectTimeoutError

from ._otlp_spans import SpanEncoder

logger = logging.getLogger(__name__)


class EnvironmentOnceSession(requests.Session):
    """A requests session that merges the environment's settings (proxies, `no_proxy`, CA
    bundle) once per URL and request settings, instead of on every request.

    requests reads them by walking the whole environment twice a request: about 0.3 ms, more
    than the rest of sending a batch of a thousand spans. The process's environment does not
    change while it runs (sel_otel never writes it), so the first reading stands.

    `on_connection_error`, when set, is called (from the sending thread) each time a request
    cannot open a connection (refused, unresolvable, timed out), before the error is raised
    to the caller; not for a connection that broke once open (a stale pooled one, which the
    SDK retries at once).
    """

    def __init__(self) -> None:
        super().__init__()
        self._merged: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.on_connection_error: Callable[[], object] | None = None

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        try:
            return super().send(request, **kwargs)
        except requests.ConnectionError as exc:
            if self.on_connection_error is not None and _cannot_connect(exc):
                self.on_connection_error()
            raise

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        key = (url, tuple(sorted((proxies or {}).items())), stream, verify, cert)
        merged = self._merged.get(key)
        if merged is None:
            merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if len(self._merged) >= 64:
                self._merged.clear()
            self._merged[key] = merged
        return {**merged, "proxies": dict(merged["proxies"])}


def _cannot_connect(error: requests.ConnectionError) -> bool:
    """Whether `error` is a failure to open a connection, not one of an open connection."""
    reason = getattr(error.args[0] if error.args else None, "reason", None)
    # NewConnectionError (refused, unresolvable) is a ConnectTimeoutError too, in urllib3 2
    return isinstance(reason, ConnectTimeoutError)


#: Variables naming a requests session of the user's for the span exporter (the SDK loads
#: it as an entry point): when set, the SDK's session is used, not `EnvironmentOnceSession`.
_CREDENTIAL_PROVIDERS = (
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
)
#: The position of `session` among the SDK exporter's arguments.
_SESSION_ARGUMENT = 7


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, encoding with `SpanEncoder` and sending through an
    `EnvironmentOnceSession` unless given a session.

    `on_unreachable`, when set, is called (from the exporting thread) as soon as a request of
    an export cannot connect, while the SDK goes on retrying it with backoff: a collector that
    is down is known at its first refusal, not only when the export gives up (with a session
    of the caller's, only then).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.on_unreachable: Callable[[], object] | None = None
        if (
            len(args) <= _SESSION_ARGUMENT
            and kwargs.get("session") is None
            and not any(os.environ.get(name) for name in _CREDENTIAL_PROVIDERS)
        ):
            session = EnvironmentOnceSession()
            session.on_connection_error = self._unreachable
            kwargs["session"] = session
        super().__init__(*args, **kwargs)
        self._encoder = SpanEncoder()
        # The SDK exporter's parts this one uses; without them, it exports as the SDK does.
        self._fast = all(hasattr(self, part) for part in ("_client", "_metrics", "_shutdown"))

    def _unreachable(self) -> None:
        if self.on_unreachable is not None:
            self.on_unreachable()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self._fast or self._shutdown:
            return super().export(spans)
        with self._metrics.export_operation(len(spans)) as result:
            data = self._encoder.encode(spans)
            limit = getattr(self, "_max_request_size", 0)
            if 0 < limit < len(data):
                logger.warning("dropping %d spans: %d bytes, over %d", len(spans), len(data), limit)
                result.error = ValueError("request too large")
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                if sent.status_code is not None:
                    result.error_attrs = {HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
