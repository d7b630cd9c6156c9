"""`python -m tests.history_child`: one sel_otel process, assembled by `SelApp` from the
environment's settings, calling the `calc` agent without end and printing `N TIME` (the call's
number, then the time it answered) after each call: for tests that kill it mid-flight."""

from __future__ import annotations

import asyncio
import itertools
import time

from sel_otel import SelApp, Settings, Telemetry
from sel_otel._commands import RunAgent


async def main() -> None:
    async with SelApp(Settings.from_env(), Telemetry.from_env()) as app:
        for n in itertools.count():
            reply = await app.commands.execute(RunAgent("calc", f"{n}+1"), "child", "cli")
            assert reply.ok, reply.text
            print(n, time.time(), flush=True)
            await asyncio.sleep(0.002)  # a steady pace, not a flood of entries


if __name__ == "__main__":
    asyncio.run(main())
