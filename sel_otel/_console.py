"""The console frontend: one request per line from standard input, one reply each.

From a pipe it prints the replies alone. On a terminal it first names `help`, prompts before
each request, edits lines and keeps their history with readline (where Python has it), and
leaves the terminal as it found it, on a fresh line, whether input ends (Ctrl-D) or the
console is interrupted (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import TextIO

from ._commands import CommandHandler
from ._markup import printable

logger = logging.getLogger(__name__)

PROMPT = "sel> "
HINT = "sel-otel console: type help for the requests, Ctrl-D to quit"

_READ_AHEAD = 64


async def _lines(
    stdin: TextIO, read_ahead: int = _READ_AHEAD, read: Callable[[], str] | None = None
) -> AsyncGenerator[str, None]:
    """Lines of `stdin`, read by a daemon thread so that a pending read never blocks exit.

    The thread reads with `read` (`stdin.readline` by default; "" is the end of input) and
    holds at most `read_ahead` lines the console has not answered yet, so a fast producer (a
    large file, `yes`) cannot fill memory. With 1 it reads a line once the previous one is
    answered, so a prompt comes after the reply.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    room = threading.BoundedSemaphore(read_ahead)
    read = read or stdin.readline

    def reader() -> None:
        line = "\n"
        while line:
            room.acquire()
            try:
                line = read()
            except (OSError, ValueError) as exc:  # a closed or failing stream: end of input
                logger.error("reading standard input failed: %s", exc)
                line = ""
            try:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            except RuntimeError:  # the loop is closed: the console has ended
                return

    threading.Thread(target=reader, name="sel-console-stdin", daemon=True).start()
    while line := await queue.get():
        yield line
        room.release()  # the line is answered


def _prompted_reader(stdin: TextIO, stdout: TextIO) -> Callable[[], str]:
    """Read a line after the prompt: with readline's line editing and history when the
    streams are the process's own (`input` uses readline once it is imported)."""
    if stdin is not sys.stdin or stdout is not sys.stdout:

        def read_plain() -> str:
            stdout.write(PROMPT)
            stdout.flush()
            return stdin.readline()

        return read_plain

    with contextlib.suppress(ImportError):  # Python built without it: no line editing
        import readline  # noqa: F401

    def read() -> str:
        try:
            return input(PROMPT) + "\n"
        except EOFError:
            return ""

    return read


@contextlib.contextmanager
def _terminal_kept(stream: TextIO) -> Iterator[None]:
    """Put the terminal's modes back on the way out: readline turns echo and line buffering
    off while it reads, and a read cut short by Ctrl-C would leave them off."""
    try:
        import termios
    except ImportError:  # not a POSIX system
        yield
        return
    try:
        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError):  # not a terminal after all
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _answer(commands: CommandHandler, lines: AsyncIterator[str], stdout: TextIO) -> int:
    failures = 0
    async for line in lines:
        if line.strip():
            reply = await commands.handle(line, user="console", frontend="console")
            failures += not reply.ok
            stdout.write(printable(reply.text) + "\n")  # no escape sequence reaches a terminal
    return failures


async def run_console(
    commands: CommandHandler, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> int:
    """Answer each line of `stdin` until end of input; return how many requests failed.

    Bytes that are not text in the stream's encoding are read as U+FFFD, never as an error.
    """
    if isinstance(stdin, io.TextIOWrapper):
        stdin.reconfigure(errors="replace")
    if not stdin.isatty():
        return await _answer(commands, _lines(stdin), stdout)
    stdout.write(HINT + "\n")
    with _terminal_kept(stdin):
        try:
            lines = _lines(stdin, read_ahead=1, read=_prompted_reader(stdin, stdout))
            return await _answer(commands, lines, stdout)
        finally:  # at end of input, or cancelled by Ctrl-C: the cursor is after the prompt
            stdout.write("\n")
            stdout.flush()
