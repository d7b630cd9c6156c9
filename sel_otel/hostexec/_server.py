"""The HTTP side of the service: token check, request parsing, concurrency limit, spans.

Routes:
- `POST /exec` with `Authorization: Bearer <token>` and a JSON body `{"command": "uname -a"}`.
  200: the command ran; the body is an `ExecResult` (`exit_code`, `stdout`, `stderr`,
  `truncated`, `timed_out`, `duration_ms`). 504: the command ran past its timeout and was
  killed; same body with `timed_out: true`, plus `timeout_s`. 400: malformed request or
  command line; 401: missing or wrong token; 403: refused by the allow-list; 408: a body
  slower than `HOST_EXEC_BODY_TIMEOUT`; 413: body over the cap; 415: a compressed body
  (`Content-Encoding`, never inflated); 429: the concurrency limit is reached (not queued).
  Errors are `{"error": ...}`, with `reason` and `command` for 400/403 refusals of a command
  line.
- `GET /healthz`: `{"status": "ok"}`, no token needed, and no span: a readiness check is
  nobody's request, and a trace of its own for each one would bury the real ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue

from .._bearer import bearer_matches
from .._redact import scrub_argv, span_content
from . import _semconv as names
from ._allowlist import AllowList
from ._limits import BodyRefused, read_body
from ._policy import Approved, Policy, Refused
from ._runner import ExecResult, Runner
from ._settings import HostExecSettings

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class _Service:
    """Everything a request needs, built once per application."""

    token: bytes
    policy: Policy
    runner: Runner
    slots: asyncio.Semaphore
    tracer: trace.Tracer
    body_timeout: float


_SERVICE = web.AppKey("service", _Service)
#: Characters of the request path recorded on the span; the routes are far shorter.
_MAX_URL_PATH = 256
#: Characters of an argv's repr in the audit log; the policy already bounds the line.
_MAX_LOGGED_ARGV = 2048


def child_environment(settings: HostExecSettings, source: Mapping[str, str]) -> dict[str, str]:
    """The environment every command starts from: `PATH` and the allow-listed variables."""
    env = {name: source[name] for name in settings.child_env if name in source}
    env["PATH"] = settings.child_path
    return env


def create_app(
    settings: HostExecSettings, *, tracer_provider: trace.TracerProvider | None = None
) -> web.Application:
    """Build the host-exec application; raises ConfigError for a bad allow-list."""
    allowlist = AllowList.load(settings.allowlist)
    policy = Policy(
        allowlist,
        max_length=settings.max_command_length,
        default_timeout=settings.default_timeout,
        program_path=settings.child_path,
    )
    for problem in policy.untrusted_roots():
        logger.warning("every <path> under this root will be refused: %s", problem.logged)
    for problem in policy.untrusted_program_directories():
        logger.warning("every program found in this PATH directory is refused: %s", problem.logged)
    service = _Service(
        token=settings.token.encode(),
        policy=policy,
        runner=Runner(
            env=child_environment(settings, os.environ),
            max_output_bytes=settings.max_output_bytes,
        ),
        slots=asyncio.Semaphore(settings.max_concurrency),
        tracer=trace.get_tracer(names.SCOPE_NAME, tracer_provider=tracer_provider),
        body_timeout=settings.body_timeout,
    )
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_trace_requests])
    app[_SERVICE] = service
    app.router.add_get("/healthz", _healthz)
    app.router.add_post("/exec", _exec)
    return app


@web.middleware
async def _trace_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One SERVER span per request but readiness checks, continuing the caller's
    `traceparent` when the caller holds the token (anyone else starts a trace of its own:
    no stranger's request joins the bot's traces)."""
    if request.match_info.route.handler is _healthz:
        return await handler(request)
    service = request.app[_SERVICE]
    tracer = service.tracer
    resource = request.match_info.route.resource
    attributes = {
        names.HTTP_REQUEST_METHOD: request.method,
        names.URL_PATH: request.path[:_MAX_URL_PATH],  # any client may send any path
    }
    name = request.method  # unmatched paths stay out of span names: low cardinality
    if resource is not None:
        attributes[names.HTTP_ROUTE] = resource.canonical
        name = f"{request.method} {resource.canonical}"
    with tracer.start_as_current_span(
        name,
        context=(
            propagate.extract(request.headers)
            if bearer_matches(request.headers, service.token)
            else Context()
        ),
        kind=trace.SpanKind.SERVER,
        attributes=attributes,
    ) as span:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _set_http_status(span, exc.status)
            raise
        _set_http_status(span, response.status)
        return response


def _set_http_status(span: trace.Span, status: int) -> None:
    span.set_attribute(names.HTTP_RESPONSE_STATUS_CODE, status)
    if status >= 500:
        span.set_attribute(names.ERROR_TYPE, str(status))
        span.set_status(trace.StatusCode.ERROR)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _error(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


async def _read_command(request: web.Request) -> str | web.Response:
    try:
        body = json.loads(await read_body(request, time_limit=request.app[_SERVICE].body_timeout))
    except BodyRefused as exc:
        return _error(exc.status, exc.message)
    except (ValueError, RecursionError):
        return _error(400, 'body must be JSON: {"command": "..."}')
    command = body.get("command") if isinstance(body, dict) else None
    if not isinstance(command, str):
        return _error(400, 'body must be JSON: {"command": "..."}')
    return command


async def _exec(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    if not bearer_matches(request.headers, service.token):
        return _error(401, "missing or invalid bearer token")
    command = await _read_command(request)
    if isinstance(command, web.Response):
        return command
    decision = service.policy.check(command)
    if isinstance(decision, Refused):
        return _refuse(decision, command)
    if service.slots.locked():
        return _error(429, "too many commands running; try again shortly")
    async with service.slots:
        result = await _run(service, decision, request.remote)
    if result.timed_out:
        return web.json_response({**result.to_json(), "timeout_s": decision.timeout}, status=504)
    return web.json_response(result.to_json())


def _refuse(refused: Refused, command: str) -> web.Response:
    trace.get_current_span().set_attribute(names.SEL_EXEC_REFUSAL, refused.reason)
    logger.warning(
        "refused (%s): %.200r%s",
        refused.reason,
        span_content(command, 200),
        f" ({refused.detail})" if refused.detail else "",
    )
    if refused.status == 403:  # a 400 line may be unprintable or very long: not echoed
        return _error(403, refused.message, reason=refused.reason, command=command)
    return _error(refused.status, refused.message, reason=refused.reason)


async def _run(service: _Service, approved: Approved, remote: str | None) -> ExecResult:
    program = approved.argv[0]
    args = tuple(scrub_argv(approved.argv))
    # The audit record of every command, whether or not its trace is sampled and exported.
    logger.info(
        "exec %.*r timeout=%gs from %s trace_id=%s",
        _MAX_LOGGED_ARGV,
        args,
        approved.timeout,
        remote,
        format(trace.get_current_span().get_span_context().trace_id, "032x"),
    )
    attributes: dict[str, AttributeValue] = {
        names.PROCESS_COMMAND: program,
        names.PROCESS_COMMAND_ARGS: args,
        names.SEL_EXEC_TIMEOUT_S: approved.timeout,
    }
    with service.tracer.start_as_current_span(
        f"{names.EXEC} {program}", kind=trace.SpanKind.INTERNAL, attributes=attributes
    ) as span:
        result = await service.runner.run(approved.argv, time_limit=approved.timeout)
        span.set_attributes(
            {
                names.PROCESS_EXIT_CODE: result.exit_code,
                names.SEL_EXEC_DURATION_MS: result.duration_ms,
                names.SEL_EXEC_TRUNCATED: result.truncated,
                names.SEL_EXEC_TIMED_OUT: result.timed_out,
            }
        )
        if result.timed_out:
            span.set_attribute(names.ERROR_TYPE, names.ERROR_TIMEOUT)
            span.set_status(trace.StatusCode.ERROR, f"timed out after {approved.timeout:g}s")
    logger.info(
        "exec %s exit=%d %.1fms%s%s",
        program,
        result.exit_code,
        result.duration_ms,
        " truncated" if result.truncated else "",
        " timed out" if result.timed_out else "",
    )
    return result
