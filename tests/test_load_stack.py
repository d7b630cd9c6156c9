"""Load runs of the deployment in containers (`sel-otel loadtest --cache docker`): instances of
the app image on one Redis, with the host-exec service and an OTLP collector; and the traces of
a `host_exec` call, as the collector receives them.

They skip, saying why, without a Docker engine and the project's images
(scripts/docker-setup.sh). Small and bounded: a stack starts in a few seconds, each run lasts
at most 14 s, and the stack is removed, networks included, whatever happens.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sel_otel._loadtest import LoadDriver, LoadPlan, Outcome, Recording
from sel_otel._loadtest_faults import check_faults, parse_fault, run_with_faults
from sel_otel._loadtest_local import run_namespace
from sel_otel._loadtest_report import Summary, summarize
from sel_otel._loadtest_stack import Images, ReceivedSpan, Stack, docker_environment
from tests.docker_engine import project_image, use_docker_image

pytestmark = [pytest.mark.load, pytest.mark.timeout(60)]

IMAGES = Images(project_image("app"), project_image("redis"), project_image("collector"))
LABEL = "org.sel-otel.loadtest"


@pytest.fixture(autouse=True)
def _engine_and_images() -> None:
    for image in (IMAGES.app, IMAGES.redis, IMAGES.collector):
        use_docker_image(image, pull=False, purpose="a load test of the container stack")


async def load_stack(
    plan: LoadPlan, *, instances: int = 2, faults: tuple[str, ...] = ()
) -> tuple[Summary, Recording]:
    specs = [parse_fault(text) for text in faults]
    async with docker_environment(
        plan, instances=instances, work_ms=10, images=IMAGES
    ) as environment:
        check_faults(specs, environment.faults, environment.description)
        driver = LoadDriver(plan, environment.target)
        recording = await run_with_faults(driver, specs, environment.faults)
        stats_calls = await environment.target.stats_calls()
    return summarize(recording, stats_calls, environment.description), recording


def leftovers() -> list[str]:
    """Containers and networks of load-test stacks still there."""
    import docker

    client = docker.from_env()
    try:
        containers = client.containers.list(all=True, filters={"label": LABEL})
        networks = client.networks.list(filters={"label": LABEL})
        return [item.name for item in [*containers, *networks]]
    finally:
        client.close()


async def test_identical_misses_execute_once_across_instances_and_the_stats_count_every_call() -> (
    None
):
    # Each new input is asked by all 8 users at once, 4 on each instance.
    plan = LoadPlan(users=8, duration=5.0, hit_ratio=0.3, fanout=8)
    summary, _ = await load_stack(plan)
    assert summary.failed == 0, summary.errors
    assert summary.stats_calls == summary.calls > 200
    assert summary.executions.keys > 10
    assert summary.executions.max == 1  # one execution per input while Redis is healthy
    assert summary.coalesced.count + summary.hits.count > summary.executions.keys
    assert leftovers() == []


async def test_no_call_fails_through_redis_paused_or_killed_the_collector_down_or_a_reload() -> (
    None
):
    summary, _ = await load_stack(
        LoadPlan(users=6, duration=12.0),
        faults=(
            "redis-pause@1s+2s",
            "redis-kill@4.5s+1.5s",
            "collector-down@7.5s+2s",
            "reload@10s",
        ),
    )
    assert summary.failed == 0, summary.errors
    assert summary.stats_calls == summary.calls
    assert [effect.failed for effect in summary.faults] == [0, 0, 0, 0]
    recoveries = [effect.recovery_s for effect in summary.faults]
    assert None not in recoveries, summary.faults
    assert leftovers() == []


async def test_an_instance_cut_from_redis_still_answers_and_a_killed_one_comes_back() -> None:
    summary, recording = await load_stack(
        LoadPlan(users=6, duration=14.0), faults=("instance-cut@1s+2s", "instance-kill@4s+1s")
    )
    cut, kill = summary.faults
    assert cut.failed == 0  # off Redis, it serves from its agents, uncached
    # Killed: its users' calls fail, unanswered, and only until it is back.
    assert kill.failed > 0
    assert set(summary.errors) <= {"ConnectError", "ReadError", "RemoteProtocolError"}
    window = recording.faults[1]
    late = [
        outcome
        for start, outcome in zip(recording.starts, recording.outcomes, strict=True)
        if start > window.end + 1.0
    ]
    # (Its start takes a few seconds on a loaded machine: the run lasts long enough for it.)
    assert late, recording.faults
    assert Outcome.FAILED not in late, (recording.faults, summary.errors)
    assert kill.recovery_s is not None
    assert leftovers() == []


@contextlib.contextmanager
def traced_stack(instances: int, scratch: Path) -> Iterator[tuple[Stack, list[str]]]:
    """A stack whose collector prints what it receives, and its instances' URLs."""
    agents = scratch / "agents"
    agents.mkdir()
    agents.chmod(0o755)  # the instances' user reads it (no agent here: the shipped ones serve)
    stack = Stack(IMAGES, instances, agents, run_namespace(), trace_log=True)
    try:
        yield stack, stack.up()
    finally:
        stack.down()


def wait_for_spans(stack: Stack, done: Callable[[list[ReceivedSpan]], bool]) -> list[ReceivedSpan]:
    """The collector's spans once `done` says they are all there (instances export in batches,
    every few seconds)."""
    deadline = time.monotonic() + 30
    while not done(spans := stack.received_spans()):
        received = sorted({(span.resource.get("service.name"), span.name) for span in spans})
        assert time.monotonic() < deadline, f"the collector received only {received}"
        time.sleep(0.2)
    return spans


def test_a_host_exec_call_from_any_instance_reaches_the_collector_as_one_trace(
    tmp_path: Path,
) -> None:
    # Different commands: the instances share one cache, and a hit would not call the service.
    commands = ("uname -a", "uname -r")
    with traced_stack(len(commands), tmp_path) as (stack, urls):
        for index, (url, command) in enumerate(zip(urls, commands, strict=True)):
            reply = httpx.post(
                f"{url}/request",
                json={"text": f"agent:host_exec {command}", "user": f"user-{index}"},
                headers={"Authorization": f"Bearer {stack.serve_token}"},  # a privileged agent
                timeout=30,
            ).json()
            assert reply["ok"] and not reply["cached"], reply

        def complete(spans: list[ReceivedSpan]) -> bool:
            agents = [span for span in spans if span.name == "invoke_agent host_exec"]
            execs = [span for span in spans if span.name == "exec uname"]
            return len(agents) == len(execs) == len(commands)

        spans = wait_for_spans(stack, complete)

    traces: set[str] = set()
    for index in range(len(commands)):
        (agent,) = [
            span
            for span in spans
            if span.name == "invoke_agent host_exec"
            and span.resource.get("service.instance.id") == f"sel-{index}"
        ]
        trace = {span.span_id: span for span in spans if span.trace_id == agent.trace_id}
        children = {
            parent: [span for span in trace.values() if span.parent_id == parent]
            for parent in trace
        }
        (client,) = [span for span in children[agent.span_id] if span.kind == "SPAN_KIND_CLIENT"]
        (server,) = children[client.span_id]
        (execution,) = children[server.span_id]
        assert (server.kind, server.name) == ("SPAN_KIND_SERVER", "POST /exec")
        assert execution.name == "exec uname"
        assert server.resource["service.name"] == execution.resource["service.name"]
        assert server.resource["service.name"] != agent.resource["service.name"]
        # One trace: a single root (the instance's request), every other parent in the trace.
        roots = [span for span in trace.values() if not span.parent_id]
        assert len(roots) == 1, trace
        assert all(span.parent_id in trace for span in trace.values() if span.parent_id), trace
        assert roots[0].resource.get("service.instance.id") == f"sel-{index}"
        traces.add(agent.trace_id)
    assert len(traces) == len(commands)  # a trace per call, not one for the run
    assert leftovers() == []
