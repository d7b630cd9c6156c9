"""The history as a user meets it: `sel-otel` processes that record, `sel-otel history` that
reads (JSON, filters, --follow), a process killed with SIGKILL, instances sharing a Redis, and
log records reaching an OTLP receiver with the trace ids of the spans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sel_otel._history import HistoryEntry, HistoryQuery
from sel_otel._history_sqlite import SqliteHistoryStore
from tests.conftest import CLI, ROOT, cli_environment
from tests.otlp_receiver import OtlpReceiver

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]

FIELDS = ("time", "agent", "user", "outcome", "error_type", "cached", "duration_ms", "trace_id")


def sel_otel(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=cli_environment(**env),
        timeout=60,
        check=False,
    )


def history(*args: str, **env: str) -> Any:
    done = sel_otel("history", "--json", *args, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_history_json_is_every_call_oldest_first_with_the_documented_fields() -> None:
    assert sel_otel("run", "calc", "2+2").returncode == 0
    assert sel_otel("run", "calc", "1/0").returncode == 1
    assert sel_otel("run", "nope", "x").returncode == 1
    entries = history()
    assert [(e["agent"], e["input"], e["outcome"], e["error_type"]) for e in entries] == [
        ("calc", "2+2", "ok", None),
        ("calc", "1/0", "error", "InvalidExpression"),
        ("nope", "x", "error", "agent_not_found"),
    ]
    for entry in entries:
        assert set(FIELDS) <= entry.keys()
        assert entry["time"].endswith("Z") and entry["user"] == "cli"
        assert len(entry["trace_id"]) == 32 and entry["cached"] is False
    assert [e["input"] for e in history("--agent", "calc")] == ["2+2", "1/0"]
    assert [e["input"] for e in history("--outcome", "error", "--limit", "1")] == ["x"]
    assert history("--user", "someone-else") == []


def test_history_lines_link_each_entry_to_its_trace() -> None:
    assert sel_otel("run", "calc", "2+2").returncode == 0
    [entry] = history()
    done = sel_otel("history", SEL_TRACE_URL_TEMPLATE="http://jaeger:16686/trace/{trace_id}")
    [line] = done.stdout.splitlines()
    assert f"trace=http://jaeger:16686/trace/{entry['trace_id']}" in line
    assert "calc" in line and "ok" in line and "'2+2'" in line


def test_bad_history_options_are_refused() -> None:
    assert sel_otel("history", "--outcome", "maybe").returncode == 2
    assert sel_otel("history", "--limit", "0").returncode == 2


def test_follow_prints_the_latest_then_new_entries_until_interrupted() -> None:
    for query in ("1+1", "2+2"):
        assert sel_otel("run", "calc", query).returncode == 0
    follower = subprocess.Popen(
        [*CLI, "history", "--follow", "--json", "--limit", "1"],
        env=cli_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["input"] == "2+2"  # the latest one
        for query in ("3*3", "4*4"):
            assert sel_otel("run", "calc", query).returncode == 0
        printed = [json.loads(follower.stdout.readline()) for _ in range(2)]
        # New ones only: 1+1, older than the first page, is no news.
        assert [(e["agent"], e["input"]) for e in printed] == [("calc", "3*3"), ("calc", "4*4")]
        # A call that started an hour ago, written as it ends: news all the same.
        data_dir = Path(os.environ["XDG_DATA_HOME"]) / "sel-otel"  # the default SEL_DATA_DIR
        store = SqliteHistoryStore(data_dir / "history.db", max_age=1e9, max_rows=1000)
        long_call = HistoryEntry(
            "long-1", time.time() - 3600, "slow", "an hour", "cli", "cli", "ok", None,
            3_600_000.0, False, "i", "", "",
        )  # fmt: skip
        store.write([long_call])
        store.close()
        assert json.loads(follower.stdout.readline())["agent"] == "slow"
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 130
    finally:
        follower.kill()
        follower.communicate()


FLUSH_INTERVAL = 0.2
#: Allowance for the writer thread to be scheduled and commit on a loaded machine.
MARGIN = 1.0
CALLS = 20


def test_a_process_killed_with_sigkill_keeps_every_entry_older_than_the_flush_interval(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.history_child"],
        cwd=ROOT,
        env=cli_environment(SEL_DATA_DIR=str(data), SEL_HISTORY_FLUSH_INTERVAL=str(FLUSH_INTERVAL)),
        stdout=subprocess.PIPE,
        text=True,
    )
    answered: list[tuple[str, float]] = []  # (input, when it answered), by the child's clock
    try:
        assert child.stdout is not None
        # Read on until CALLS calls are older than the flush interval (and the margin).
        while sum(at < answered[-1][1] - FLUSH_INTERVAL - MARGIN for _, at in answered) < CALLS:
            line = child.stdout.readline()
            assert line, f"the child exited with {child.poll()}"
            number, at = line.split()
            answered.append((f"{number}+1", float(at)))
    finally:
        killed_at = time.time()
        child.kill()  # SIGKILL: no shutdown, no last flush
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    store = SqliteHistoryStore(data / "history.db", max_age=1e9, max_rows=10**6)
    kept = {entry.input for entry in store.query(HistoryQuery(limit=10**6))}
    old = [query for query, at in answered if at < killed_at - FLUSH_INTERVAL - MARGIN]
    assert len(old) >= CALLS
    assert [query for query in old if query not in kept] == []


def test_log_records_reach_the_collector_with_the_trace_ids_of_the_spans(
    otlp_receiver: OtlpReceiver,
) -> None:
    done = sel_otel(
        "run",
        "calc",
        "6*7",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.url,
        OTEL_LOGS_EXPORTER="otlp",
    )
    assert done.returncode == 0, done.stderr
    [span] = otlp_receiver.wait_for_spans(lambda span: span.name == "invoke_agent calc")
    [log] = otlp_receiver.wait_for_logs()
    assert (log.trace_id, log.span_id) == (span.trace_id, span.span_id)
    assert log.event_name == "sel.agent.execution"
    assert log.attributes["gen_ai.agent.name"] == "calc"
    assert log.attributes["sel.agent.input"] == "6*7"
    instance = span.resource["service.instance.id"]
    assert log.resource["service.instance.id"] == instance
    [entry] = history()
    assert (entry["trace_id"], entry["instance"]) == (span.trace_id, instance)


def test_instances_on_one_redis_see_each_others_calls(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    def on(data: str) -> dict[str, str]:
        return {"SEL_CACHE_URL": redis_server.url, "SEL_DATA_DIR": str(tmp_path / data)}

    assert sel_otel("run", "calc", "1+1", **on("first")).returncode == 0
    assert sel_otel("run", "calc", "2+2", **on("second")).returncode == 0
    for data in ("first", "second", "third"):  # the third has no file of its own yet
        entries = history(**on(data))
        assert [e["input"] for e in entries] == ["1+1", "2+2"]
        assert len({e["instance"] for e in entries}) == 2

    redis_server.kill()
    done = sel_otel("history", "--json", **on("first"))
    assert done.returncode == 0
    assert [e["input"] for e in json.loads(done.stdout)] == ["1+1"]
    assert "the redis history could not be read" in done.stderr
