"""The host-exec service imports only what it runs: no cache, Redis, Discord or bot code."""

from __future__ import annotations

import json
import subprocess
import sys

_BOT_SIDE = ("redis", "aiocache", "discord", "httpx", "sel_otel._cache", "sel_otel._runtime")


def _modules_loaded_by(statement: str) -> list[str]:
    script = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_service_loads_no_cache_redis_or_discord_module() -> None:
    loaded = _modules_loaded_by("import sel_otel.hostexec")
    bot_side = [
        name for name in loaded if any(name == p or name.startswith(f"{p}.") for p in _BOT_SIDE)
    ]
    assert bot_side == []


def test_the_public_api_is_still_there_when_asked_for() -> None:
    loaded = _modules_loaded_by("import sel_otel.hostexec, sel_otel\nsel_otel.AgentRuntime")
    assert "sel_otel._runtime" in loaded
