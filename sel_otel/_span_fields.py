"""Fast reads of an ended span's fields, for the code that handles every span it exports.

The SDK's `ReadableSpan` properties are Python calls, and some copy what they return:
`attributes` wraps its attributes in a proxy read key by key, `events` and `links` copy them
into tuples. Each costs a little on every span. The span processor hands exporters
`ReadableSpan` objects whose fields are plain instance attributes (`_name`, `_context`,
`_attributes`...): the encoder and the scrubber read those, when `FIELDS_READABLE` says the
installed SDK keeps them there, and a span of another class is first copied into a
`ReadableSpan` (`plain`) through its public properties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import Attributes

_T = TypeVar("_T")

_SPAN_FIELDS = (
    "_name", "_context", "_kind", "_parent", "_start_time", "_end_time", "_attributes",
    "_events", "_links", "_resource", "_status", "_instrumentation_scope",
)  # fmt: skip


def _fields_readable() -> bool:
    span = ReadableSpan(
        name="probe",
        resource=Resource.get_empty(),
        attributes=BoundedAttributes(attributes={"a": 1}),
        events=BoundedList(1),
        status=Status(StatusCode.ERROR, "probe"),
    )
    return (
        all(hasattr(span, field) for field in _SPAN_FIELDS)
        and getattr(span._status, "_description", None) == "probe"
        and getattr(span._status, "_status_code", None) is StatusCode.ERROR
        and getattr(span._attributes, "_dict", None) == {"a": 1}
        and hasattr(span._events, "_dq")
    )


#: Whether this SDK's `ReadableSpan`, `Status`, `BoundedAttributes` and `BoundedList` keep
#: their contents where the readers here look.
FIELDS_READABLE = _fields_readable()


def plain(span: ReadableSpan) -> ReadableSpan:
    """`span` as a `ReadableSpan` itself, its fields copied through its public properties."""
    if type(span) is ReadableSpan:
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=bounded(dict(span.attributes or {}), span.dropped_attributes),
        events=listed(span.events, span.dropped_events),
        links=listed(span.links, span.dropped_links),
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def stored_attributes(span: ReadableSpan) -> Attributes:
    """The span's attributes, as a plain dict when the SDK keeps them in one. Read only."""
    stored = getattr(getattr(span, "_attributes", None), "_dict", None)
    return stored if type(stored) is dict else span.attributes


def items(container: Sequence[_T]) -> Sequence[_T]:
    """The events or links of a span (`span._events`, `span._links`), without the copy that
    iterating a `BoundedList` makes. Read only."""
    if type(container) is BoundedList:
        return container._dq  # type: ignore[attr-defined,no-any-return]
    return container


def dropped(container: Any) -> int:
    """How many attributes, events or links the SDK dropped from `container` (a span's
    `_attributes`, `_events` or `_links`), as the span's `dropped_*` properties say."""
    kind = type(container)
    return int(container.dropped) if kind is BoundedList or kind is BoundedAttributes else 0


def has_events(span: ReadableSpan) -> bool:
    """Whether the span holds events (or may: the SDK keeps them elsewhere). A span may hold
    none and still count some dropped (a limit of 0): read `dropped_events` regardless."""
    return bool(getattr(span, "_events", True))


def has_links(span: ReadableSpan) -> bool:
    """Whether the span holds links (or may: the SDK keeps them elsewhere); as for events,
    read `dropped_links` regardless."""
    return bool(getattr(span, "_links", True))


def bounded(attributes: dict[str, Any], count: int) -> BoundedAttributes:
    """`attributes`, still saying how many were dropped when they were recorded."""
    bounded = BoundedAttributes(attributes=attributes)
    bounded.dropped = count
    return bounded


def listed(values: Sequence[_T], count: int) -> Sequence[_T]:
    """`values`, still saying how many were dropped when the span was recorded."""
    listed: BoundedList[_T] = BoundedList.from_seq(None, values)
    listed.dropped = count
    return listed
