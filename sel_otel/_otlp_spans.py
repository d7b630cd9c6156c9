"""Spans to OTLP protobuf bytes, written directly: the OTLP/HTTP span exporter's encoding.

The SDK's encoder builds a protobuf object per span, attribute and value, then serializes
them: about 23 µs a span, on the export thread, which holds the interpreter lock meanwhile
and so delays the event loop by as much. `SpanEncoder` writes the same
`ExportTraceServiceRequest` bytes field by field, reusing the bytes of the values that recur
(span names, attribute keys and values, resources and scopes): about 3 µs a span. A batch
holding a value it does not write (a mapping, an integer out of range, a string that is not
UTF-8) goes to the SDK's encoder, as does everything when the exporter's internals differ.

`FastOTLPSpanExporter` is the SDK's OTLP/HTTP span exporter (endpoint, headers, TLS,
compression, retries and self-metrics all its own) with this encoding.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode
from opentelemetry.util.types import Attributes

from ._span_fields import has_events, has_links, stored_attributes

logger = logging.getLogger(__name__)

#: Values whose encoding is remembered, at most; past that, the memory starts again.
_MEMO_ENTRIES = 8192
_INT64 = 1 << 63

_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack
_fixed32 = struct.Struct("<I").pack

#: Span.flags: whether the parent is remote is known; and it is remote.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
# By the id of the enum member: an enum's own hash is a Python call.
_KINDS = {
    id(SpanKind.INTERNAL): b"\x30\x01",
    id(SpanKind.SERVER): b"\x30\x02",
    id(SpanKind.CLIENT): b"\x30\x03",
    id(SpanKind.PRODUCER): b"\x30\x04",
    id(SpanKind.CONSUMER): b"\x30\x05",
}
_STATUS_CODES = {id(StatusCode.UNSET): b"", id(StatusCode.OK): b"\x18\x01"}
_STATUS_CODES[id(StatusCode.ERROR)] = b"\x18\x02"
_NO_STATUS = b"\x7a\x00"  # an empty Status message: code UNSET, no description


class _Unsupported(Exception):
    """A value this encoder does not write; the SDK's encoder takes the batch."""


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    return tag + _varint(len(payload)) + payload


def _text(value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Unsupported from None


def _any_value(value: Any) -> bytes:
    """The AnyValue message of an attribute value (its fields: 1 string, 2 bool, 3 int,
    4 double, 5 array, 7 bytes)."""
    kind = type(value)
    if kind is str:
        return _field(b"\x0a", _text(value))
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        if not -_INT64 <= value < _INT64:
            raise _Unsupported
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if kind is float:
        return b"\x21" + _double(value)
    if kind is bytes:
        return _field(b"\x3a", value)
    if kind is tuple or kind is list:
        items = b"".join(_field(b"\x0a", _any_value(item)) for item in value)
        return _field(b"\x2a", items)
    raise _Unsupported


class SpanEncoder:
    """Writes batches of spans as an OTLP `ExportTraceServiceRequest`, as the SDK's encoder
    does (the same messages, grouped by resource and scope in the order first seen). Used
    from one thread at a time."""

    def __init__(self) -> None:
        self._memo: dict[Any, bytes] = {}
        self._resources: dict[int, tuple[Resource, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """`spans` as request bytes."""
        try:
            return self._request(spans)
        except _Unsupported:
            return bytes(encode_spans(spans).SerializePartialToString())

    def _request(self, spans: Sequence[ReadableSpan]) -> bytes:
        groups: dict[int, tuple[Resource, dict[InstrumentationScope | None, list[bytes]]]] = {}
        for span in spans:
            resource = span.resource
            group = groups.get(id(resource))
            if group is None:
                group = groups[id(resource)] = (resource, {})
            group[1].setdefault(span.instrumentation_scope, []).append(self._span(span))
        out = []
        for resource, scopes in groups.values():
            body = [self._resource(resource)]
            for scope, encoded in scopes.items():
                scope_spans = [self._scope(scope), *encoded]
                if scope is not None and scope.schema_url:
                    scope_spans.append(_field(b"\x1a", _text(scope.schema_url)))
                body.append(_field(b"\x12", b"".join(scope_spans)))
            if resource.schema_url:
                body.append(_field(b"\x1a", _text(resource.schema_url)))
            out.append(_field(b"\x0a", b"".join(body)))
        return b"".join(out)

    def _resource(self, resource: Resource) -> bytes:
        """ResourceSpans.resource (field 1), remembered per resource object."""
        known = self._resources.get(id(resource))
        if known is not None and known[0] is resource:
            return known[1]
        encoded = _field(b"\x0a", self._attributes(resource.attributes, b"\x0a"))
        if len(self._resources) >= 64:
            self._resources.clear()
        self._resources[id(resource)] = (resource, encoded)
        return encoded

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        """ScopeSpans.scope (field 1)."""
        key = ("scope", scope)
        encoded = self._memo.get(key)
        if encoded is None:
            body = b""
            if scope is not None:
                body = _field(b"\x0a", _text(scope.name)) if scope.name else b""
                if scope.version:
                    body += _field(b"\x12", _text(scope.version))
                body += self._attributes(scope.attributes, b"\x1a")
            encoded = self._remember(key, _field(b"\x0a", body))
        return encoded

    def _span(self, span: ReadableSpan) -> bytes:
        """ScopeSpans.spans (field 2): one Span message, its fields in number order."""
        span_context = span.context
        assert span_context is not None  # an ended SDK span
        parent = span.parent
        memo = self._memo
        parts = [
            b"\x0a\x10",
            span_context.trace_id.to_bytes(16, "big"),
            b"\x12\x08",
            span_context.span_id.to_bytes(8, "big"),
        ]
        trace_state = span_context.trace_state
        if trace_state:
            parts.append(_field(b"\x1a", _text(trace_state.to_header())))
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        name = span.name
        encoded = memo.get((b"\x2a", name))
        if encoded is None:
            name_field = _field(b"\x2a", _text(name)) if name else b""
            encoded = self._remember((b"\x2a", name), name_field)
        parts += (encoded, _KINDS[id(span.kind)])
        if span.start_time:
            parts += (b"\x39", _fixed64(span.start_time))
        if span.end_time:
            parts += (b"\x41", _fixed64(span.end_time))
        parts.append(self._attributes(stored_attributes(span), b"\x4a"))
        if span.dropped_attributes:
            parts += (b"\x50", _varint(span.dropped_attributes))
        if has_events(span):
            for event in span.events:
                parts.append(_field(b"\x5a", self._event(event)))
            if span.dropped_events:
                parts += (b"\x60", _varint(span.dropped_events))
        if has_links(span):
            for link in span.links:
                parts.append(_field(b"\x6a", self._link(link)))
            if span.dropped_links:
                parts += (b"\x70", _varint(span.dropped_links))
        status = span.status
        code = _STATUS_CODES[id(status.status_code)]
        if status.description or code:
            body = _field(b"\x12", _text(status.description)) if status.description else b""
            parts.append(_field(b"\x7a", body + code))
        else:
            parts.append(_NO_STATUS)
        parts += (b"\x85\x01", _fixed32(_flags(parent)))
        return _field(b"\x12", b"".join(parts))

    def _event(self, event: Event) -> bytes:
        body = b"\x09" + _fixed64(event.timestamp) if event.timestamp else b""
        if event.name:
            body += _field(b"\x12", _text(event.name))
        body += self._attributes(event.attributes, b"\x1a")
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        return body

    def _link(self, link: Link) -> bytes:
        body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big")
        body += b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
        body += self._attributes(link.attributes, b"\x22")
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        return body + b"\x35" + _fixed32(_flags(link.context))

    def _attributes(self, attributes: Attributes, tag: bytes) -> bytes:
        """Each attribute as a KeyValue field with `tag`; strings and booleans remembered, and
        the keys of the others."""
        if not attributes:
            return b""
        memo = self._memo
        parts = []
        for key, value in attributes.items():
            kind = type(value)
            if kind is str or kind is bool:
                memo_key = (tag, key, value, kind)
                encoded = memo.get(memo_key)
                if encoded is None:
                    encoded = self._remember(memo_key, _key_value(tag, self._key(key), value))
            else:
                encoded = _key_value(tag, self._key(key), value)
            parts.append(encoded)
        return b"".join(parts)

    def _key(self, key: str) -> bytes:
        """KeyValue.key (field 1)."""
        encoded = self._memo.get((b"\x0a", key))
        if encoded is None:
            encoded = self._remember((b"\x0a", key), _field(b"\x0a", _text(key)))
        return encoded

    def _remember(self, key: Any, encoded: bytes) -> bytes:
        if len(self._memo) >= _MEMO_ENTRIES:
            self._memo.clear()
        self._memo[key] = encoded
        return encoded


def _key_value(tag: bytes, key_field: bytes, value: Any) -> bytes:
    return _field(tag, key_field + _field(b"\x12", _any_value(value)))


def _flags(parent: SpanContext | None) -> int:
    if parent is not None and parent.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, encoding with `SpanEncoder`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoder = SpanEncoder()
        # The SDK exporter's parts this one uses; without them, it exports as the SDK does.
        self._fast = all(hasattr(self, part) for part in ("_client", "_metrics", "_shutdown"))

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
