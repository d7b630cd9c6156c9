"""sel_otel never writes the process environment: configuration travels as values (settings,
the agent context), and the SDK pieces are built from values, not by flipping `OTEL_*`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, cli_environment

#: Writes to the process environment, in any of their spellings.
_WRITES = re.compile(
    r"environ\s*\[[^]]*\]\s*=(?!=)"
    r"|environ\s*\.\s*(update|setdefault|pop|popitem|clear)\b"
    r"|\bdel\s+os\.environ\b"
    r"|\b(putenv|unsetenv)\s*\("
)

#: Run an entry point in a process of its own (it installs signal handlers) and say whether
#: the environment it ended with is the one it started with.
_RUN = """
import json, os, sys
from sel_otel._cli import main
before = dict(os.environ)
status = main(sys.argv[1:])
changed = sorted(set(before.items()) ^ set(os.environ.items()))
print(json.dumps({"status": status, "changed": changed}))
"""

#: An agent that says which variables differ, while agents run, from the environment the
#: process started with (`_RUN`'s snapshot).
_WITNESS = """
import json, os, __main__
DESCRIPTION = "Which variables differ from the start"
CACHEABLE = False
def run(query):
    return json.dumps(sorted(set(__main__.before.items()) ^ set(os.environ.items())))
"""


def test_no_module_of_the_package_writes_the_environment() -> None:
    writes = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "sel_otel").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _WRITES.search(line)
    ]
    assert writes == []


def test_shipped_agents_read_no_configuration_from_the_environment() -> None:
    readers = [
        path.name
        for path in sorted((ROOT / "agents").glob("*.py"))
        if re.search(r"\benviron\b|\bgetenv\b", path.read_text(encoding="utf-8"))
    ]
    assert readers == []


@pytest.mark.parametrize(
    "otel",
    [
        # Exporters, self-metrics and the logs sink built; the collector is out of reach.
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_LOGS_EXPORTER": "otlp"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"},
    ],
    ids=["exporting", "sdk-disabled"],
)
def test_running_host_exec_through_the_embedded_service_leaves_the_environment_as_it_was(
    otel: dict[str, str], tmp_path: Path
) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "witness.py").write_text(_WITNESS)
    env = cli_environment(
        SEL_AGENTS_DIR=str(agents),
        SEL_DATA_DIR=str(tmp_path),
        SEL_TELEMETRY_SHUTDOWN_TIMEOUT="0.5",
        OTEL_METRIC_EXPORT_INTERVAL="600000",
        **otel,
    )
    done = subprocess.run(
        [sys.executable, "-c", _RUN, "console"],
        input="agent:host_exec uname -a\nagent:witness\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "✅ `uname -a` (exit code: 0)", done.stderr
    while_running, at_exit = json.loads(lines[-2]), json.loads(lines[-1])
    assert while_running == []
    assert at_exit == {"status": 0, "changed": []}
