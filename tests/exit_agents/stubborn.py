"""An async agent that swallows every cancellation (it touches the file its input names
first, so that a caller knows it runs)."""

import asyncio
import contextlib
import pathlib
from typing import NoReturn

DESCRIPTION = "swallows its cancellation"
TIMEOUT = 3600


async def run(q: str) -> NoReturn:
    pathlib.Path(q).touch()
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
