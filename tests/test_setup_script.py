"""scripts/setup.sh on a fresh machine, with the commands it runs replaced by stand-ins."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Stand-ins for the commands the script runs; each but `id` says what it was asked to run, on
#: the output the script writes its own lines to. python3-venv is missing until apt-get
#: installs it; `python3 -m venv` makes a .venv whose python answers pip's version check and
#: installs.
_STAND_INS = {
    "python3": (
        'echo "RAN python3 $*"\n'
        'case "$1" in -c) [ -e "$STATE/venv-installed" ];;\n'
        '  -m) mkdir -p .venv/bin && cp "$0.venv" .venv/bin/python;; esac\n'
    ),
    "python3.venv": 'echo "RAN .venv/bin/python $*"\n',
    "apt-get": 'echo "RAN apt-get $*"\ntouch "$STATE/venv-installed"\n',
    "id": "echo 0\n",
}
#: The other commands the script and the stand-ins need.
_UTILITIES = ("dirname", "mkdir", "cp", "touch")


def test_setup_says_what_it_does_one_line_before_each_step(tmp_path: Path) -> None:
    checkout, bin_dir, state = tmp_path / "checkout", tmp_path / "bin", tmp_path / "state"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", checkout / "scripts" / "setup.sh")
    bin_dir.mkdir()
    state.mkdir()
    for name, body in _STAND_INS.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    for name in _UTILITIES:
        (bin_dir / name).symlink_to(shutil.which(name) or f"/bin/{name}")

    done = subprocess.run(
        ["/bin/sh", str(checkout / "scripts" / "setup.sh")],
        env={"PATH": str(bin_dir), "STATE": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    said = [line for line in lines if line.startswith("setup: ")]
    assert [line.split()[1] for line in said] == [
        "checking",
        "installing",  # the Debian packages
        "creating",
        "installing",  # sel-otel
        "done:",
    ], lines

    def before(announcement: str, command: str) -> None:
        [said_at] = [i for i, line in enumerate(lines) if line.startswith(announcement)]
        ran_at = next(i for i, line in enumerate(lines) if line.startswith(command))
        assert said_at < ran_at, lines

    before("setup: installing python3-venv redis-server with apt-get", "RAN apt-get update")
    before("setup: creating the virtual environment .venv", "RAN python3 -m venv")
    before("setup: installing sel-otel", "RAN .venv/bin/python -m pip install")
    assert lines[-1].startswith("setup: done: .venv/bin/sel-otel console")
