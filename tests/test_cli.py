"""The `sel-otel` command as a user runs it: a real process, real standard input."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import CLI, cli_environment, free_port
from .processes import running, signal_pending, state
from .waiting import block_until


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
    assert (done.returncode, done.stdout) == (0, "`6 * 7` = 42\n")  # quoted: markdown reads *


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
        # read by the SDK as it is imported, before any of sel-otel's code runs
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "-1", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT must be"),
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


@contextlib.contextmanager
def _launcher(process: subprocess.Popen[Any]) -> Iterator[set[int]]:
    """A set for the child processes of `process`, to fill in; on the way out the launcher
    and those children are killed, whatever failed."""
    children: set[int] = set()
    try:
        yield children
    finally:
        process.kill()
        process.communicate()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait_until_gone(pids: set[int], why: str) -> None:
    block_until(lambda: not any(map(running, pids)), why)


def _children(pid: int) -> set[int]:
    """Child processes of `pid`, from each of its threads' lists (threads come and go)."""
    children: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                children.update(int(c) for c in (task / "children").read_text().split())
    return children


def _first_children(process: subprocess.Popen[Any]) -> set[int]:
    """The first child processes of `process`, polled closely, as soon as there are any."""
    deadline = time.monotonic() + 60
    while not (children := _children(process.pid)):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no child process was started"
        time.sleep(0.0002)
    return children


def test_a_signal_while_the_bot_starts_stops_it_and_its_embedded_service(tmp_path: Path) -> None:
    started = tmp_path / "warming"
    (tmp_path / "slow.py").write_text(
        "import pathlib, time\nDESCRIPTION = 'slow'\nTIMEOUT = 60\n"
        f"def run(q):\n    pathlib.Path({str(started)!r}).touch()\n    time.sleep(30)\n"
        "    return q\n"
    )
    host_exec = Path(__file__).resolve().parent.parent / "agents" / "host_exec.py"
    (tmp_path / "host_exec.py").write_text(host_exec.read_text())  # so the service starts
    env = cli_environment(
        SEL_AGENTS_DIR=str(tmp_path), SEL_CACHE_WARMUP="slow x", DISCORD_TOKEN="not-a-token"
    )
    bot = subprocess.Popen([*CLI, "bot"], env=env, stderr=subprocess.PIPE, text=True)
    with _launcher(bot) as children:
        deadline = time.monotonic() + 60
        while not started.exists():  # the embedded service is up, the warm-up running
            assert bot.poll() is None, bot.communicate()[1]
            assert time.monotonic() < deadline, "the warm-up never started"
            time.sleep(0.05)
        children |= _children(bot.pid)
        assert len(children) == 1, children  # the embedded host-exec service
        bot.send_signal(signal.SIGTERM)
        assert bot.wait(timeout=30) == 143
        _wait_until_gone(children, "the host-exec service was left running")


@pytest.mark.parametrize("encoding", ["utf-8:strict", "utf-8:surrogateescape"])
def test_bytes_that_are_not_text_are_answered_not_fatal(encoding: str) -> None:
    done = subprocess.run(
        [*CLI, "console"],
        input=b"agent:calc 1+1\n\xff\nagent:calc 1+\xff\nagent:calc 2+2\n",
        capture_output=True,
        env=cli_environment(PYTHONIOENCODING=encoding),
        timeout=60,
        check=False,
    )
    replies = done.stdout.decode().splitlines()
    assert replies[0] == "1+1 = 2" and replies[-1] == "2+2 = 4", done.stderr.decode()
    assert done.returncode == 1  # the two unreadable requests failed, and nothing else


def test_a_console_killed_outright_leaves_no_service_behind(tmp_path: Path) -> None:
    console = subprocess.Popen(
        [*CLI, "console"],
        env=cli_environment(TMPDIR=str(tmp_path)),  # where the token directory stays behind
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with _launcher(console) as children:
        deadline = time.monotonic() + 60
        while not children:  # the embedded host-exec service of the repository's host_exec
            assert console.poll() is None, console.communicate()[1]
            assert time.monotonic() < deadline, "the embedded service never started"
            time.sleep(0.05)
            children |= _children(console.pid)
        console.kill()  # SIGKILL: no clean-up code runs in the console
        console.wait()
        _wait_until_gone(children, "the host-exec service outlived its launcher")


@pytest.mark.parametrize(
    "after_fork_s",
    # The moment of the kill is the variable under test: this long after the service's
    # process appears, so before or after it has run a line of its own, armed its death
    # signal or started to watch its launcher; None: once the console answers.
    [0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.03, 0.1, 0.3, None],
)
def test_a_console_killed_at_any_moment_of_its_services_start_leaves_none_behind(
    after_fork_s: float | None, tmp_path: Path
) -> None:
    console = subprocess.Popen(
        [*CLI, "console"],
        env=cli_environment(PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with _launcher(console) as children:
        if after_fork_s is None:
            assert console.stdin is not None and console.stdout is not None
            console.stdin.write("agent:calc 1+1\n")
            console.stdin.flush()
            assert console.stdout.readline() == "1+1 = 2\n", console.communicate()[1]
            children |= _children(console.pid)
        else:
            children |= _first_children(console)
            time.sleep(after_fork_s)
        console.kill()  # SIGKILL: no clean-up code runs in the console
        console.wait()
        _wait_until_gone(children, "the host-exec service outlived its launcher")


def _environment(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in entries if entry)


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_a_signal_while_the_console_waits_for_its_service_to_stop_leaves_no_token_behind(
    signum: int, tmp_path: Path
) -> None:
    stdin, requests = os.pipe()
    console = subprocess.Popen(
        [*CLI, "console"],
        env=cli_environment(PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path)),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(stdin)
    with _launcher(console) as children, open(requests, "w") as lines:
        lines.write("agent:calc 1+1\n")
        lines.flush()
        assert console.stdout is not None
        assert console.stdout.readline() == "1+1 = 2\n", console.communicate()[1]
        children |= _children(console.pid)
        [service] = children  # the embedded host-exec service, up since the console is
        token_dir = Path(_environment(service)["HOST_EXEC_TOKEN_FILE"]).parent
        assert token_dir.parent == tmp_path and token_dir.is_dir()
        # Stopped, the service takes the console's SIGTERM only when it is continued: the
        # console waits for it until its grace ends, and then kills it.
        os.kill(service, signal.SIGSTOP)
        deadline = time.monotonic() + 60
        while state(service) != "T":  # a signal sent now stays pending
            assert time.monotonic() < deadline, "the service never stopped"
            time.sleep(0.01)
        lines.close()  # end of input: the console shuts down
        while not signal_pending(service, signal.SIGTERM):  # the console is in its wait
            assert console.poll() is None, console.communicate()[1]
            assert time.monotonic() < deadline, "the console never asked the service to stop"
            time.sleep(0.01)
        console.send_signal(signum)
        assert console.wait(timeout=60) == 128 + signum, console.communicate()[1]
        assert not token_dir.exists()
        assert list(tmp_path.glob("sel-hostexec-local-*")) == []
        # The console killed it on its way out; the kernel may still be ending it.
        _wait_until_gone({service}, "the host-exec service outlived the console")
