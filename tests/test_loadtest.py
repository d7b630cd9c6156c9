"""`sel-otel loadtest`: its plan, key choice, faults parsing, exact figures and a short real run."""

from __future__ import annotations

import json
import random
import subprocess
from array import array
from pathlib import Path

import pytest

from sel_otel import ConfigError, Settings
from sel_otel._loadtest import (
    AgentMix,
    FaultWindow,
    KeySpace,
    LoadDriver,
    LoadPlan,
    Outcome,
    Recording,
    parse_mix,
)
from sel_otel._loadtest_faults import Fault, check_faults, parse_fault
from sel_otel._loadtest_local import local_environment, stats_calls_of
from sel_otel._loadtest_report import percentile, plot, summarize
from sel_otel._telemetry import Telemetry
from tests.conftest import CLI, TelemetryFixture, cli_environment


def process_telemetry(telemetry: TelemetryFixture) -> Telemetry:
    return Telemetry(telemetry.tracer_provider, telemetry.meter_provider, telemetry.reader)


def test_an_agent_of_the_mix_has_a_weight_and_an_input_template() -> None:
    assert parse_mix("calc:2={n}+1") == AgentMix("calc", 2.0, "{n}+1")
    assert parse_mix("loadtest_work") == AgentMix("loadtest_work", 1.0, "key-{n}")
    for bad in ("calc:0", "calc:x", ":2", "calc=no-number"):
        with pytest.raises(ConfigError):
            parse_mix(bad)


def test_a_fault_is_a_kind_a_start_and_a_duration() -> None:
    spec = parse_fault("redis-pause@10s+500ms")
    assert (spec.kind, spec.start, spec.duration, spec.end) == ("redis-pause", 10.0, 0.5, 10.5)
    assert parse_fault("reload@1m").start == 60.0
    for bad in ("redis-pause", "redis-pause@soon", "redis-pause@1s+x"):
        with pytest.raises(ConfigError):
            parse_fault(bad)


async def _nothing() -> None:
    return None


def test_a_fault_the_environment_cannot_inject_is_refused_naming_those_it_can() -> None:
    faults = {"reload": Fault("reload", _nothing), "redis-pause": Fault("p", _nothing, _nothing)}
    with pytest.raises(ConfigError, match=r"no 'collector-down' \(it has: redis-pause, reload\)"):
        check_faults([parse_fault("collector-down@1s+1s")], faults, "1 process")
    with pytest.raises(ConfigError, match="give it \\+DURATION"):
        check_faults([parse_fault("redis-pause@1s")], faults, "1 process")
    check_faults([parse_fault("reload@1s"), parse_fault("redis-pause@1s+2s")], faults, "here")


def test_keys_aim_at_computed_inputs_at_the_hit_ratio() -> None:
    keys = KeySpace(LoadPlan(hit_ratio=0.7))
    rng = random.Random(1)
    warm = 0
    for _ in range(10_000):
        number = keys.pick(0, 0, rng)
        if number in keys._space(0, 0).warm:
            warm += 1
        else:
            keys.computed(0, 0, number)
    assert 0.68 < warm / 10_000 < 0.72


def test_each_new_input_goes_to_fanout_calls_and_per_user_inputs_are_disjoint() -> None:
    rng = random.Random(1)
    fanned = KeySpace(LoadPlan(hit_ratio=0.0, fanout=3))
    assert [fanned.pick(0, user, rng) for user in (0, 1, 2, 0, 1, 2, 0)] == [0, 0, 0, 1, 1, 1, 2]
    own = KeySpace(LoadPlan(users=3, hit_ratio=0.0, scope="per-user"))
    picked = {user: {own.pick(0, user, rng) for _ in range(50)} for user in range(3)}
    assert not (picked[0] & picked[1]) and not (picked[1] & picked[2])
    assert all(len(numbers) == 50 for numbers in picked.values())


def test_percentiles_are_the_exact_nearest_rank() -> None:
    ordered = [float(value) for value in range(1, 101)]
    assert percentile(ordered, 0.5) == 50.0
    assert percentile(ordered, 0.99) == 99.0
    assert percentile(ordered, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) == 0.0


def _recording(calls: list[tuple[float, float, Outcome]], elapsed: float) -> Recording:
    recording = Recording(LoadPlan(), elapsed=elapsed)
    recording.starts = array("d", [call[0] for call in calls])
    recording.latencies = array("d", [call[1] for call in calls])
    recording.outcomes = array("b", [call[2] for call in calls])
    return recording


def test_a_faults_effect_runs_from_its_beginning_to_the_first_hit_after_it() -> None:
    hit, miss, failed = Outcome.HIT, Outcome.MISS, Outcome.FAILED
    recording = _recording(
        [
            (0.0, 0.001, hit),
            (1.0, 0.001, hit),
            (2.1, 0.5, failed),  # during the fault
            (3.05, 0.2, miss),  # after its end, before recovery
            (3.3, 0.05, hit),  # the first hit asked after it ended: recovery at 3.35
            (5.0, 0.001, hit),
        ],
        elapsed=6.0,
    )
    recording.faults.append(FaultWindow("redis-kill@2s+1s", 2.0, 3.0))
    summary = summarize(recording, 6, "test")
    (effect,) = summary.faults
    assert effect.recovery_s == pytest.approx(0.35)
    assert (effect.calls, effect.failed) == (3, 1)
    assert effect.p99_ms == pytest.approx(500.0)
    assert effect.baseline_p99_ms == pytest.approx(1.0)
    assert (summary.calls, summary.failed) == (6, 1)
    assert summary.hit_ratio == pytest.approx(4 / 6)


def test_stats_calls_add_up_every_agent_of_a_stats_reply() -> None:
    reply = (
        "_Coverage: this instance_\n\n**a**\n  Calls: 12 (cached: 3)\n\n"
        "**b**\n  Calls: 5 (cached: 0)"
    )
    assert stats_calls_of(reply) == 17


async def test_a_run_counts_what_the_stats_count_and_hits_about_the_target(
    telemetry: TelemetryFixture, tmp_path: Path
) -> None:
    plan = LoadPlan(users=5, calls=400, hit_ratio=0.6)
    async with local_environment(
        plan, "memory", process_telemetry(telemetry), Settings(), work_ms=2
    ) as environment:
        recording = await LoadDriver(plan, environment.target, probe=environment.probe).run()
        stats_calls = await environment.target.stats_calls()
    summary = summarize(recording, stats_calls, environment.description)
    assert summary.calls == stats_calls == 400
    assert summary.failed == 0
    assert 0.45 < summary.hit_ratio < 0.7
    assert summary.hits.count + summary.misses.count + summary.coalesced.count == 400
    assert summary.executions.max == 1  # one execution per input: the memory cache kept all
    assert summary.misses.p50_ms > summary.hits.p50_ms
    path = tmp_path / "run.png"
    plot(recording, summary, path)
    assert path.read_bytes().startswith(b"\x89PNG")


async def test_an_unknown_agent_of_the_mix_is_refused(telemetry: TelemetryFixture) -> None:
    plan = LoadPlan(mix=(AgentMix("nope"),))
    with pytest.raises(ConfigError, match="no agent nope"):
        async with local_environment(
            plan, "memory", process_telemetry(telemetry), Settings(), work_ms=2
        ):
            pass


async def test_a_failed_call_is_recorded_with_its_error_type(telemetry: TelemetryFixture) -> None:
    plan = LoadPlan(users=2, calls=20, mix=(AgentMix("calc", 1.0, "1/{n}"),), hit_ratio=0.0)
    async with local_environment(
        plan, "memory", process_telemetry(telemetry), Settings(), work_ms=2
    ) as environment:
        recording = await LoadDriver(plan, environment.target).run()
        assert await environment.target.stats_calls() == 20
    # Key 0, 1/0, is asked once (no hits, fanout 1), and fails with calc's own error.
    assert recording.errors == {"InvalidExpression": 1}
    assert recording.outcomes.count(Outcome.FAILED) == 1


def test_the_command_prints_one_json_object_whose_calls_the_stats_counted(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "loadtest", "--users", "4", "--calls", "300", "--work-ms", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_environment(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    for name in ("calls", "failed", "calls_per_s", "p50_ms", "p95_ms", "p99_ms", "hit_ratio"):
        assert isinstance(figures[name], int | float), name
    assert figures["calls"] == figures["stats_calls"] == 300
    assert figures["failed"] == 0
    assert "latency (ms, exact)" in done.stderr  # the tables, apart from the JSON


def test_a_bad_option_exits_2_saying_why() -> None:
    done = subprocess.run(
        [*CLI, "loadtest", "--fault", "collector-down@1s+1s", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_environment(),
        check=False,
    )
    assert done.returncode == 2
    assert "offers no 'collector-down'" in done.stderr
