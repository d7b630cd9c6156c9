"""The console frontend: one request per line from standard input, one reply each."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from ._commands import CommandHandler


async def run_console(
    commands: CommandHandler, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> int:
    """Answer each line of `stdin` until end of input; return how many requests failed."""
    interactive = stdin.isatty()
    loop = asyncio.get_running_loop()
    failures = 0
    while True:
        if interactive:
            stdout.write("sel> ")
            stdout.flush()
        line = await loop.run_in_executor(None, stdin.readline)
        if not line:
            return failures
        if not line.strip():
            continue
        reply = await commands.handle(line, user="console", frontend="console")
        failures += not reply.ok
        stdout.write(reply.text + "\n")
        stdout.flush()
