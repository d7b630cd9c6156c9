"""What Linux's /proc says of a process: its state letter, and whether a signal waits for it."""

from __future__ import annotations

from pathlib import Path


def state(pid: int) -> str | None:
    """The process's state letter (`R`, `S`, `T` when stopped, `Z` a zombie...), None when it
    is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie: an orphan's reaper may take its time."""
    return state(pid) not in (None, "Z")


def signal_pending(pid: int, signum: int) -> bool:
    """Whether `signum` waits to be delivered to `pid` (a stopped process, say)."""
    bit = 1 << (signum - 1)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, mask = line.partition(":")
        if name in ("SigPnd", "ShdPnd") and int(mask, 16) & bit:
            return True
    return False
