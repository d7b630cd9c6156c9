"""`sel-otel serve`: the runtime behind a small HTTP endpoint, headless (for load tests and
scripts; the instances of `sel-otel loadtest --cache docker` run it).

```
POST /request  {"text": "agent:calc 1+1", "user": "u1"}
           ──► {"ok": true, "text": "...", "cached": false, "coalesced": false,
                "error_type": null}
GET  /health   200 once the agents are loaded
```

A request is answered as the console answers a line (`CommandHandler.handle`, in a root span
`serve {request}`), but for what the bot keeps for its owners: a privileged agent (host_exec),
`/sel_agent_reload` and `/sel_agent_history` need `Authorization: Bearer <SEL_SERVE_TOKEN>`
(compared in constant time), and are refused (403) to everyone when no token is set. A body
must be `application/json`, which a browser does not send to another origin unasked. Ordinary
agents, the stats and the agent list need nothing: it listens on 127.0.0.1 unless told
otherwise, and belongs on loopback or a private network only.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from opentelemetry.trace import INVALID_SPAN

from ._app import SelApp
from ._bearer import bearer_matches
from ._commands import (
    AgentReply,
    CommandHandler,
    ReloadAgents,
    Request,
    RunAgent,
    ShowHistory,
    parse_request,
)
from ._exceptions import NotPermitted
from ._settings import Settings
from ._telemetry import Telemetry

FRONTEND = "serve"
#: The largest request body, in bytes.
MAX_BODY = 64 * 1024

_COMMANDS = web.AppKey("commands", CommandHandler)
_TOKEN = web.AppKey("token", bytes)


def create_app(commands: CommandHandler, token: str = "") -> web.Application:
    """The HTTP application answering requests with `commands`; what only owners may do
    needs `token` (none when empty)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[_COMMANDS] = commands
    app[_TOKEN] = token.encode()
    app.router.add_post("/request", _request)
    app.router.add_get("/health", _health)
    return app


async def _request(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="expected Content-Type: application/json")
    try:
        body: Any = await request.json()
    except json.JSONDecodeError:
        raise web.HTTPBadRequest(text="expected a JSON object") from None
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise web.HTTPBadRequest(text='expected {"text": "...", "user": "..."}')
    commands = request.app[_COMMANDS]
    user = None if body.get("user") is None else str(body["user"])
    asked = parse_request(body["text"])
    token = request.app[_TOKEN]
    if _owners_only(commands, asked) and not bearer_matches(request.headers, token):
        if isinstance(asked, RunAgent):
            reason = NotPermitted.outcome
            commands.record_refusal(asked.agent, asked.query, user, FRONTEND, reason, INVALID_SPAN)
        return web.json_response(
            {
                "ok": False,
                "text": "🔒 This needs the serve token (Authorization: Bearer SEL_SERVE_TOKEN).",
                "cached": False,
                "coalesced": False,
                "error_type": NotPermitted.outcome,
            },
            status=403,
        )
    reply = await commands.execute(asked, user, FRONTEND)
    result = reply.result if isinstance(reply, AgentReply) else None
    error = result.error if result is not None else None
    return web.json_response(
        {
            "ok": reply.ok,
            "text": reply.text,
            "cached": bool(result and result.cached),
            "coalesced": bool(result and result.coalesced),
            "error_type": error.error_type if error is not None else None,
        }
    )


def _owners_only(commands: CommandHandler, request: Request) -> bool:
    """Whether `request` is what the bot keeps for its owners (and allowed users): a
    privileged agent, a reload, anyone's history (the `user` of a request is its own say)."""
    if isinstance(request, RunAgent):
        agent = commands.agent(request.agent)
        return agent is not None and agent.privileged
    return isinstance(request, (ReloadAgents, ShowHistory))


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(settings: Settings, telemetry: Telemetry, host: str, port: int) -> int:
    """Answer requests on `host`:`port` until cancelled (SIGTERM, SIGINT)."""
    async with SelApp(settings, telemetry) as app:
        runner = web.AppRunner(create_app(app.commands, settings.serve_token), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
    return 0
