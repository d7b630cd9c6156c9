"""Run an allow-listed system command on the host through the host-exec service.

Its configuration comes from the runtime through `setup(context)`: the service's URL
(`HOST_EXEC_URL`) and its token, `HOST_EXEC_TOKEN` or the file named by `HOST_EXEC_TOKEN_FILE`
(read at each call, so that a rotated token is used at once), all read by the runtime's
settings. Requests go through the runtime's httpx client, traced by the OpenTelemetry httpx
instrumentation, so the HTTP call is a child of the agent span and carries `traceparent` to
the service.
"""

from __future__ import annotations

import asyncio
import re

import httpx

from sel_otel import AgentContext, AgentReplyError, code_span, first_word

DESCRIPTION = (
    "Run an allow-listed system command on the host, e.g. `uname -a`, `fastfetch`, `df -h`"
)
PRIVILEGED = True
CACHE_TTL = 60
CACHE_TTL_BY_INPUT = {
    "uname -a": 3600,
    "uname -r": 3600,
    "uname -m": 3600,
    "nproc": 3600,
    "cat /etc/os-release": 3600,
    "fastfetch": 300,
    "df -h": 300,
    "lsblk": 300,
    "ps aux": 60,
    "free -h": 30,
    "uptime": 10,
    "date": 0,
    # Files and the network change under us: never cached.
    **dict.fromkeys(("cat", "ls", "tail", "du", "find", "grep", "ip", "ss", "ping"), 0),
}
INVALIDATED_BY = {"cp", "mv", "rm", "dd", "touch", "mkdir", "rmdir", "ln", "chmod", "chown", "tee"}
#: Two attempts of the slowest client timeout, plus back-off.
TIMEOUT = 75

SLOW_COMMANDS = {"find", "grep", "du"}
SLOW_TIMEOUT, DEFAULT_TIMEOUT = 30.0, 15.0
#: The service answers a command timeout itself; the client waits a little longer for it.
RESPONSE_MARGIN = 5.0
ATTEMPTS = 2
RETRY_DELAY = 0.2
#: Discord's message limit, less room for the header and code fences.
MAX_REPLY = 2000

#: A backtick followed by another: a zero-width space goes between them, so no run of three
#: (a code fence) survives in command output.
_BACKTICK_RUN = re.compile(r"`(?=`)")

#: Tabs and line breaks, which a pasted command may hold: spaces to the service's parser.
_LINE_BREAKS = re.compile(r"[\t\n\r\v\f]")

#: What the runtime handed this agent (`setup`); None until then.
_context: AgentContext | None = None
_HEADERS = {"User-Agent": "sel-otel host_exec"}


class HostExecAuthFailed(AgentReplyError):
    pass


class CommandBlocked(AgentReplyError):
    pass


class CommandTimedOut(AgentReplyError):
    pass


class HostExecBusy(AgentReplyError):
    pass


class HostExecUnavailable(AgentReplyError):
    pass


async def setup(context: AgentContext) -> None:
    """Keep the runtime's settings and httpx client for the calls to come."""
    global _context
    _context = context


def _token(context: AgentContext) -> str:
    """HOST_EXEC_TOKEN, else the content of HOST_EXEC_TOKEN_FILE, read at each call so that a
    rotated token is used at once (a small read beside a network round trip)."""
    settings = context.settings
    path = settings.host_exec_token_file
    if path is None:
        return settings.host_exec_token
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise HostExecAuthFailed(
            f"❌ Host exec token file cannot be read (HOST_EXEC_TOKEN_FILE): {reason}"
        ) from exc


def _timeout_for(program: str) -> float:
    return (SLOW_TIMEOUT if program in SLOW_COMMANDS else DEFAULT_TIMEOUT) + RESPONSE_MARGIN


async def _post(command: str) -> httpx.Response:
    context = _context
    url = context.settings.host_exec_url.rstrip("/") if context is not None else ""
    if context is None or not url:
        raise HostExecUnavailable("❌ Host exec is not configured (set HOST_EXEC_URL)")
    token = _token(context)
    program = first_word(command)
    timeout = _timeout_for(program)
    mutating = program in INVALIDATED_BY
    last_error: Exception | None = None
    for attempt in range(ATTEMPTS):
        try:
            return await context.http.post(
                f"{url}/exec",
                json={"command": command},
                headers={**_HEADERS, "Authorization": f"Bearer {token}"},
                timeout=httpx.Timeout(timeout, connect=3.0),
            )
        except httpx.ReadTimeout as exc:
            # The service may still be running it: another attempt would run it twice.
            raise CommandTimedOut(
                f"❌ No answer from the host-exec service within {timeout:g}s: {code_span(command)}"
            ) from exc
        except httpx.TransportError as exc:
            # A command that changes the system is sent again only if it never got there.
            if mutating and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                raise HostExecUnavailable(
                    f"❌ Host exec connection lost during {code_span(command)} "
                    f"({type(exc).__name__}); it may have run"
                ) from exc
            last_error = exc
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(RETRY_DELAY)
    raise HostExecUnavailable(
        f"❌ Host exec service unreachable at {url} after {ATTEMPTS} attempts "
        f"({type(last_error).__name__})"
    )


def _code_block(text: str, room: int) -> tuple[str, bool]:
    text = _BACKTICK_RUN.sub("`\u200b", text)  # no fence inside the output may close ours
    if len(text) <= room:
        return text, False
    return text[: max(room, 0)], True


def _format(command: str, body: dict[str, object]) -> str:
    exit_code = body.get("exit_code")
    mark = "✅" if exit_code == 0 else "⚠️"
    header = f"{mark} {code_span(command)} (exit code: {exit_code})"
    stdout, stderr = str(body.get("stdout") or ""), str(body.get("stderr") or "")
    notes = ["output capped by the host-exec service"] if body.get("truncated") else []
    output = stdout if stdout.strip() else stderr
    budget = MAX_REPLY - len(header) - 120
    shown, cut = _code_block(output.rstrip("\n"), budget)
    if cut:
        notes.append(f"showing {len(shown):,} of {len(output):,} characters")
    parts = [header]
    if shown:
        parts.append(f"```\n{shown}\n```")
    if notes:
        parts.append(f"_({'; '.join(notes)})_")
    return "\n".join(parts)


async def run(query: str) -> str:
    command = _LINE_BREAKS.sub(" ", query).strip()
    if not command:
        raise AgentReplyError("⚠️ Give a command, e.g. `uname -a`")
    response = await _post(command)
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    status = response.status_code
    if status == 200:
        return _format(command, body)
    if status == 401:
        raise HostExecAuthFailed("❌ Host exec authentication failed (check HOST_EXEC_TOKEN)")
    if status == 403:
        raise CommandBlocked(f"⚠️ Command blocked by the allow-list: {code_span(command)}")
    if status == 400:
        raise CommandBlocked(f"⚠️ Command refused: {body.get('error', 'invalid command')}")
    if status == 504:
        limit = body.get("timeout_s", _timeout_for(first_word(command)) - RESPONSE_MARGIN)
        raise CommandTimedOut(f"❌ Command timed out after {limit:g}s: {code_span(command)}")
    if status == 429:
        raise HostExecBusy("⏳ Host exec is busy running other commands; try again shortly")
    raise HostExecUnavailable(f"❌ Host exec service error (HTTP {status})")
