"""Fast reads of an ended span's fields, for the code that handles every span it exports.

The SDK's `ReadableSpan` properties copy what they return: `attributes` wraps its attributes in
a proxy read key by key, `events` and `links` copy them into tuples. Each copy costs a little
on every span; these read the SDK's own containers when they are there, and fall back on the
properties otherwise, so that another SDK version is read correctly, only slower.
"""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.util.types import Attributes


def stored_attributes(span: ReadableSpan) -> Attributes:
    """The span's attributes, as a plain dict when the SDK keeps them in one. Read only."""
    stored = getattr(getattr(span, "_attributes", None), "_dict", None)
    return stored if type(stored) is dict else span.attributes


def has_events(span: ReadableSpan) -> bool:
    """Whether the span recorded events (or may have: the SDK keeps them elsewhere)."""
    return bool(getattr(span, "_events", True))


def has_links(span: ReadableSpan) -> bool:
    """Whether the span has links (or may have: the SDK keeps them elsewhere)."""
    return bool(getattr(span, "_links", True))
