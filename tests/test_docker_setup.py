"""CI runs the README's test command, and scripts/docker-setup.sh never stops it.

The set-up script runs with stand-ins for the commands that would change the machine (`id`,
`apt-get`, `dockerd`, `docker`, `mmdebstrap`), so what it decides is checked everywhere. The
images it builds are checked where an engine has them: the app image here, the Redis image by
the Redis cache tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker_engine import project_image, use_docker_image

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "docker-setup.sh"

#: Stand-ins, run with TMPDIR set to the test's directory. `dockerd` notes its arguments, writes
#: the pid file it is given, and answers (through `docker info`) until SIGTERM.
STAND_INS = {
    "apt-get": "echo 'stand-in apt-get refuses' >&2; exit 1\n",
    "mmdebstrap": "echo 'stand-in mmdebstrap refuses' >&2; exit 1\n",
    "docker": (
        'case "$1" in info) [ -e "$TMPDIR/engine-up" ];;\n'
        '  *) echo "stand-in docker refuses $1" >&2; exit 1;; esac\n'
    ),
    "dockerd": (
        'echo "$*" >"$TMPDIR/dockerd-arguments"\n'
        "while [ $# -gt 0 ]; do\n"
        '  case "$1" in --pidfile) echo $$ >"$2"; shift;; esac; shift\n'
        "done\n"
        "trap 'rm -f \"$TMPDIR/engine-up\"; exit 0' TERM\n"
        'touch "$TMPDIR/engine-up"\n'
        "while :; do sleep 0.05; done\n"
    ),
}


def test_ci_runs_exactly_the_readme_test_command_and_stops_the_engine_at_the_end() -> None:
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^(.+?)\s+# run the tests$", readme, re.M)
    assert command, "README.md gives no test command"
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ci[-1] == command[1]
    assert "sh scripts/docker-setup.sh &&" in command[1]
    assert "trap 'sh scripts/docker-setup.sh stop' EXIT" in ci


def _script(
    tmp_path: Path, *arguments: str, uid: int, **env: str
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        for name, body in {**STAND_INS, "id": f"echo {uid}\n"}.items():
            (bin_dir / name).write_text("#!/bin/sh\n" + body)
            (bin_dir / name).chmod(0o755)
    return subprocess.run(
        ["/bin/sh", str(SCRIPT), *arguments],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The script's state directory; a stand-in dockerd still running at the end is killed."""
    directory = tmp_path / "sel-otel-docker"
    yield directory
    pid_file = directory / "dockerd.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_without_root_or_an_engine_it_says_why_and_exits_0(tmp_path: Path, state: Path) -> None:
    done = _script(tmp_path, uid=1000)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "docker-setup: engine: none answers, and only root can start dockerd",
        "docker-setup: no engine: the tests that run containers will skip",
    ]
    assert not (tmp_path / "dockerd-arguments").exists()


def test_it_can_be_skipped_altogether(tmp_path: Path, state: Path) -> None:
    done = _script(tmp_path, uid=0, SEL_TEST_DOCKER="0")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "docker-setup: skipped (SEL_TEST_DOCKER=0): the tests that run containers will skip"
    ]
    assert not (tmp_path / "dockerd-arguments").exists()


def test_it_starts_dockerd_on_loopback_reports_failed_builds_and_stops_only_its_own(
    tmp_path: Path, state: Path
) -> None:
    stop = _script(tmp_path, "stop", uid=0)
    assert stop.stdout == "docker-setup: engine: no dockerd started by this script is running\n"

    done = _script(tmp_path, uid=0)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(
        r"docker-setup: engine: dockerd started on 127\.0\.0\.1 in \d+ s .*", lines[0]
    )
    arguments = (tmp_path / "dockerd-arguments").read_text().split()
    assert arguments[:2] == ["--ip", "127.0.0.1"]
    for image in ("sel-otel/redis:test", "sel-otel/python:test", "sel-otel/app:test"):
        [line] = [line for line in lines if line.startswith(f"docker-setup: image {image}: ")]
        assert re.search(r": build: FAILED after \d+ s: .+ \(log: .+\.log\)$", line), line
    assert "stand-in mmdebstrap refuses" in (state / "build-redis.log").read_text()
    pid = int((state / "dockerd.pid").read_text())

    stop = _script(tmp_path, "stop", uid=0)

    assert stop.returncode == 0, stop.stderr
    assert re.fullmatch(r"docker-setup: engine: dockerd stopped in \d+ s\n", stop.stdout)
    assert not Path(f"/proc/{pid}").exists()


def test_the_app_image_built_offline_runs_sel_otel_as_an_unprivileged_user() -> None:
    image = project_image("app")
    use_docker_image(image, pull=False, purpose="the app image test")
    import docker

    client = docker.from_env(timeout=120)
    try:
        output = client.containers.run(
            image, ["run", "calc", "6 * 7"], network_mode="none", remove=True
        )
        user = client.images.get(image).attrs["Config"]["User"]
    finally:
        client.close()
    assert "42" in output.decode()
    assert user not in ("", "root", "0")
