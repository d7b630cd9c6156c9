"""Span and attribute names the host-exec service emits, defined once.

The request span follows the HTTP server conventions; each command is a child span
`exec {argv0}` carrying the process conventions and the `sel.exec.*` attributes below.
The `process.*` names are still incubating in the OpenTelemetry conventions, so they are
spelled out here rather than imported.
"""

from __future__ import annotations

from typing import Final

# Instrumentation scope
SCOPE_NAME: Final = "sel_otel.hostexec"

# Span names
EXEC: Final = "exec"  # the span is "exec {argv0}"

# Standard attributes (OpenTelemetry semantic conventions)
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_PATH: Final = "url.path"
ERROR_TYPE: Final = "error.type"
PROCESS_COMMAND: Final = "process.command"
PROCESS_COMMAND_ARGS: Final = "process.command_args"
PROCESS_EXIT_CODE: Final = "process.exit.code"

# Project attributes
SEL_EXEC_DURATION_MS: Final = "sel.exec.duration_ms"
SEL_EXEC_TIMEOUT_S: Final = "sel.exec.timeout_s"
SEL_EXEC_TIMED_OUT: Final = "sel.exec.timed_out"
SEL_EXEC_TRUNCATED: Final = "sel.exec.truncated"
SEL_EXEC_REFUSAL: Final = "sel.exec.refusal"  # low-cardinality reason code on the request span

# Error types that are not exception class names
ERROR_TIMEOUT: Final = "timeout"
