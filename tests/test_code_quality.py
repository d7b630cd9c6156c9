"""The code passes the project's own checks: ruff (lint and format) over the whole project, and
mypy strict over everything it ships and runs (the set `[tool.mypy] files` names in pyproject.toml,
which a plain `mypy` checks too)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Inside the checkout, ignored by git: each checkout keeps its own incremental cache.
MYPY_CACHE = ROOT / ".mypy_cache"


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_ruff_finds_nothing() -> None:
    done = run("ruff", "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_code_is_formatted() -> None:
    done = run("ruff", "format", "--check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_passes_on_everything_shipped_and_run() -> None:
    done = run("mypy", "--cache-dir", str(MYPY_CACHE))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_plain_mypy_checks_everything_shipped_and_run() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert config["strict"] is True
    assert sorted(config["files"]) == ["agents", "bench", "sel_otel", "tests"]
