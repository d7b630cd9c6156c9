"""System information from the Python standard library: no network, no subprocess."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from sel_otel import AgentReplyError, code_span

DESCRIPTION = "Host summary: OS, kernel, CPUs, load, memory, disk and uptime (input: optional path)"
CACHE_TTL = 30


class UnreadablePath(AgentReplyError):
    """The disk usage of the path given as input cannot be read."""


def _meminfo() -> dict[str, int]:
    """Sizes in bytes from /proc/meminfo (empty where it does not exist)."""
    fields: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            number, _, unit = value.strip().partition(" ")
            fields[key] = int(number) * (1024 if unit == "kB" else 1)
    except (OSError, ValueError):
        return {}
    return fields


def _uptime() -> float | None:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _os_name(default: str) -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", default)
    except OSError:
        return default


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def run(query: str) -> str:
    path = query.strip() or "/"
    uname = platform.uname()
    lines = [
        f"Host: {uname.node}",
        f"OS: {_os_name(uname.system)}",
        f"Kernel: {uname.release} ({uname.machine})",
        f"Python: {platform.python_version()}",
        f"CPUs: {os.cpu_count()}",
    ]
    if hasattr(os, "getloadavg"):
        lines.append("Load: " + " ".join(f"{load:.2f}" for load in os.getloadavg()))
    memory = _meminfo()
    if "MemTotal" in memory:
        used = memory["MemTotal"] - memory.get("MemAvailable", memory.get("MemFree", 0))
        lines.append(f"Memory: {_size(used)} / {_size(memory['MemTotal'])}")
    try:
        disk = shutil.disk_usage(path)
    except OSError as exc:
        raise UnreadablePath(
            f"⚠️ Cannot read the disk usage of {code_span(path)}: {exc.strerror}"
        ) from None
    lines.append(f"Disk ({code_span(path)}): {_size(disk.used)} / {_size(disk.total)}")
    uptime = _uptime()
    if uptime is not None:
        minutes = int(uptime // 60)
        lines.append(f"Uptime: {minutes // 1440}d {minutes // 60 % 24}h {minutes % 60}m")
    return "\n".join(lines)
