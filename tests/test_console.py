"""The console's standard-input reader: bounded read-ahead, end of input."""

from __future__ import annotations

import io
import sys
import threading

from sel_otel._console import _READ_AHEAD, _lines

from .waiting import wait_until


class CountingInput(io.StringIO):
    """A text stream that counts the lines read from it, and knows the thread reading it."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lines_read = 0
        self.reader: threading.Thread | None = None

    # Typeshed gives StringIO two readlines (_IOBase's returns bytes): this is the text one.
    def readline(self, size: int = -1) -> str:  # type: ignore[override]
        self.reader = threading.current_thread()
        line = super().readline(size)
        self.lines_read += bool(line)
        return line


def _blocked_on_a_semaphore(thread: threading.Thread | None) -> bool:
    """True while `thread` waits in `threading.Semaphore.acquire` (under `Condition.wait`)."""
    frame = sys._current_frames().get(thread.ident) if thread and thread.ident else None
    if frame is None or frame.f_back is None:
        return False
    return (frame.f_code.co_name, frame.f_back.f_code.co_name) == ("wait", "acquire")


async def test_the_reader_stays_a_bounded_number_of_lines_ahead() -> None:
    stdin = CountingInput("agent:calc 1+1\n" * 10_000)
    lines = _lines(stdin)
    consumed = 0
    async for _ in lines:
        consumed += 1
        if consumed == 10:
            break
    # The reader runs ahead until its read-ahead is full, then waits for room, for good:
    # a reader without a bound would read on, or end at the end of input.
    await wait_until(
        lambda: _blocked_on_a_semaphore(stdin.reader), "the reader to wait for room to read"
    )
    assert consumed == 10
    assert stdin.lines_read <= consumed + _READ_AHEAD + 1
    await lines.aclose()


async def test_all_lines_arrive_then_the_input_ends() -> None:
    stdin = CountingInput("".join(f"line {i}\n" for i in range(300)))
    received = [line async for line in _lines(stdin)]
    assert received == [f"line {i}\n" for i in range(300)]
