"""The service process: its launcher, its entry point's telemetry and its public names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sel_otel.hostexec
from sel_otel._exceptions import ConfigError
from sel_otel.hostexec._local import LocalHostExec


def test_exported_members_are_exactly_all() -> None:
    public = {
        name
        for name in dir(sel_otel.hostexec)
        if not name.startswith("_") and name != "annotations"  # the __future__ import
    }
    assert public == set(sel_otel.hostexec.__all__)
    assert sel_otel.hostexec.__all__ == sorted(sel_otel.hostexec.__all__)


async def test_launcher_reports_a_service_that_cannot_start(tmp_path: Path) -> None:
    bad = tmp_path / "list.json"
    bad.write_text(json.dumps({"commands": [{"argv": ["ls", "<nope>"]}]}))
    launcher = LocalHostExec(allowlist=bad, startup_timeout=30)
    with pytest.raises(ConfigError, match="unknown placeholder") as caught:
        await launcher.__aenter__()
    assert "exited with status 2" in str(caught.value)
    with pytest.raises(RuntimeError, match="not running"):
        _ = launcher.pid


async def test_launcher_stops_the_service_on_exit() -> None:
    async with LocalHostExec() as service:
        pid = service.pid
        log_dir = service.log_path.parent
        assert _state(pid) not in (None, "Z")
    assert _state(pid) in (None, "Z")
    assert not _exists(log_dir)


def _state(pid: int) -> str | None:
    """The process's state letter, None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


def _exists(path: Path) -> bool:
    return path.exists()
