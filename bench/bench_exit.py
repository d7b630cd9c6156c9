"""Exit benchmark: how long a `sel-otel console` takes to end when its agents misbehave.

Each scenario starts a console (the repository's agents plus three hostile ones, no embedded
host-exec service, default `SEL_TELEMETRY_SHUTDOWN_TIMEOUT` of 2 s), makes one call, then
asks the console to end and times it, from that moment to the process's exit:

- end of input after a call whose `asyncio.to_thread` job hangs (its thread sleeps an hour);
- SIGTERM after the same call;
- SIGTERM during a call whose agent swallows every cancellation;
- SIGTERM during a call whose agent holds the event loop (an hour of `time.sleep`).

A console still running `BOUND` seconds later is killed and counted as not ending (`>`).
Target: every scenario ends within the shutdown timeout and its 0.5 s grace (2.5 s).

Run: .venv/bin/python bench/bench_exit.py [--baseline PATH]
`--baseline` names another checkout (`git worktree add /tmp/old HEAD~3`, say) whose
`sel_otel` is measured the same way, interleaved with this one's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPETITIONS, checkouts, interleaved, load_average, print_header, spread

#: Seconds after which a console that has not ended is killed.
BOUND = 10.0

#: The misbehaving agents, shared with tests/test_exit.py.
EXIT_AGENTS = Path(__file__).resolve().parents[1] / "tests" / "exit_agents"

#: Scenario: (label, agent, how the console is asked to end).
SCENARIOS = (
    ("end of input, a to_thread job hung", "hung_thread", "eof"),
    ("SIGTERM, a to_thread job hung", "hung_thread", "sigterm"),
    ("SIGTERM, agent swallows cancellation", "stubborn", "sigterm"),
    ("SIGTERM, agent holds the event loop", "blocker", "sigterm"),
)


def once(checkout: Path, agents: Path, agent: str, ending: str) -> float:
    """Seconds from the request to end to the console's exit (BOUND + 1 when killed)."""
    started = agents.parent / f"started-{time.monotonic_ns()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SEL_", "HOST_"))}
    env |= {
        "PYTHONPATH": str(checkout),
        "SEL_AGENTS_DIR": str(agents),
        "SEL_DATA_DIR": str(agents.parent),  # the history of these calls stays with them
        "HOST_EXEC_URL": "http://127.0.0.1:9",  # no embedded service: the agents alone
        "PYTHONUNBUFFERED": "1",  # each reply as it is written
    }
    console = subprocess.Popen(
        [sys.executable, "-m", "sel_otel", "console"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=checkout,
    )
    assert console.stdin is not None and console.stdout is not None
    try:
        console.stdin.write(f"agent:{agent} {started}\n".encode())
        console.stdin.flush()
        if agent == "hung_thread":
            console.stdout.readline()  # the call has timed out; its thread still sleeps
        else:
            while not started.exists():  # the agent is running
                if console.poll() is not None:
                    raise RuntimeError(f"the console ended early ({console.returncode})")
                time.sleep(0.005)
        asked = time.monotonic()
        if ending == "eof":
            console.stdin.close()
        else:
            console.send_signal(signal.SIGTERM)
        try:
            console.wait(timeout=BOUND)
        except subprocess.TimeoutExpired:
            return BOUND + 1
        return time.monotonic() - asked
    finally:
        if console.poll() is None:
            console.kill()
        console.wait()


def show(values: list[float]) -> str:
    hung = sum(value > BOUND for value in values)
    if hung == len(values):
        return f"> {BOUND:.0f} s in all {hung} runs (killed)"
    ended = spread([value for value in values if value <= BOUND])
    return f"{ended.show(digits=2)} s" + (f"; {hung} runs > {BOUND:.0f} s (killed)" if hung else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure alike")
    parser.add_argument("--repetitions", type=int, default=REPETITIONS)
    args = parser.parse_args()
    print_header("bench_exit: seconds from the request to end to the process's exit")
    compared = checkouts(args.baseline)
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        agents = Path(directory) / "agents"
        shutil.copytree(EXIT_AGENTS, agents, ignore=shutil.ignore_patterns("__pycache__"))
        kinds = [(variant, scenario) for variant in compared for scenario in SCENARIOS]
        for variant, (label, agent, ending) in interleaved(kinds, args.repetitions):
            seconds = once(compared[variant], agents, agent, ending)
            results.setdefault((variant, label), []).append(seconds)
    print(f"median (min-max) of {args.repetitions} repetitions; target <= 2.5 s")
    for variant in compared:
        print(f"{variant} ({compared[variant]}):")
        for label, _, _ in SCENARIOS:
            print(f"  {label:38}: {show(results[(variant, label)])}")
    print(f"at the end: load average {load_average()} (1, 5, 15 min)")


if __name__ == "__main__":
    main()
