"""`sel-otel serve`: the runtime behind a small HTTP endpoint, headless (for load tests and
scripts; the instances of `sel-otel loadtest --cache docker` run it).

```
POST /request  {"text": "agent:calc 1+1", "user": "u1"}
           ──► {"ok": true, "text": "...", "cached": false, "coalesced": false,
                "error_type": null}
GET  /health   200 once the agents are loaded
```

A request is answered as the console answers a line (`CommandHandler.handle`, in a root span
`serve {request}`). There is no authentication: it listens on 127.0.0.1 unless told
otherwise, and belongs on loopback or a private network only.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from ._app import SelApp
from ._commands import AgentReply, CommandHandler
from ._settings import Settings
from ._telemetry import Telemetry

FRONTEND = "serve"
#: The largest request body, in bytes.
MAX_BODY = 64 * 1024

_COMMANDS = web.AppKey("commands", CommandHandler)


def create_app(commands: CommandHandler) -> web.Application:
    """The HTTP application answering requests with `commands`."""
    app = web.Application(client_max_size=MAX_BODY)
    app[_COMMANDS] = commands
    app.router.add_post("/request", _request)
    app.router.add_get("/health", _health)
    return app


async def _request(request: web.Request) -> web.Response:
    try:
        body: Any = await request.json()
    except json.JSONDecodeError:
        raise web.HTTPBadRequest(text="expected a JSON object") from None
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise web.HTTPBadRequest(text='expected {"text": "...", "user": "..."}')
    user = body.get("user")
    reply = await request.app[_COMMANDS].handle(
        body["text"], str(user) if user is not None else None, FRONTEND
    )
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


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(settings: Settings, telemetry: Telemetry, host: str, port: int) -> int:
    """Answer requests on `host`:`port` until cancelled (SIGTERM, SIGINT)."""
    async with SelApp(settings, telemetry) as app:
        runner = web.AppRunner(create_app(app.commands), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
    return 0
