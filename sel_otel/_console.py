"""The console frontend: one request per line from standard input, one reply each."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
from collections.abc import AsyncIterator
from typing import TextIO

from ._commands import CommandHandler

logger = logging.getLogger(__name__)

_READ_AHEAD = 64


async def _lines(stdin: TextIO) -> AsyncIterator[str]:
    """Lines of `stdin`, read by a daemon thread so that a pending read never blocks exit.

    The thread reads at most `_READ_AHEAD` lines ahead of the console, so a fast producer
    (a large file, `yes`) cannot fill memory.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    room = threading.BoundedSemaphore(_READ_AHEAD)

    def read() -> None:
        line = "\n"
        while line:
            room.acquire()
            try:
                line = stdin.readline()
            except (OSError, ValueError) as exc:  # a closed or failing stream: end of input
                logger.error("reading standard input failed: %s", exc)
                line = ""
            try:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            except RuntimeError:  # the loop is closed: the console has ended
                return

    threading.Thread(target=read, name="sel-console-stdin", daemon=True).start()
    while line := await queue.get():
        room.release()
        yield line


async def run_console(
    commands: CommandHandler, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> int:
    """Answer each line of `stdin` until end of input; return how many requests failed.

    Bytes that are not text in the stream's encoding are read as U+FFFD, never as an error.
    """
    if isinstance(stdin, io.TextIOWrapper):
        stdin.reconfigure(errors="replace")
    interactive = stdin.isatty()
    failures = 0

    def prompt() -> None:
        if interactive:
            stdout.write("sel> ")
            stdout.flush()

    prompt()
    async for line in _lines(stdin):
        if line.strip():
            reply = await commands.handle(line, user="console", frontend="console")
            failures += not reply.ok
            stdout.write(reply.text + "\n")
        prompt()
    return failures
