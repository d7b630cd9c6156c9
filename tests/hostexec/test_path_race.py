"""The symlink-swap race on `<path>` operands, against the service as a real process.

A user who can write under a root swaps a directory for a symbolic link to a secret directory
and back, as fast as possible, while `cat` asks for a file below it: a check that only
resolves the path would now and then approve a path that `cat` then opens through the link.
The trusted-path rule refuses every path through a directory such a user could change, so
the secret is never read, whatever the timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from sel_otel.hostexec._local import LocalHostExec

from .conftest import post_exec

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "TOP-SECRET-never-to-be-read"
ATTEMPTS = 150
RACE_SECONDS = 20.0  # the racer stops by itself after this, whatever happens to the test

#: Swaps `d` (a real directory) for a symbolic link to the secret directory and back.
RACER = """
import os, sys, time
os.chdir(sys.argv[1])
secret, end = sys.argv[2], time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    os.symlink(secret, "link"); os.rename("d", "d_real"); os.rename("link", "d")
    os.remove("d"); os.rename("d_real", "d")
"""


@pytest.fixture(scope="module")
def race_tree(trusted_dir: Path) -> Path:
    """`race/root` (writable by everyone) holding `d/passwd`, and `race/secret/passwd`."""
    base = trusted_dir / "race"
    (base / "secret").mkdir(parents=True)
    (base / "secret" / "passwd").write_text(SECRET + "\n")
    (base / "root" / "d").mkdir(parents=True)
    (base / "root" / "d" / "passwd").write_text("decoy\n")
    (base / "root").chmod(0o777)  # any local user may rename entries in it
    (base / "allowlist.json").write_text(
        json.dumps({"roots": [str(base / "root")], "commands": [{"argv": ["cat", "--", "<path>"]}]})
    )
    return base


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def race_service(race_tree: Path) -> AsyncIterator[LocalHostExec]:
    async with LocalHostExec(allowlist=race_tree / "allowlist.json") as running:
        yield running


@pytest.fixture
def racer(race_tree: Path) -> Iterator[subprocess.Popen[bytes]]:
    root, secret = race_tree / "root", race_tree / "secret"
    process = subprocess.Popen(
        [sys.executable, "-c", RACER, str(root), str(secret), str(RACE_SECONDS)]
    )
    yield process
    process.kill()
    process.wait(timeout=10)
    link = race_tree / "root" / "d"
    if link.is_symlink():  # killed mid-swap: put the tree back
        link.unlink()
        (race_tree / "root" / "d_real").rename(link)


async def test_the_service_reports_the_untrusted_root_at_start(
    race_service: LocalHostExec, race_tree: Path
) -> None:
    root = race_tree / "root"
    assert f"every <path> under this root will be refused: {root} is writable by everyone" in (
        race_service.log_path.read_text()
    )


async def test_swapping_a_directory_for_a_symlink_never_reads_the_target(
    race_service: LocalHostExec, race_tree: Path, racer: subprocess.Popen[bytes]
) -> None:
    target = f"{race_tree}/root/d/passwd"
    reasons: dict[str, int] = {}
    started = time.monotonic()
    for _ in range(ATTEMPTS):
        response = await post_exec(race_service, {"command": f"cat -- {target}"})
        body = response.json()
        assert SECRET not in response.text
        reason = body.get("reason", f"HTTP {response.status_code}")
        reasons[reason] = reasons.get(reason, 0) + 1
        if time.monotonic() - started > RACE_SECONDS - 2:
            break
    assert racer.poll() is None, "the racer stopped before the requests did"
    # Refused as untrusted, or as outside the roots while the link is in place: never run.
    assert set(reasons) <= {"untrusted_path", "outside_roots"}, reasons
    assert reasons.get("untrusted_path", 0) > 0


async def test_a_refused_path_is_called_untrusted_and_who_can_write_it_stays_in_the_log(
    race_service: LocalHostExec, race_tree: Path
) -> None:
    target = f"{race_tree}/root/d/passwd"
    response = await post_exec(race_service, {"command": f"cat -- {target}"})
    assert response.status_code == 403
    assert response.json()["reason"] == "untrusted_path"
    assert response.json()["error"] == f"path {target} is not trusted"
    assert "writable" not in response.text
    assert f"{race_tree}/root is writable by everyone" in race_service.log_path.read_text()
