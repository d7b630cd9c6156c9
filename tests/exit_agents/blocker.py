"""An async agent that holds the event loop (it touches the file its input names first, so
that a caller knows it runs)."""

import pathlib
import time

DESCRIPTION = "holds the event loop"
TIMEOUT = 3600


async def run(q: str) -> None:
    pathlib.Path(q).touch()
    time.sleep(3600)
