"""Scrubbing where spans leave the process: an exporter wrapper, after every instrumentation.

`ScrubbingSpanExporter` hands its exporter copies of the spans whose string values (span
name, attributes, status description, event and link attributes; strings inside arrays and
mappings, instances of subclasses of str, and bytes read as UTF-8 too) had secret-looking
parts replaced by `[REDACTED]`; the span records where and by which rule in `sel.scrubbed`
(entries `"url.full: url_credentials"`). So `url.full` from the httpx instrumentation, the
messages of exceptions recorded by any span, and values set by code we do not own are
covered, not only what the runtime sets.

It runs in the exporter, on the batch processor's thread, not on the event loop: a call's
cost is unchanged. Values recur (agent names, routes, cached inputs), so results are
memoized by value, and a span whose strings were all seen clean before is passed on after a
set lookup per string; the attributes already scrubbed at the source, where they are scrubbed
before being cut (`sel.agent.input`, `process.command_args`), are not scrubbed again.
Spans with nothing to scrub are passed on as they are.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status
from opentelemetry.util.types import Attributes, AttributeValue

from . import _semconv as names
from ._redact import redact
from ._span_fields import (
    FIELDS_READABLE,
    bounded,
    has_events,
    has_links,
    items,
    listed,
    stored_attributes,
)

#: Distinct values whose scrubbed form is remembered, and the longest one remembered.
_MEMO_ENTRIES = 4096
_MEMO_MAX_CHARS = 1024
#: The types of values with nothing to scrub.
_SCALARS = frozenset({bool, int, float, type(None)})

_NONE: frozenset[str] = frozenset()
_NO_ATTRIBUTES: Mapping[str, AttributeValue] = MappingProxyType({})


class ScrubbingSpanExporter(SpanExporter):
    """A span exporter that scrubs the spans it passes to `inner` (see the module doc)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        #: Values known to hold nothing to scrub, and the scrubbed form of the others.
        self._clean: set[str] = set()
        self._dirty: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._scrubbed_at_source = scrubbed_at_source()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        scrubbed = self.scrubbed
        return self.inner.export([scrubbed(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def scrubbed(self, span: ReadableSpan) -> ReadableSpan:
        """`span`, or a copy of it with its secret-looking values replaced."""
        if FIELDS_READABLE and type(span) is ReadableSpan and self._known_clean(span):
            return span
        found: list[str] = []
        scope = span.instrumentation_scope
        trusted = self._scrubbed_at_source.get(scope.name, _NONE) if scope else _NONE
        name = self._value(span.name, "span name", found)
        attributes = self._attributes(stored_attributes(span), "", found, trusted)
        status = span.status
        if status.description:
            description = self._value(status.description, "status", found)
            if description is not status.description:
                status = Status(status.status_code, description)
        # Read only when there are some: the properties copy them.
        events = span.events if has_events(span) else ()
        links = span.links if has_links(span) else ()
        if events:
            events = [self._event(event, found) for event in events]
        if links:
            links = [self._link(i, link, found) for i, link in enumerate(links)]
        if not found:
            return span
        scrubbed = dict(span.attributes or {}) if attributes is None else attributes
        scrubbed[names.SEL_SCRUBBED] = tuple(found)
        return ReadableSpan(
            name=name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=bounded(scrubbed, span.dropped_attributes),
            events=listed(list(events), span.dropped_events),
            links=listed(list(links), span.dropped_links),
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=scope,
        )

    def _known_clean(self, span: ReadableSpan) -> bool:
        """Whether every string of `span` is one seen clean before (or scrubbed at the
        source): the common case, checked without a copy or a call per value."""
        clean = self._clean
        name = span._name
        if type(name) is not str or name not in clean:
            return False
        if span._status._description or items(span._events):
            return False
        if items(span._links):
            return False
        trusted = _NONE
        scope = span._instrumentation_scope
        if scope is not None:
            trusted = self._scrubbed_at_source.get(scope.name, _NONE)
        attributes = span._attributes
        if type(attributes) is BoundedAttributes:
            attributes = attributes._dict
        for key, value in (attributes or _NO_ATTRIBUTES).items():
            kind = type(value)
            if kind is str:
                if value not in clean and key not in trusted:
                    return False
            elif kind is tuple or kind is list:
                if key not in trusted:
                    for item in value:  # type: ignore[union-attr]
                        kind = type(item)
                        if kind is str:
                            if item not in clean:
                                return False
                        elif kind not in _SCALARS:
                            return False
            elif kind not in _SCALARS:  # bytes, a mapping, a subclass of str
                return False
        return True

    def _text(self, text: str, where: str, found: list[str]) -> str:
        """`text` scrubbed (the same object when nothing matched); rules noted in `found`."""
        if text in self._clean:
            return text
        known = self._dirty.get(text)
        scrubbed, rules = known if known is not None else redact(text)
        if not rules:
            if len(text) <= _MEMO_MAX_CHARS:
                _remember(self._clean, text)
            return text
        if known is None and len(text) <= _MEMO_MAX_CHARS:
            if len(self._dirty) >= _MEMO_ENTRIES:
                self._dirty.clear()
            self._dirty[text] = (scrubbed, rules)
        found.extend(f"{where}: {rule}" for rule in rules)
        return scrubbed

    def _attributes(
        self,
        attributes: Attributes,
        prefix: str,
        found: list[str],
        trusted: frozenset[str] = frozenset(),
    ) -> dict[str, AttributeValue] | None:
        """Scrubbed copies of `attributes`, or None when none changed."""
        if not attributes:
            return None
        changed: dict[str, AttributeValue] = {}
        for key, value in attributes.items():
            # Concrete types first: the check runs for every value of every span.
            kind = type(value)
            if kind in _SCALARS or key in trusted:
                continue
            if kind is str:
                new = self._text(value, prefix + key, found)  # type: ignore[arg-type]
            else:
                new = self._value(value, prefix + key, found)
            if new is not value:
                changed[key] = new
        if not changed:
            return None
        return {**attributes, **changed}

    def _value(self, value: Any, where: str, found: list[str]) -> Any:
        """`value` (a string, bytes, a sequence or a mapping of them) scrubbed: the same
        object when nothing matched. A subclass of str is scrubbed as the str it holds; bytes
        as UTF-8, any bytes that are not kept as they are."""
        if type(value) is str:
            return self._text(value, where, found)
        if isinstance(value, str):
            text = str.__str__(value)  # what it holds, whatever its __str__ says
            scrubbed = self._text(text, where, found)
            return value if scrubbed is text else scrubbed
        if isinstance(value, bytes):
            text = value.decode("utf-8", "surrogateescape")
            scrubbed = self._text(text, where, found)
            return value if scrubbed is text else scrubbed.encode("utf-8", "surrogateescape")
        if isinstance(value, Sequence):
            items = tuple(self._value(item, where, found) for item in value)
            return value if all(map(operator.is_, items, value)) else items
        if isinstance(value, Mapping):
            scrubbed_items = {k: self._value(v, f"{where}.{k}", found) for k, v in value.items()}
            unchanged = all(scrubbed_items[k] is v for k, v in value.items())
            return value if unchanged else scrubbed_items
        return value

    def _event(self, event: Event, found: list[str]) -> Event:
        attributes = self._attributes(event.attributes, f"{event.name} event ", found)
        if attributes is None:
            return event
        return Event(event.name, bounded(attributes, event.dropped_attributes), event.timestamp)

    def _link(self, index: int, link: Link, found: list[str]) -> Link:
        attributes = self._attributes(link.attributes, f"link {index} ", found)
        if attributes is None:
            return link
        return Link(link.context, bounded(attributes, link.dropped_attributes))


def scrubbed_at_source() -> Mapping[str, frozenset[str]]:
    """The span attributes each instrumentation scope of ours scrubs where it sets them."""
    # Imported here: the host-exec package imports the telemetry module, which imports this.
    from .hostexec import _semconv as hostexec_names

    return MappingProxyType(
        {
            names.SCOPE_NAME: frozenset({names.SEL_AGENT_INPUT}),
            hostexec_names.SCOPE_NAME: frozenset({hostexec_names.PROCESS_COMMAND_ARGS}),
        }
    )


def _remember(clean: set[str], text: str) -> None:
    if len(clean) >= _MEMO_ENTRIES:
        clean.clear()
    clean.add(text)
