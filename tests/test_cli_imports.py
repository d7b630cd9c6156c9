"""`sel-otel` imports what a command runs when it runs: help and the host-exec service start
without the runtime, the cache, Redis or Discord."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_NOT_AT_START = ("redis", "aiocache", "discord", "sel_otel._runtime", "sel_otel._cache")


@pytest.mark.parametrize("argv", [["--help"], ["host-exec", "--help"], ["loadtest", "--help"]])
def test_help_loads_no_runtime_cache_redis_or_discord_module(argv: list[str]) -> None:
    script = (
        "import contextlib, io, json, sys\n"
        "from sel_otel._cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    main({argv!r})\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(done.stdout.splitlines()[-1])
    found = [n for n in loaded if any(n == p or n.startswith(f"{p}.") for p in _NOT_AT_START)]
    assert found == []
