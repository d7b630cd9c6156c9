"""The record of a failed agent call on its span: status, `error.type` and the exception event.

The event is worked out once per failure and only for a span that records: one failure
shared by N coalesced callers is one exception, recorded on each caller's span from one
computation (remembered weakly, by the exception), and an unsampled span costs nothing.

Error messages often quote the input: the message is scrubbed and cut like it, and left out
with it when the input is not recorded (`SEL_TRACE_CONTENT=false`). The stack shows frames
and exception types, never the messages of the chain; its source lines are scrubbed where
spans leave the process, like every event attribute (`_scrub.py`). It is formatted here
rather than by `traceback`, whose column markers parse each frame's line, most of the cost
of a failure.
"""

from __future__ import annotations

import linecache
import traceback
import weakref
from dataclasses import dataclass
from types import TracebackType

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import Attributes

from . import _semconv as names
from ._exceptions import AgentTimeout
from ._redact import span_content

#: Exceptions shown at most from a chain of causes (a cycle ends there too).
_MAX_CHAIN = 16
_EXCEPTION_EVENT = "exception"


@dataclass(frozen=True, slots=True)
class _Record:
    description: str
    event: Attributes


class FailureRecorder:
    """Records failures on spans, with messages when `trace_content`, cut to `content_max`
    characters."""

    def __init__(self, *, trace_content: bool, content_max: int) -> None:
        self._trace_content = trace_content
        self._content_max = content_max
        self._records: weakref.WeakKeyDictionary[BaseException, _Record] = (
            weakref.WeakKeyDictionary()
        )

    def record(self, span: trace.Span, exc: BaseException, error_type: str) -> None:
        """Mark `span` as failed by `exc`, of the low-cardinality `error_type`."""
        if not span.is_recording():
            return
        record = self._record_of(exc, error_type)
        span.set_status(Status(StatusCode.ERROR, record.description))
        span.add_event(_EXCEPTION_EVENT, record.event)
        span.set_attribute(names.ERROR_TYPE, error_type)
        if isinstance(exc, AgentTimeout) and exc.blocked:
            span.set_attribute(names.SEL_AGENT_BLOCKED_LOOP, True)

    def _record_of(self, exc: BaseException, error_type: str) -> _Record:
        try:
            return self._records[exc]
        except KeyError:
            record = self._records[exc] = self._record(exc, error_type)
            return record
        except TypeError:  # a built-in exception (CancelledError) has no weak reference
            return self._record(exc, error_type)

    def _record(self, exc: BaseException, error_type: str) -> _Record:
        message = span_content(str(exc), self._content_max) if self._trace_content else ""
        message = message or error_type
        kind = type(exc)
        module = kind.__module__
        return _Record(
            message,
            {
                names.EXCEPTION_TYPE: kind.__qualname__
                if module in (None, "builtins")
                else f"{module}.{kind.__qualname__}",
                names.EXCEPTION_MESSAGE: message,
                names.EXCEPTION_STACKTRACE: frames_only(exc),
            },
        )


def frames_only(exc: BaseException) -> str:
    """The stack of `exc` and of the exceptions that led to it or that it groups, oldest
    first, with their types but none of their messages."""
    parts: list[str] = []
    seen: set[int] = set()
    checked: set[str] = set()
    pending: list[BaseException] = [exc]
    while pending and len(parts) < _MAX_CHAIN:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        frames = _frames(current.__traceback__, checked)
        parts.append(f"{frames}{type(current).__qualname__}\n")
        if isinstance(current, BaseExceptionGroup):
            pending.extend(reversed(current.exceptions))
        cause = current.__cause__
        if cause is None and not current.__suppress_context__:
            cause = current.__context__
        if cause is not None:
            pending.append(cause)
    return "\nDuring or because of the above:\n\n".join(reversed(parts))


def _frames(tb: TracebackType | None, checked: set[str]) -> str:
    """`tb` as `traceback.format_tb` shows it, without the column markers; `checked` holds
    the files whose lines are known to be current."""
    lines: list[str] = []
    for frame, number in traceback.walk_tb(tb):
        code = frame.f_code
        file = code.co_filename
        if file not in checked:  # the file may have changed since it was read (a reload)
            linecache.checkcache(file)
            checked.add(file)
        lines.append(f'  File "{file}", line {number}, in {code.co_name}\n')
        line = linecache.getline(file, number, frame.f_globals).strip()
        if line:
            lines.append(f"    {line}\n")
    return "".join(lines)
