"""The console as a person meets it: on a terminal (a pseudo-terminal here) and from a pipe."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .conftest import CLI, cli_environment

#: Run the console with the pseudo-terminal on its standard streams as its controlling
#: terminal, as a shell would, so that Ctrl-C typed there interrupts it.
_ON_TERMINAL = (
    "import os, sys; os.login_tty(0); "
    f"os.execv(sys.executable, {[sys.executable, *CLI[1:], 'console']!r})"
)
#: Control sequences a line editor may write (cursor moves, bracketed paste on and off).
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|[\x07\x08]")
_DEADLINE = 60.0


class Terminal:
    """A `sel-otel console` on a pseudo-terminal: type keys, read what the screen shows."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        # No embedded host-exec service: an address is given (and never called).
        env = cli_environment(HOST_EXEC_URL="http://127.0.0.1:9", TERM="xterm")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ON_TERMINAL],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
        )
        self.modes = termios.tcgetattr(self.slave)
        self.shown = ""

    def text(self) -> str:
        """What was shown, without the line editor's control sequences and carriage returns."""
        return _CONTROL.sub("", self.shown).replace("\r", "")

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            self.shown += os.read(self.master, 65536).decode(errors="replace")

    def wait_for(self, condition: Callable[[str], bool], what: str) -> None:
        deadline = time.monotonic() + _DEADLINE
        while not condition(self.text()):
            assert time.monotonic() < deadline, f"{what} never came; shown: {self.text()!r}"
            self._read(0.1)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def exit_status(self) -> int:
        deadline = time.monotonic() + _DEADLINE
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"the console never ended: {self.text()!r}"
            self._read(0.1)
        self._read(0)  # what it wrote last
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    console = Terminal()
    yield console
    console.close()


def _prompts(text: str) -> int:
    return text.count("sel> ")


def _sane(modes: list[Any]) -> tuple[bool, bool]:
    """Whether the terminal echoes what is typed, and hands it over a line at a time."""
    local = modes[3]
    return bool(local & termios.ECHO), bool(local & termios.ICANON)


def test_on_a_terminal_a_first_line_names_help_then_each_request_gets_a_prompt(
    terminal: Terminal,
) -> None:
    terminal.wait_for(lambda text: _prompts(text) == 1, "the prompt")
    first, rest = terminal.text().split("\n", 1)
    assert "help" in first and "sel> " not in first
    assert rest.startswith("sel> ")
    terminal.type("agent:calc 1+1\r")
    terminal.wait_for(lambda text: _prompts(text) == 2, "the second prompt")
    assert "\n1+1 = 2\nsel> " in terminal.text()
    terminal.type("help\r")
    terminal.wait_for(lambda text: _prompts(text) == 3, "the third prompt")
    assert "agent:NAME INPUT" in terminal.text()


def test_ctrl_d_ends_the_console_on_a_fresh_line(terminal: Terminal) -> None:
    terminal.wait_for(lambda text: _prompts(text) == 1, "the prompt")
    terminal.type("agent:calc 2+2\r")
    terminal.wait_for(lambda text: _prompts(text) == 2, "the second prompt")
    terminal.type("\x04")
    assert terminal.exit_status() == 0
    assert terminal.text().endswith("sel> \n")
    assert _sane(termios.tcgetattr(terminal.slave)) == _sane(terminal.modes) == (True, True)


def test_ctrl_c_interrupts_the_console_on_a_fresh_line_with_the_terminal_as_it_was(
    terminal: Terminal,
) -> None:
    terminal.wait_for(lambda text: _prompts(text) == 1, "the prompt")
    terminal.type("agent:calc 3+")  # half typed
    terminal.wait_for(lambda text: text.endswith("3+"), "the typed text")
    terminal.type("\x03")
    assert terminal.exit_status() == 128 + signal.SIGINT
    assert re.search(r"sel> agent:calc 3\+(\^C)?\n$", terminal.text())
    assert _sane(termios.tcgetattr(terminal.slave)) == _sane(terminal.modes) == (True, True)


def test_lines_are_edited_and_recalled_with_readline(terminal: Terminal) -> None:
    pytest.importorskip("readline", reason="Python is built without readline")
    terminal.wait_for(lambda text: _prompts(text) == 1, "the prompt")
    terminal.type("5*5\x01agent:calc \r")  # Ctrl-A: to the start of the line
    terminal.wait_for(lambda text: _prompts(text) == 2, "the second prompt")
    terminal.type("\x1b[A\x7f6\r")  # up: the previous line, edited to agent:calc 5*6
    terminal.wait_for(lambda text: _prompts(text) == 3, "the third prompt")
    replies = [line for line in terminal.text().splitlines() if " = " in line]
    assert replies == ["`5*5` = 25", "`5*6` = 30"], terminal.text()


def test_from_a_pipe_only_the_replies_are_written() -> None:
    done = subprocess.run(
        [*CLI, "console"],
        input="agent:calc 1+1\n",
        capture_output=True,
        text=True,
        env=cli_environment(HOST_EXEC_URL="http://127.0.0.1:9"),
        timeout=60,
        check=False,
    )
    assert (done.stdout, done.returncode) == ("1+1 = 2\n", 0), done.stderr
