"""Scrubbing where spans leave the process: an exporter wrapper, after every instrumentation.

`ScrubbingSpanExporter` hands its exporter copies of the spans whose string values (span
name, attributes, status description, event and link attributes; strings inside arrays
too) had secret-looking parts replaced by `[REDACTED]`; the span records where and by which
rule in `sel.scrubbed` (entries `"url.full: url_credentials"`). So `url.full` from the httpx
instrumentation, the messages of exceptions recorded by any span, and values set by code we
do not own are covered, not only what the runtime sets.

It runs in the exporter, on the batch processor's thread, not on the event loop: a call's
cost is unchanged. Values recur (agent names, routes, cached inputs), so results are
memoized by value; the attributes already scrubbed at the source, where they are scrubbed
before being cut (`sel.agent.input`, `process.command_args`), are not scrubbed again.
Spans with nothing to scrub are passed on as they are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TypeVar

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, Status
from opentelemetry.util.types import Attributes, AttributeValue

from . import _semconv as names
from ._redact import redact
from ._span_fields import has_events, has_links, stored_attributes

#: Distinct values whose scrubbed form is remembered, and the longest one remembered.
_MEMO_ENTRIES = 4096
_MEMO_MAX_CHARS = 1024

_T = TypeVar("_T")
_NONE: frozenset[str] = frozenset()
_Redact = Callable[[str], tuple[str, tuple[str, ...]]]


class ScrubbingSpanExporter(SpanExporter):
    """A span exporter that scrubs the spans it passes to `inner` (see the module doc)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self._memo: _Redact = functools.lru_cache(maxsize=_MEMO_ENTRIES)(redact)
        self._scrubbed_at_source = scrubbed_at_source()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([self.scrubbed(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def scrubbed(self, span: ReadableSpan) -> ReadableSpan:
        """`span`, or a copy of it with its secret-looking values replaced."""
        found: list[str] = []
        scope = span.instrumentation_scope
        trusted = self._scrubbed_at_source.get(scope.name, _NONE) if scope else _NONE
        name = self._text(span.name, "span name", found)
        attributes = self._attributes(stored_attributes(span), "", found, trusted)
        status = span.status
        if status.description:
            description = self._text(status.description, "status", found)
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
            attributes=_bounded(scrubbed, span.dropped_attributes),
            events=_listed(list(events), span.dropped_events),
            links=_listed(list(links), span.dropped_links),
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=scope,
        )

    def _text(self, text: str, where: str, found: list[str]) -> str:
        """`text` scrubbed (the same object when nothing matched); rules noted in `found`."""
        scrubbed, rules = self._memo(text) if len(text) <= _MEMO_MAX_CHARS else redact(text)
        if not rules:
            return text
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
            # Concrete types, not ABCs: the check runs for every value of every span.
            if type(value) is str:
                if key not in trusted:
                    text = self._text(value, prefix + key, found)
                    if text is not value:
                        changed[key] = text
            elif isinstance(value, tuple | list) and key not in trusted:
                texts = tuple(
                    self._text(v, prefix + key, found) if type(v) is str else v for v in value
                )
                if any(new is not old for new, old in zip(texts, value, strict=True)):
                    changed[key] = texts
        if not changed:
            return None
        return {**attributes, **changed}

    def _event(self, event: Event, found: list[str]) -> Event:
        attributes = self._attributes(event.attributes, f"{event.name} event ", found)
        if attributes is None:
            return event
        return Event(event.name, _bounded(attributes, event.dropped_attributes), event.timestamp)

    def _link(self, index: int, link: Link, found: list[str]) -> Link:
        attributes = self._attributes(link.attributes, f"link {index} ", found)
        if attributes is None:
            return link
        return Link(link.context, _bounded(attributes, link.dropped_attributes))


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


def _bounded(attributes: dict[str, AttributeValue], dropped: int) -> BoundedAttributes:
    """`attributes`, still saying how many were dropped when they were recorded."""
    bounded = BoundedAttributes(attributes=attributes)
    bounded.dropped = dropped
    return bounded


def _listed(items: list[_T], dropped: int) -> Sequence[_T]:
    """`items`, still saying how many were dropped when the span was recorded."""
    listed: BoundedList[_T] = BoundedList.from_seq(None, items)
    listed.dropped = dropped
    return listed
