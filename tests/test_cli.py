"""The `sel-otel` command as a user runs it: a real process, real standard input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import CLI, cli_environment, free_port


def sel_otel(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_environment(**env),
        timeout=60,
        check=False,
    )


def test_run_prints_the_output_and_exits_zero() -> None:
    done = sel_otel("run", "calc", "6", "*", "7")
    assert (done.returncode, done.stdout) == (0, "6 * 7 = 42\n")


def test_run_exits_non_zero_with_the_error_on_stderr() -> None:
    done = sel_otel("run", "nope", "x")
    assert done.returncode == 1
    assert "Unknown agent 'nope'" in done.stderr and "calc" in done.stderr


def test_console_answers_each_piped_line_and_exits_at_end_of_input() -> None:
    done = sel_otel(
        "console", stdin="agent:calc 1+1\n\nagent:calc 1+1\n/sel_agents\n/sel_agent_stats calc\n"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["1+1 = 2", "1+1 = 2"]
    assert any(line.startswith("**sysinfo**: ") for line in lines)
    assert "  Calls: 2 (cached: 1)" in lines


def test_console_exit_code_reports_failed_requests() -> None:
    assert sel_otel("console", stdin="agent:calc 1/0\n").returncode == 1


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SEL_AGENT_TIMEOUT", "soon", "SEL_AGENT_TIMEOUT='soon' is invalid"),
        ("SEL_AGENT_TIMEOUT", "nan", "must be a finite number"),
        ("SEL_LOG_LEVEL", "verbose", "SEL_LOG_LEVEL='verbose' is invalid"),
        ("SEL_CACHE_URL", "foo://x", "unsupported scheme 'foo'"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "unsupported ['zipkin']"),
    ],
)
def test_invalid_settings_are_reported_clearly(variable: str, value: str, message: str) -> None:
    done = sel_otel("run", "calc", "1", **{variable: value})
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_calls_succeed_when_the_otlp_endpoint_is_down() -> None:
    port = free_port()
    done = sel_otel(
        "console",
        stdin="agent:calc 2+2\n" * 20,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_METRICS_EXPORTER="none",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["2+2 = 4"] * 20
    # Reported once, not per retry or per batch; nothing else is printed.
    assert done.stderr.count("traces export failing") == 1
    assert [line for line in done.stderr.splitlines() if "export failing" not in line] == []


def test_run_passes_options_through_to_the_agent_input() -> None:
    done = sel_otel("run", "host_exec", "uname", "-a")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("✅ `uname -a` (exit code: 0)")


def test_a_hung_sync_agent_does_not_hold_up_exit(tmp_path: Path) -> None:
    (tmp_path / "hang.py").write_text(
        "import time\nDESCRIPTION = 'hangs'\nTIMEOUT = 0.5\n"
        "def run(q):\n    time.sleep(60)\n    return q\n"
    )
    import time

    started = time.monotonic()
    done = sel_otel("run", "hang", "x", SEL_AGENTS_DIR=str(tmp_path))
    assert done.returncode == 1
    assert "timed out after 0.5s" in done.stderr
    assert time.monotonic() - started < 30  # not the agent's 60 s
