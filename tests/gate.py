"""Test helper: `python gate.py PATH` waits until the file PATH exists, then exits 0.

A command that holds its place (a concurrency slot, an agent call) for exactly as long as a
test wants: it adds a line to `PATH.waiting` once it runs, and the test creates PATH
(`tests.waiting.Gate.open`) to let it end, instead of guessing a sleep long enough.
Standalone: commands run with a bare environment.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    opened = Path(sys.argv[1])
    with opened.with_name(f"{opened.name}.waiting").open("a") as waiting:
        waiting.write(f"{os.getpid()}\n")
    while not opened.exists():
        time.sleep(0.01)
