"""sel-otel as a user installs and runs it: the shipped agents come with it, wherever it runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

from .conftest import CLI, ROOT, cli_environment


def _environment(**overrides: str) -> dict[str, str]:
    """A `sel-otel` process's environment with no SEL_AGENTS_DIR and nothing on PYTHONPATH."""
    environment = cli_environment(**overrides)
    environment.pop("PYTHONPATH", None)
    if "SEL_AGENTS_DIR" not in overrides:
        del environment["SEL_AGENTS_DIR"]
    return environment


def _run(*command: str | Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(map(str, command)),
        input=stdin,
        capture_output=True,
        text=True,
        cwd="/",
        env=_environment(**env),
        timeout=120,
        check=False,
    )


def test_the_shipped_agents_are_found_from_any_directory() -> None:
    done = _run(*CLI, "run", "calc", "1+1")
    assert (done.stdout, done.returncode) == ("1+1 = 2\n", 0), done.stderr


def test_sel_agents_dir_adds_agents_and_replaces_shipped_ones_of_the_same_name(
    tmp_path: Path,
) -> None:
    (tmp_path / "calc.py").write_text("DESCRIPTION = 'mine'\ndef run(q):\n    return 'mine ' + q\n")
    (tmp_path / "echo.py").write_text("DESCRIPTION = 'echo'\ndef run(q):\n    return q\n")
    done = _run(
        *CLI,
        "console",
        stdin="agent:calc 1+1\nagent:echo hi\nagent:clock UTC\n",
        SEL_AGENTS_DIR=str(tmp_path),
        HOST_EXEC_URL="http://127.0.0.1:9",  # no embedded host-exec service
    )
    assert done.returncode == 0, done.stderr
    mine, echo, clock = done.stdout.splitlines()
    assert (mine, echo) == ("mine 1+1", "hi")
    assert clock.endswith(" in UTC")  # shipped


def test_every_package_of_the_source_tree_is_installed() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    sources = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "sel_otel").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == sources | {"sel_otel_agents"}
    assert setuptools["package-dir"] == {"sel_otel_agents": "agents"}


def test_a_non_editable_install_runs_the_shipped_agents_from_the_root_directory(
    tmp_path: Path,
) -> None:
    source, venv = tmp_path / "source", tmp_path / "venv"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for name in ("sel_otel", "agents"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    # The dependencies, pip and setuptools come from this environment, after the venv's own.
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    here = dict.fromkeys(sysconfig.get_path(kind) for kind in ("purelib", "platlib"))
    Path(purelib, "_outer_environment.pth").write_text("".join(f"{path}\n" for path in here))

    # Offline with this environment's setuptools when it can build the project, else in an
    # isolated build environment with setuptools from the package index.
    setuptools = _run(python, "-c", "import setuptools; print(setuptools.__version__)")
    offline = setuptools.returncode == 0 and Version(setuptools.stdout) >= Version("77")
    build = ["--no-build-isolation", "--no-index"] if offline else []
    install = _run(
        python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", *build, source,
        PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_RETRIES="0", PIP_TIMEOUT="20",
    )  # fmt: skip
    if not offline and "No matching distribution found for setuptools" in install.stderr:
        pytest.skip("building needs setuptools>=77: not installed here, and no package index")
    assert install.returncode == 0, install.stderr

    done = _run(venv / "bin" / "sel-otel", "run", "calc", "1+1")
    assert (done.stdout, done.returncode) == ("1+1 = 2\n", 0), done.stderr
    where = _run(
        python,
        "-c",
        "import sel_otel; from sel_otel._registry import shipped_agents_dir; "
        "print(sel_otel.__file__); print(shipped_agents_dir())",
    )
    package, agents = map(Path, where.stdout.split())
    assert package.is_relative_to(venv) and agents.is_relative_to(venv), where
    assert {"calc.py", "clock.py", "host_exec.py", "sysinfo.py"} <= set(os.listdir(agents))
