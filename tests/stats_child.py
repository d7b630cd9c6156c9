"""`python -m tests.stats_child`: one sel_otel process, assembled by `SelApp` from the
environment's settings, answering JSON commands read one a line on standard input with one
JSON line on standard output:

    {"op": "run", "agent": A, "queries": [...]}   the calls, one after the other
    {"op": "stats", "scope": S}                    `/sel_agent_stats scope:S`, as JSON
    {"op": "quit"}                                 leave the app (the last stats are published)
"""

from __future__ import annotations

import asyncio
import json
import sys

from sel_otel import SelApp, Settings, Telemetry
from sel_otel._commands import ShowStats, StatsReply
from sel_otel._stats_cli import report_json


async def main() -> None:
    loop = asyncio.get_running_loop()
    telemetry = Telemetry.from_env()
    async with SelApp(Settings.from_env(), telemetry) as app:
        print(json.dumps({"ready": app.stats.instance}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            if command["op"] == "quit":
                break
            if command["op"] == "run":
                for query in command["queries"]:
                    await app.runtime.run(command["agent"], query)
                print(json.dumps({"done": len(command["queries"])}), flush=True)
            else:
                reply = await app.commands.execute(ShowStats(None, command["scope"]))
                assert isinstance(reply, StatsReply), reply.text
                print(json.dumps(report_json(reply.stats) | {"text": reply.text}), flush=True)
    telemetry.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
