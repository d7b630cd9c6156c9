"""Three sel_otel processes on one real redis-server, each making known calls: every one of them
answers `/sel_agent_stats` with the sum; one killed drops out after the expiry; one restarted
with the same `service.instance.id` does not count twice; with Redis down each answers with its
own figures and says so."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from sel_otel import Settings
from sel_otel._stats_shared import read_states, stats_store
from tests.conftest import ROOT, AgentWriter, cli_environment

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]

NAMESPACE = "procs"
#: Seconds between publishes: a killed process drops out 3 intervals after its last one.
INTERVAL = 0.3
WAIT = 60.0  # generous: three interpreters and a Redis share two loaded cores


class StatsProcess:
    """A `python -m tests.stats_child` process: a SelApp answering JSON commands."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.stats_child"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.instance = str(self._read(WAIT)["ready"])

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read(WAIT)

    def run(self, agent: str, *queries: str) -> None:
        assert self.call({"op": "run", "agent": agent, "queries": list(queries)}) == {
            "done": len(queries)
        }

    def stats(self, scope: str = "all") -> dict[str, Any]:
        return self.call({"op": "stats", "scope": scope})

    def quit(self) -> None:
        """Leave the app as a stopped process does: the last figures are published."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.process.stdin.flush()
        assert self.process.wait(WAIT) == 0

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(WAIT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"stats process {self.process.pid} silent for {timeout}s"
        line = self.process.stdout.readline()
        assert line, f"stats process exited with {self.process.wait(5)}"
        answer: dict[str, Any] = json.loads(line)
        return answer


Start = Callable[..., StatsProcess]


@pytest.fixture
def start(redis_server: RedisServer, write_agent: AgentWriter, agents_dir: Path) -> Iterator[Start]:
    """Start a process on the test's Redis; `instance` sets its `service.instance.id`."""
    write_agent("echo", "DESCRIPTION='d'\ndef run(q):\n    return q\n")
    write_agent("fails", "DESCRIPTION='d'\ndef run(q):\n    raise ValueError(q)\n")
    started: list[StatsProcess] = []

    def start(instance: str | None = None, interval: float = INTERVAL) -> StatsProcess:
        env = cli_environment(
            SEL_AGENTS_DIR=str(agents_dir),
            SEL_CACHE_URL=redis_server.url,
            SEL_CACHE_NAMESPACE=NAMESPACE,
            SEL_STATS_PUBLISH_INTERVAL=str(interval),
            SEL_HISTORY="false",
        )
        if instance is not None:
            env["OTEL_RESOURCE_ATTRIBUTES"] = f"service.instance.id={instance}"
        started.append(StatsProcess(env))
        return started[-1]

    yield start
    for process in started:
        process.close()


def calls(report: dict[str, Any]) -> int:
    return sum(row["calls"] for row in report["agents"])


def until(process: StatsProcess, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """`process`'s stats once `condition` holds of them, asked again and again until WAIT."""
    deadline = time.monotonic() + WAIT
    while True:
        report = process.stats()
        if condition(report):
            return report
        assert time.monotonic() < deadline, report
        time.sleep(0.05)


def make_known_calls(processes: list[StatsProcess]) -> list[int]:
    """5, 7 and 11 calls, one error among each process's; the calls each made."""
    made = []
    for process, count in zip(processes, (5, 7, 11), strict=True):
        process.run("echo", *(f"{process.instance} {n}" for n in range(count - 1)))
        process.run("fails", process.instance)
        made.append(count)
    return made


def test_every_process_reports_the_sum_and_a_killed_one_drops_out(start: Start) -> None:
    processes = [start(), start(), start()]
    made = make_known_calls(processes)
    for process in processes:
        report = until(process, lambda r: calls(r) == sum(made))
        assert report["instances_covered"] == 3 and report["notes"] == []
        assert {row["agent"]: row["errors"] for row in report["agents"]} == {"echo": 0, "fails": 3}
        assert report["text"].startswith("_Coverage: 3 instances, the oldest figures ")
        this = process.stats("this")
        assert calls(this) == made[processes.index(process)]
        per = process.stats("per-instance")
        assert sorted(i["total"]["calls"] for i in per["instances"]) == sorted(made)
    processes[2].kill()  # no last publish: its figures stay until they expire
    for process in processes[:2]:
        report = until(process, lambda r: r["instances_covered"] == 2)
        assert calls(report) == made[0] + made[1]
        assert processes[2].instance not in {i["instance"] for i in report["instances"]}


def test_a_restarted_process_does_not_count_twice(start: Start, redis_server: RedisServer) -> None:
    # the first life publishes rarely: its last figures outlive the restart by far
    first_life = start(instance="replica-2", interval=30.0)
    others = [start(), start()]
    first_life.run("echo", *(f"old {n}" for n in range(7)))
    first_life.quit()
    second_life = start(instance="replica-2")
    second_life.run("echo", "new 1", "new 2")
    for process in others:
        process.run("echo", f"{process.instance} a")
    report = until(others[0], lambda r: calls(r) == 4)
    assert report["instances_covered"] == 3
    lives = [i for i in report["instances"] if i["instance"] == "replica-2"]
    assert [life["total"]["calls"] for life in lives] == [2]
    # the first life's figures were still there, live, all along: newest start wins
    store = stats_store(Settings(cache_url=redis_server.url, cache_namespace=NAMESPACE))
    assert store is not None
    try:
        states, _ = read_states(store)
    finally:
        store.close()
    published = sorted(
        (state.started, state.points.calls()) for state in states if state.instance == "replica-2"
    )
    assert [count for _, count in published] == [7, 2]
    assert until(second_life, lambda r: calls(r) == 4)["instances_covered"] == 3


def test_with_redis_down_each_answers_with_its_own_figures_and_says_so(
    start: Start, redis_server: RedisServer
) -> None:
    processes = [start(), start()]
    processes[0].run("echo", "a", "b")
    processes[1].run("echo", "c")
    until(processes[0], lambda r: calls(r) == 3)
    redis_server.kill()
    for process, own in zip(processes, (2, 1), strict=True):
        report = process.stats()
        assert calls(report) == own and report["instances_covered"] == 1
        [note] = report["notes"]
        assert note.startswith("the shared Redis could not be read (ConnectionError)")
        assert report["text"].startswith(
            "_Coverage: this instance only (the shared Redis is unreachable)_\n⚠️ "
        )
    redis_server.start()  # publishing resumes by itself
    until(processes[1], lambda r: calls(r) == 3 and r["instances_covered"] == 2)
