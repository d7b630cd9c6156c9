"""What a load run measured: the summary, its table, its JSON object and its plot.

Percentiles are exact: the nearest rank in the sorted latencies of every call recorded (not
the OpenTelemetry histogram's buckets). A fault's effect is read from the calls that overlap
its window, from its beginning to its recovery (the end of the first cache hit asked after
the fault ended), against the calls that overlap no fault window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._loadtest import FaultWindow, Outcome, Recording

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class Latency:
    """Count and exact percentiles of a set of calls, in milliseconds."""

    count: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile (0 < q <= 1) of `ordered` (sorted), or 0 when empty."""
    if not ordered:
        return 0.0
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def latency_of(seconds: Iterable[float]) -> Latency:
    ordered = sorted(seconds)
    if not ordered:
        return Latency()
    p50, p95, p99 = (percentile(ordered, q) * 1000 for q in (0.5, 0.95, 0.99))
    return Latency(len(ordered), p50, p95, p99, ordered[-1] * 1000)


@dataclass(frozen=True)
class FaultEffect:
    """What one fault did: calls failed and latency while it lasted and until recovery."""

    fault: str
    begin_s: float
    end_s: float
    recovery_s: float | None  # fault end to the end of the first hit asked after it
    calls: int
    failed: int
    p50_ms: float
    p99_ms: float
    baseline_p50_ms: float
    baseline_p99_ms: float


@dataclass(frozen=True)
class Executions:
    """How many times each distinct input was executed (a miss that ran the agent)."""

    keys: int = 0
    max: int = 0
    mean: float = 0.0
    more_than_once: int = 0


@dataclass(frozen=True)
class Summary:
    """The figures a user quotes of one run."""

    description: str
    users: int
    duration_s: float
    calls: int
    failed: int
    calls_per_s: float
    hit_ratio: float
    stats_calls: int
    unreached: int  # failed calls no instance answered: no stats count them
    overall: Latency
    hits: Latency
    misses: Latency
    coalesced: Latency
    failures: Latency
    errors: dict[str, int]
    executions: Executions
    faults: list[FaultEffect]
    rss_start_mb: float | None = None
    rss_end_mb: float | None = None
    fds_start: int | None = None
    fds_end: int | None = None

    @property
    def p50_ms(self) -> float:
        return self.overall.p50_ms

    @property
    def p95_ms(self) -> float:
        return self.overall.p95_ms

    @property
    def p99_ms(self) -> float:
        return self.overall.p99_ms

    def as_json(self) -> dict[str, Any]:
        """The summary as one JSON object: the headline figures at the top level."""
        data = asdict(self)
        data.update(p50_ms=self.p50_ms, p95_ms=self.p95_ms, p99_ms=self.p99_ms)
        data["max_ms"] = self.overall.max_ms
        return data


def summarize(recording: Recording, stats_calls: int, description: str) -> Summary:
    """The summary of `recording`; `stats_calls` is what `/sel_agent_stats` counted."""
    starts, latencies, outcomes = recording.starts, recording.latencies, recording.outcomes
    by_kind: dict[int, list[float]] = {kind: [] for kind in Outcome}
    for outcome, latency in zip(outcomes, latencies, strict=True):
        by_kind[outcome].append(latency)
    calls = recording.calls
    counts = recording.executions.values()
    executions = Executions(
        len(counts),
        max(counts, default=0),
        sum(counts) / len(counts) if counts else 0.0,
        sum(1 for count in counts if count > 1),
    )
    windows = [_window(recording, fault) for fault in recording.faults]
    faulted = [(begin, end) for _, begin, end, _ in windows]
    baseline = latency_of(
        latency
        for start, latency in zip(starts, latencies, strict=True)
        if not any(start <= end and start + latency >= begin for begin, end in faulted)
    )
    effects = []
    for fault, begin, end, recovery in windows:
        inside = [
            index
            for index, start in enumerate(starts)
            if start <= end and start + latencies[index] >= begin
        ]
        during = latency_of(latencies[index] for index in inside)
        effects.append(
            FaultEffect(
                fault.spec,
                round(fault.begin, 3),
                round(fault.end, 3),
                None if recovery is None else round(recovery, 3),
                len(inside),
                sum(1 for index in inside if outcomes[index] == Outcome.FAILED),
                during.p50_ms,
                during.p99_ms,
                baseline.p50_ms,
                baseline.p99_ms,
            )
        )
    rss = [sample[1] for sample in recording.resources]
    fds = [sample[2] for sample in recording.resources]
    elapsed = recording.elapsed or 1e-9
    return Summary(
        description=description,
        users=recording.plan.users,
        duration_s=round(recording.elapsed, 3),
        calls=calls,
        failed=len(by_kind[Outcome.FAILED]),
        calls_per_s=round(calls / elapsed, 1),
        hit_ratio=len(by_kind[Outcome.HIT]) / calls if calls else 0.0,
        stats_calls=stats_calls,
        unreached=recording.unreached,
        overall=latency_of(latencies),
        hits=latency_of(by_kind[Outcome.HIT]),
        misses=latency_of(by_kind[Outcome.MISS]),
        coalesced=latency_of(by_kind[Outcome.COALESCED]),
        failures=latency_of(by_kind[Outcome.FAILED]),
        errors=dict(recording.errors.most_common()),
        executions=executions,
        faults=effects,
        rss_start_mb=round(rss[0] / 2**20, 1) if rss else None,
        rss_end_mb=round(rss[-1] / 2**20, 1) if rss else None,
        fds_start=fds[0] if fds else None,
        fds_end=fds[-1] if fds else None,
    )


def _window(
    recording: Recording, fault: FaultWindow
) -> tuple[FaultWindow, float, float, float | None]:
    """The fault, its window (its beginning to its recovery, or the end of the run) and its
    recovery time: from its end to the end of the first hit asked after it ended."""
    first_hit = min(
        (
            start + latency
            for start, latency, outcome in zip(
                recording.starts, recording.latencies, recording.outcomes, strict=True
            )
            if outcome == Outcome.HIT and start >= fault.end
        ),
        default=None,
    )
    if first_hit is None:
        return fault, fault.begin, recording.elapsed, None
    return fault, fault.begin, first_hit, first_hit - fault.end


def render(summary: Summary, console: Console) -> None:
    """The end-of-run tables."""
    from rich.table import Table

    head = Table(title=f"sel-otel loadtest: {summary.description}", show_header=False)
    head.add_row("users", str(summary.users))
    head.add_row("duration", f"{summary.duration_s:.1f} s")
    head.add_row("calls", f"{summary.calls:,} ({summary.calls_per_s:,.1f}/s)")
    head.add_row("failed", f"{summary.failed:,}")
    head.add_row("hit rate", f"{summary.hit_ratio:.1%}")
    answered = summary.calls - summary.unreached
    same = "=" if summary.stats_calls == answered else "≠"
    whose = "calls issued" if not summary.unreached else f"{answered:,} calls answered"
    head.add_row("/sel_agent_stats calls", f"{summary.stats_calls:,} ({same} {whose})")
    executions = summary.executions
    head.add_row(
        "executions per key",
        f"{executions.mean:.2f} mean, {executions.max} max over {executions.keys:,} keys "
        f"({executions.more_than_once} executed more than once)",
    )
    if summary.rss_start_mb is not None:
        head.add_row(
            "RSS / open fds",
            f"{summary.rss_start_mb} → {summary.rss_end_mb} MiB / "
            f"{summary.fds_start} → {summary.fds_end}",
        )
    console.print(head)
    latency = Table(title="latency (ms, exact)")
    for column in ("calls", "count", "p50", "p95", "p99", "max"):
        latency.add_column(column, justify="right")
    for name, row in (
        ("all", summary.overall),
        ("hits", summary.hits),
        ("misses", summary.misses),
        ("coalesced", summary.coalesced),
        ("failed", summary.failures),
    ):
        if row.count:
            latency.add_row(
                name,
                f"{row.count:,}",
                *(f"{v:.2f}" for v in (row.p50_ms, row.p95_ms, row.p99_ms, row.max_ms)),
            )
    console.print(latency)
    if summary.errors:
        errors = Table(title="errors by type")
        errors.add_column("error.type")
        errors.add_column("calls", justify="right")
        for error, count in summary.errors.items():
            errors.add_row(error, f"{count:,}")
        console.print(errors)
    if summary.faults:
        faults = Table(title="faults")
        faults.add_column("fault", no_wrap=True)
        for column in ("from s", "to s", "calls", "failed", "p50 ms", "p99 ms", "recovery"):
            faults.add_column(column, justify="right", no_wrap=True)
        for effect in summary.faults:
            faults.add_row(
                effect.fault,
                f"{effect.begin_s:.1f}",
                f"{effect.end_s:.1f}",
                f"{effect.calls:,}",
                f"{effect.failed:,}",
                f"{effect.baseline_p50_ms:.1f} → {effect.p50_ms:.1f}",
                f"{effect.baseline_p99_ms:.1f} → {effect.p99_ms:.1f}",
                "not seen" if effect.recovery_s is None else f"{effect.recovery_s:.2f} s",
            )
        console.print("p50 and p99: without faults → during the fault and until recovery")
        console.print(faults)


@dataclass(frozen=True)
class Second:
    """The calls that ended within one second of the run."""

    second: int
    calls: int
    failed: int
    p50_ms: float
    p99_ms: float


def per_second(recording: Recording) -> list[Second]:
    """The run second by second (by the time each call ended)."""
    buckets: dict[int, list[float]] = {}
    failed: dict[int, int] = {}
    for start, latency, outcome in zip(
        recording.starts, recording.latencies, recording.outcomes, strict=True
    ):
        second = int(start + latency)
        buckets.setdefault(second, []).append(latency)
        if outcome == Outcome.FAILED:
            failed[second] = failed.get(second, 0) + 1
    series = []
    for second in sorted(buckets):
        ordered = sorted(buckets[second])
        series.append(
            Second(
                second,
                len(ordered),
                failed.get(second, 0),
                percentile(ordered, 0.5) * 1000,
                percentile(ordered, 0.99) * 1000,
            )
        )
    return series


def plot(recording: Recording, summary: Summary, path: Path) -> None:
    """Latency (p50, p99) and throughput over time, fault windows shaded, as a PNG."""
    from matplotlib.figure import Figure

    series = per_second(recording)
    x = [s.second + 0.5 for s in series]
    figure = Figure(figsize=(9, 4), dpi=100, layout="constrained")
    latency = figure.add_subplot()
    throughput = latency.twinx()
    throughput.bar(x, [s.calls for s in series], width=1.0, color="#c8d7e8", label="calls/s")
    throughput.bar(x, [s.failed for s in series], width=1.0, color="#d62728", label="failed/s")
    throughput.set_ylabel("calls per second")
    latency.set_zorder(throughput.get_zorder() + 1)
    latency.patch.set_visible(False)
    latency.plot(x, [s.p50_ms for s in series], color="#1f77b4", label="p50")
    latency.plot(x, [s.p99_ms for s in series], color="#ff7f0e", label="p99")
    latency.set_yscale("log")
    latency.set_ylabel("latency (ms)")
    latency.set_xlabel("seconds")
    for index, fault in enumerate(recording.faults):
        latency.axvspan(fault.begin, max(fault.end, fault.begin + 0.2), color="#999999", alpha=0.25)
        latency.annotate(
            fault.spec,
            (fault.begin, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -12 - 11 * (index % 3)),
            textcoords="offset points",
            fontsize=8,
        )
    latency.set_xlim(0, max(recording.elapsed, 1.0))
    handles = [*latency.get_legend_handles_labels()[0], *throughput.get_legend_handles_labels()[0]]
    latency.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.13), ncol=4, fontsize=8
    )
    latency.set_title(
        f"{summary.description}: {summary.users} users, {summary.calls_per_s:,.0f} calls/s, "
        f"hit rate {summary.hit_ratio:.0%}",
        fontsize=10,
    )
    figure.savefig(path)
