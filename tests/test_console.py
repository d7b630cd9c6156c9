"""The console's standard-input reader: bounded read-ahead, end of input."""

from __future__ import annotations

import asyncio
import io

from sel_otel._console import _READ_AHEAD, _lines


class CountingInput(io.StringIO):
    """A text stream that counts the lines read from it."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lines_read = 0

    # Typeshed gives StringIO two readlines (_IOBase's returns bytes): this is the text one.
    def readline(self, size: int = -1) -> str:  # type: ignore[override]
        line = super().readline(size)
        self.lines_read += bool(line)
        return line


async def test_the_reader_stays_a_bounded_number_of_lines_ahead() -> None:
    stdin = CountingInput("agent:calc 1+1\n" * 10_000)
    lines = _lines(stdin)
    consumed = 0
    async for _ in lines:
        consumed += 1
        if consumed == 10:
            break
    await asyncio.sleep(0.2)  # give the reader thread every chance to run ahead
    assert consumed == 10
    assert stdin.lines_read <= consumed + _READ_AHEAD + 1
    await lines.aclose()


async def test_all_lines_arrive_then_the_input_ends() -> None:
    stdin = CountingInput("".join(f"line {i}\n" for i in range(300)))
    received = [line async for line in _lines(stdin)]
    assert received == [f"line {i}\n" for i in range(300)]
