"""Spans to OTLP protobuf bytes, written directly: the OTLP/HTTP span exporter's encoding.

The SDK's encoder builds a protobuf object per span, attribute and value, then serializes
them: about 23 µs a span, on the export thread, which holds the interpreter lock meanwhile
and so delays the event loop by as much. `SpanEncoder` writes the same
`ExportTraceServiceRequest` bytes field by field: the fixed-size fields of a span packed
together, the bytes of the values that recur (span names, attribute keys and values,
resources and scopes) remembered, within bounds of entries and bytes, the span's fields
read where the SDK keeps them (about 2 µs a span). A batch holding a value it does not write
(a mapping, an integer out of range, a string that is not UTF-8, an instance of a subclass
of str) goes to the SDK's encoder, as does everything when the SDK's spans differ from what
it reads.

`_otlp_exporter.FastOTLPSpanExporter` sends what it writes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import DEFAULT_TRACE_STATE, Link, SpanContext, SpanKind, StatusCode
from opentelemetry.util.types import Attributes

from ._span_fields import FIELDS_READABLE, dropped, items, plain

#: Values whose encoding a memo remembers, at most, and the bytes of those encodings; past
#: either, it starts again. A longer value (a stack trace, an input) is written each time.
_MEMO_ENTRIES = 8192
_MEMO_BYTES = 1 << 20
_MEMO_MAX_CHARS = 1024
_INT64 = 1 << 63
_LOW64 = (1 << 64) - 1

_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack
_fixed32 = struct.Struct("<I").pack
#: Span fields 1 and 2: trace id (16 bytes, big-endian, as two halves) and span id.
_ids = struct.Struct(">HQQHQ").pack
_TRACE_ID_TAG, _SPAN_ID_TAG = 0x0A10, 0x1208
#: Span fields 7 and 8: start and end times.
_times = struct.Struct("<BQBQ").pack
#: KeyValue.value (field 2) holding AnyValue.double_value (field 4): its tags and lengths.
_DOUBLE_VALUE = b"\x12\x09\x21"

#: Span.flags (field 16): whether the parent is remote is known; and it is remote.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_LOCAL_FLAGS = b"\x85\x01" + _fixed32(_HAS_IS_REMOTE)
_REMOTE_FLAGS = b"\x85\x01" + _fixed32(_HAS_IS_REMOTE | _IS_REMOTE)
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
#: Span.status (field 15) without a description, by code.
_STATUSES = {code: b"\x7a" + bytes((len(body),)) + body for code, body in _STATUS_CODES.items()}


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


#: The varints of the lengths most messages have.
_LENGTHS = tuple(_varint(n) for n in range(4096))


def _length(size: int) -> bytes:
    return _LENGTHS[size] if size < 4096 else _varint(size)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    size = len(payload)
    return tag + (_LENGTHS[size] if size < 4096 else _varint(size)) + payload


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


class _Memo:
    """Encodings by value (`entries`, a plain dict: a subclass's lookups are slower), at most
    `_MEMO_ENTRIES` of them and `_MEMO_BYTES` bytes in all (the values they are keyed by hold
    about as many again)."""

    __slots__ = ("entries", "size")

    def __init__(self) -> None:
        self.entries: dict[Any, bytes] = {}
        self.size = 0

    def remember(self, key: Any, encoded: bytes) -> bytes:
        """`encoded`, remembered under `key`, after forgetting the rest if full."""
        entries = self.entries
        if len(entries) >= _MEMO_ENTRIES or self.size + len(encoded) > _MEMO_BYTES:
            entries.clear()
            self.size = 0
        entries[key] = encoded
        self.size += len(encoded)
        return encoded


class _Attributes:
    """Writes attributes as KeyValue fields of one tag, remembering the whole field of string
    values up to `_MEMO_MAX_CHARS` and of boolean values, and the start of the field of a
    float (all but the number)."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.texts = _Memo()
        self.flags = _Memo()
        self.floats = _Memo()

    def encode(self, attributes: Attributes) -> bytes:
        if not attributes:
            return b""
        texts, flags, floats = self.texts.entries, self.flags.entries, self.floats.entries
        parts = []
        for item in attributes.items():
            kind = type(item[1])
            if kind is str:
                encoded = texts.get(item)
                if encoded is None:
                    encoded = self._key_value(*item)
                    if len(item[1]) <= _MEMO_MAX_CHARS:  # type: ignore[arg-type]
                        self.texts.remember(item, encoded)
            elif kind is float:
                head = floats.get(item[0])
                if head is None:
                    key_field = _field(b"\x0a", _text(item[0]))
                    head = self.tag + _length(len(key_field) + 11) + key_field + _DOUBLE_VALUE
                    self.floats.remember(item[0], head)
                encoded = head + _double(item[1])
            elif kind is bool:
                encoded = flags.get(item)
                if encoded is None:
                    encoded = self.flags.remember(item, self._key_value(*item))
            else:
                encoded = self._key_value(*item)
            parts.append(encoded)
        return b"".join(parts)

    def _key_value(self, key: str, value: Any) -> bytes:
        return _field(self.tag, _field(b"\x0a", _text(key)) + _field(b"\x12", _any_value(value)))


class SpanEncoder:
    """Writes batches of spans as an OTLP `ExportTraceServiceRequest`, as the SDK's encoder
    does (the same messages, grouped by equal resource and scope in the order first seen).
    Used from one thread at a time."""

    def __init__(self) -> None:
        self._names = _Memo()
        self._span_attributes = _Attributes(b"\x4a")
        self._event_attributes = _Attributes(b"\x1a")
        self._link_attributes = _Attributes(b"\x22")
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[InstrumentationScope | None, bytes] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """`spans` as request bytes."""
        if FIELDS_READABLE:
            try:
                return self._request(spans)
            except _Unsupported:
                pass
        return bytes(encode_spans(spans).SerializePartialToString())

    def _request(self, spans: Sequence[ReadableSpan]) -> bytes:
        # By equal resource, as the SDK's encoder groups them; and by resource object, to
        # compute the hash of each (its attributes as JSON) once a batch.
        groups: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
        by_id: dict[int, dict[InstrumentationScope | None, list[bytes]]] = {}
        encode = self._span
        last_resource: Resource | None = None
        last_scope: InstrumentationScope | None = None
        current: list[bytes] = []
        for span in spans:
            if type(span) is not ReadableSpan:
                span = plain(span)
            resource, scope = span._resource, span._instrumentation_scope
            if resource is not last_resource or scope is not last_scope or not current:
                scopes = by_id.get(id(resource))
                if scopes is None:
                    scopes = by_id[id(resource)] = groups.setdefault(resource, {})
                current = scopes.setdefault(scope or None, [])
                last_resource, last_scope = resource, scope
            encode(span, current)
        out = []
        for resource, scopes in groups.items():
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
        attributes = _Attributes(b"\x0a").encode(resource.attributes)
        encoded = _field(b"\x0a", attributes)
        if len(self._resources) >= 64:
            self._resources.clear()
        self._resources[id(resource)] = (resource, encoded)
        return encoded

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        """ScopeSpans.scope (field 1)."""
        encoded = self._scopes.get(scope)
        if encoded is None:
            body = b""
            if scope is not None:
                body = _field(b"\x0a", _text(scope.name)) if scope.name else b""
                if scope.version:
                    body += _field(b"\x12", _text(scope.version))
                body += _Attributes(b"\x1a").encode(scope.attributes)
            encoded = _field(b"\x0a", body)
            if len(self._scopes) >= 64:
                self._scopes.clear()
            self._scopes[scope] = encoded
        return encoded

    def _span(self, span: ReadableSpan, out: list[bytes]) -> None:
        """One Span message, its fields in number order, as a ScopeSpans.spans field (2)
        appended to `out`."""
        span_context = span._context
        assert span_context is not None  # an ended SDK span
        trace_id, span_id, _, _, trace_state, _ = span_context
        parts = [_ids(_TRACE_ID_TAG, trace_id >> 64, trace_id & _LOW64, _SPAN_ID_TAG, span_id)]
        if trace_state is not DEFAULT_TRACE_STATE and trace_state:
            parts.append(_field(b"\x1a", _text(trace_state.to_header())))
        parent = span._parent
        if parent is not None:
            parts.append(b"\x22\x08" + parent[1].to_bytes(8, "big"))
        name = span._name
        encoded = self._names.entries.get(name)
        if encoded is None:
            encoded = _field(b"\x2a", _text(name)) if name else b""
            if len(name) <= _MEMO_MAX_CHARS:
                self._names.remember(name, encoded)
        parts += (encoded, _KINDS[id(span._kind)])
        start, end = span._start_time, span._end_time
        if start and end:
            parts.append(_times(0x39, start, 0x41, end))
        elif start:
            parts.append(b"\x39" + _fixed64(start))
        elif end:
            parts.append(b"\x41" + _fixed64(end))
        attributes = span._attributes
        if type(attributes) is BoundedAttributes:
            parts.append(self._span_attributes.encode(attributes._dict))
            if attributes.dropped:
                parts.append(b"\x50" + _varint(attributes.dropped))
        elif attributes:
            parts.append(self._span_attributes.encode(attributes))
        events, links = span._events, span._links
        # A BoundedList of them, or a tuple, mostly empty; empty with a count of those dropped
        # when the span's limit is 0 (`dropped` inlined: a call costs as much as the rest).
        if events or links or getattr(events, "dropped", None) or getattr(links, "dropped", None):
            self._extras(span, parts)
        status = span._status
        if status._description:
            code = _STATUS_CODES[id(status._status_code)]
            parts.append(_field(b"\x7a", _field(b"\x12", _text(status._description)) + code))
        else:
            parts.append(_STATUSES[id(status._status_code)])
        parts.append(_REMOTE_FLAGS if parent is not None and parent[2] else _LOCAL_FLAGS)
        out.append(_field(b"\x12", b"".join(parts)))

    def _extras(self, span: ReadableSpan, parts: list[bytes]) -> None:
        """The span's events and links (fields 11 to 14) appended to `parts`."""
        events, links = span._events, span._links
        for event in items(events):
            parts.append(_field(b"\x5a", self._event(event)))
        if dropped(events):
            parts.append(b"\x60" + _varint(dropped(events)))
        for link in items(links):
            parts.append(_field(b"\x6a", self._link(link)))
        if dropped(links):
            parts.append(b"\x70" + _varint(dropped(links)))

    def _event(self, event: Event) -> bytes:
        body = b"\x09" + _fixed64(event.timestamp) if event.timestamp else b""
        if event.name:
            body += _field(b"\x12", _text(event.name))
        body += self._event_attributes.encode(event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        return body

    def _link(self, link: Link) -> bytes:
        body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big")
        body += b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
        body += self._link_attributes.encode(link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        return body + b"\x35" + _fixed32(_flags(link.context))


def _flags(parent: SpanContext | None) -> int:
    if parent is not None and parent.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE
