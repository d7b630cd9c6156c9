"""The deployment's stats: the instances' published histogram points, merged exactly.

Figures with the same bucket boundaries add up as one process's points would (counts, sums
and bucket counts add; min and max are kept), so the merged p95, read from the merged
buckets, is the p95 of one process fed every call. An instance whose boundaries differ
cannot be merged exactly: it is left out, and the report says so. Each instance counts once:
of several lives of one `service.instance.id` (a restart within the expiry) only the newest
is taken, and this process's live figures replace what it last published. An instance whose
state this version cannot read (another format, a corrupt payload) is left out and named.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final, Literal

from ._stats import AgentStats, add_up, format_duration, format_stats, total
from ._stats_state import InstanceState

Scope = Literal["all", "this", "per-instance"]
SCOPES: Final[tuple[Scope, ...]] = ("all", "this", "per-instance")


@dataclass(frozen=True)
class InstanceFigures:
    """One instance's part of a report: its figures of `agent`, or of every agent."""

    state: InstanceState
    this: bool  # the process answering
    agent: str | None = None

    @property
    def instance(self) -> str:
        return self.state.instance

    @property
    def started(self) -> float:
        return self.state.started

    @property
    def age(self) -> float:
        """Seconds since its figures were published; 0 for this process's live ones."""
        return self.state.age

    @cached_property
    def calls(self) -> int:
        return self.state.points.calls(self.agent)

    @cached_property
    def rows(self) -> list[AgentStats]:
        """Of the agents shown, most called first."""
        return add_up([self.state.points], self.agent)

    @cached_property
    def total(self) -> AgentStats:
        return total(self.rows, self.instance)


@dataclass(frozen=True)
class StatsReport:
    """Per-agent figures, most called first, and what they cover."""

    scope: Scope
    rows: list[AgentStats]
    instances: list[InstanceFigures]  # the instances the figures cover
    shared: bool  # read from the shared store (False: this process's figures alone)
    notes: list[str] = field(default_factory=list)  # what is left out, and why
    alone: str = ""  # why the figures are this process's alone, when they are

    @property
    def oldest_age(self) -> float:
        return max((figures.age for figures in self.instances), default=0.0)

    def coverage(self) -> str:
        """A line saying which instances the figures cover and how fresh they are."""
        if not self.shared:
            return f"this instance only ({self.alone})"
        count = len(self.instances)
        if not count:
            return "no instance is publishing its figures"
        plural = "instance" if count == 1 else "instances"
        return f"{count} {plural}, the oldest figures {format_age(self.oldest_age)} old"


def format_age(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"


def merge(
    states: Sequence[InstanceState],
    *,
    this: InstanceState | None = None,
    scope: Scope = "all",
    agent: str | None = None,
    unreadable: Sequence[str] = (),
) -> StatsReport:
    """The report of `states` (published) and `this` (the live figures of the process
    answering, if any), for the agent `agent` or every agent; the instances `unreadable`
    published states this version cannot read, and are named unless a life of theirs counts."""
    newest: dict[str, InstanceState] = {}
    for state in states:
        kept = newest.get(state.instance)
        if kept is None or state.started > kept.started:
            newest[state.instance] = state
    if this is not None:
        newest[this.instance] = this
    notes = []
    if left_unread := sorted(set(unreadable).difference(newest)):
        notes.append(
            "left out, as this version cannot read their figures (another version, or a "
            f"corrupt state): {', '.join(left_unread)}"
        )
    reference = _reference_bounds(this, newest.values())
    merged: list[InstanceState] = []
    left_out: list[InstanceState] = []
    for state in newest.values():
        (merged if not state.points.counts or state.bounds == reference else left_out).append(state)
    if left_out:
        notes.append(
            f"left out, as their histogram bucket boundaries differ from this instance's "
            f"(another version?): {', '.join(sorted(state.instance for state in left_out))}"
        )
    instances = [InstanceFigures(state, state is this, agent) for state in merged]
    instances.sort(key=lambda f: (not f.this, -f.calls, f.instance))
    rows = add_up((figures.state.points for figures in instances), agent)
    return StatsReport(scope, rows, instances, shared=True, notes=notes)


def _reference_bounds(
    this: InstanceState | None, states: Iterable[InstanceState]
) -> tuple[float, ...]:
    """The boundaries the others must have: this process's, else those of the most calls."""
    if this is not None and this.points.counts:
        return this.bounds
    busiest = max(
        (state for state in states if state.points.counts),
        key=lambda state: state.points.calls(),
        default=None,
    )
    return busiest.bounds if busiest is not None else ()


def local_report(
    this: InstanceState,
    scope: Scope,
    agent: str | None,
    alone: str,
    notes: Sequence[str] = (),
) -> StatsReport:
    """The report of this process's figures alone, `alone` saying why."""
    figures = InstanceFigures(this, True, agent)
    return StatsReport(scope, figures.rows, [figures], shared=False, notes=list(notes), alone=alone)


def format_report(report: StatsReport, agent: str | None = None) -> str:
    """The text of `/sel_agent_stats`: coverage and notes, then a block per agent (or, for
    the per-instance scope, per instance)."""
    lines = [f"_Coverage: {report.coverage()}_"]
    lines += [f"⚠️ {note}" for note in report.notes]
    head = "\n".join(lines)
    if report.scope == "per-instance":
        return f"{head}\n\n" + "\n\n".join(format_instance(f) for f in report.instances)
    if agent is not None and not report.rows:
        return f"{head}\n\nNo calls of `{agent}` yet."
    return f"{head}\n\n{format_stats(report.rows)}"


def format_instance(figures: InstanceFigures) -> str:
    """One instance's block of the per-instance scope: its figures over the agents shown."""
    row = figures.total
    whose = "this instance" if figures.this else f"figures {format_age(figures.age)} old"
    return (
        f"**{figures.instance}** ({whose})\n"
        f"  Calls: {row.calls} (cached: {row.cached_calls})\n"
        f"  Errors: {row.errors} ({row.error_rate:.1%})\n"
        f"  P95 time: {format_duration(row.percentile(0.95))}"
    )
