"""An async agent whose thread never returns: an exit must not wait for it."""

import asyncio
import time

DESCRIPTION = "awaits a thread that hangs"
TIMEOUT = 0.5


async def run(q: str) -> None:
    await asyncio.to_thread(time.sleep, 3600)
