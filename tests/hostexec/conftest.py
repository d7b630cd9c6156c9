"""Fixtures for the host-exec tests: allow-lists and services running as real processes."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from sel_otel.hostexec import AllowList, Policy
from sel_otel.hostexec._local import LocalHostExec
from tests.waiting import Gate

SPAWN_TREE = Path(__file__).with_name("spawn_tree.py")
ESCAPE_GROUP = Path(__file__).with_name("escape_group.py")
#: Timeout of the test entries that sleep past it.
SHORT_TIMEOUT_S = 1.0
MAX_CONCURRENCY = 2


def not_a_program(directory: Path) -> Path:
    """An executable file that is neither a binary nor a script: exec fails with ENOEXEC."""
    path = directory / "not-a-program"
    path.write_bytes(b"\x00\x01\x02 not a program\n")
    path.chmod(0o755)
    return path


def allowlist_gate(allowlist: Path) -> Gate:
    """The gate of the allow-list `write_allowlist` wrote to `allowlist`."""
    return Gate(allowlist.with_name("gate-open"))


def write_allowlist(path: Path, root: Path) -> Path:
    """A test allow-list next to `root`: harmless commands that help observe the service."""
    data = {
        "roots": [str(root)],
        "commands": [
            {"argv": ["uname", "-a"]},
            {"argv": ["env"]},  # prints the child's environment
            {"argv": ["ls", "-A"]},  # lists the child's working directory
            {"argv": ["sleep", "2"], "timeout": 10},
            {"argv": ["sleep", "30"], "timeout": SHORT_TIMEOUT_S},
            {"argv": [sys.executable, str(SPAWN_TREE)], "timeout": SHORT_TIMEOUT_S},
            {"argv": [sys.executable, str(ESCAPE_GROUP)], "timeout": SHORT_TIMEOUT_S},
            {"argv": [sys.executable, str(ESCAPE_GROUP), "exit"], "timeout": 10},
            {"argv": [str(not_a_program(path.parent))]},
            {"argv": ["yes"]},  # prints until it is killed
            {"argv": allowlist_gate(path).argv},  # runs until the test opens the gate
            {"argv": ["cat", "--", "<path>"]},
        ],
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trusted_dir() -> Iterator[Path]:
    """A directory the trusted-path rule accepts, for `<path>` roots.

    Not under /tmp: a world-writable directory (sticky or not) makes every path below it
    untrusted. The home directory is owned by the user running the tests (the service's
    user too) and writable by no one else.
    """
    try:
        path = Path(tempfile.mkdtemp(prefix=".sel-hostexec-test-", dir=Path.home()))
    except OSError as exc:
        pytest.skip(f"no trusted directory for path operands: {exc}")
    policy = Policy(AllowList.from_json({"roots": [str(path)], "commands": [{"argv": ["ls"]}]}))
    problems = policy.untrusted_roots()
    if problems:
        shutil.rmtree(path)
        pytest.skip(f"no trusted directory for path operands: {problems[0].message}")
    yield path
    shutil.rmtree(path)


@pytest.fixture
def trusted_tmp(trusted_dir: Path) -> Iterator[Path]:
    """A fresh, empty trusted directory for one test."""
    path = Path(tempfile.mkdtemp(dir=trusted_dir))
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def file_root(trusted_dir: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="root-", dir=trusted_dir))
    (root / "hello.txt").write_text("hello\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def test_allowlist(tmp_path_factory: pytest.TempPathFactory, file_root: Path) -> Path:
    return write_allowlist(tmp_path_factory.mktemp("allowlist") / "allowlist.json", file_root)


@pytest.fixture
def gate(test_allowlist: Path) -> Iterator[Gate]:
    """The test allow-list's gate, closed; opened at the end, so no command waits on."""
    gate = allowlist_gate(test_allowlist)
    gate.close()
    yield gate
    gate.open()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(test_allowlist: Path) -> AsyncIterator[LocalHostExec]:
    """A service with the test allow-list, as a real process on loopback."""
    settings = {"HOST_EXEC_MAX_CONCURRENCY": str(MAX_CONCURRENCY)}
    async with LocalHostExec(allowlist=test_allowlist, settings=settings) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def default_service() -> AsyncIterator[LocalHostExec]:
    """A service with the built-in allow-list, as a real process on loopback."""
    async with LocalHostExec() as running:
        yield running


async def post_exec(
    service: LocalHostExec,
    body: Any,
    *,
    token: str | None = "",
) -> httpx.Response:
    """POST /exec; `token=""` means the service's own token, None means no header."""
    token = service.token if token == "" else token
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=service.url, timeout=30.0) as client:
        if isinstance(body, bytes):
            return await client.post("/exec", content=body, headers=headers)
        return await client.post("/exec", json=body, headers=headers)
