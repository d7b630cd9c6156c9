"""The agent registry: load once, report broken files, reload atomically."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from sel_otel import AgentNotFound, AgentRegistry
from sel_otel._registry import ReloadReport, agent_directories

from .conftest import AgentWriter, RuntimeFactory
from .waiting import agent_globals

GOOD = """
DESCRIPTION = "Says {word}"
def run(query):
    return "{word} " + query
"""


def test_loads_agents_and_skips_private_files(agents_dir: Path, write_agent: AgentWriter) -> None:
    write_agent("hello", GOOD.format(word="hello"))
    write_agent("_helpers", "X = 1")
    registry = AgentRegistry(agents_dir)
    report = registry.reload()
    assert report.added == ("hello",)
    assert set(registry.agents) == {"hello"}
    assert registry.get("hello").function("you") == "hello you"


def test_agents_mapping_is_read_only(agents_dir: Path, write_agent: AgentWriter) -> None:
    write_agent("hello", GOOD.format(word="hello"))
    registry = AgentRegistry(agents_dir)
    registry.reload()
    with pytest.raises(TypeError):
        registry.agents["x"] = registry.get("hello")  # type: ignore[index]


def test_unknown_name_lists_the_known_agents(agents_dir: Path, write_agent: AgentWriter) -> None:
    write_agent("b", GOOD.format(word="b"))
    write_agent("a", GOOD.format(word="a"))
    registry = AgentRegistry(agents_dir)
    registry.reload()
    with pytest.raises(AgentNotFound) as caught:
        registry.get("c")
    assert caught.value.known == ["a", "b"]
    assert "Known agents: a, b" in str(caught.value)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("def run(:\n", "SyntaxError"),
        ("import does_not_exist_anywhere\n", "ModuleNotFoundError"),
        ("raise SystemExit(3)\n", "SystemExit"),
        ("def run(q):\n    return q\n", "DESCRIPTION"),
    ],
)
def test_broken_file_is_reported_and_the_rest_keep_working(
    agents_dir: Path, write_agent: AgentWriter, source: str, reason: str
) -> None:
    write_agent("good", GOOD.format(word="good"))
    broken = write_agent("broken", source)
    registry = AgentRegistry(agents_dir)
    report = registry.reload()
    assert report.added == ("good",)
    assert reason in report.failed[broken]
    assert reason in registry.failures[broken]
    assert "sel_otel_agents.broken" not in sys.modules
    assert registry.get("good").function("x") == "good x"


def test_reload_adds_updates_and_removes(agents_dir: Path, write_agent: AgentWriter) -> None:
    write_agent("keep", GOOD.format(word="keep"))
    write_agent("change", GOOD.format(word="old"))
    gone = write_agent("gone", GOOD.format(word="gone"))
    registry = AgentRegistry(agents_dir)
    registry.reload()
    write_agent("change", GOOD.format(word="new"))
    write_agent("fresh", GOOD.format(word="fresh"))
    gone.unlink()
    report = registry.reload()
    assert (report.added, report.updated, report.removed) == (("fresh",), ("change",), ("gone",))
    assert registry.get("change").function("x") == "new x"
    assert set(registry.agents) == {"keep", "change", "fresh"}


def test_unchanged_files_are_not_executed_again(agents_dir: Path, write_agent: AgentWriter) -> None:
    counter = agents_dir.parent / "imports.txt"
    write_agent(
        "counted",
        f"""
        import pathlib
        _path = pathlib.Path({str(counter)!r})
        _path.write_text(_path.read_text() + "x" if _path.exists() else "x")
        DESCRIPTION = "d"
        def run(q):
            return q
        """,
    )
    registry = AgentRegistry(agents_dir)
    registry.reload()
    assert registry.reload().added == ()
    assert counter.read_text() == "x"


def test_a_same_size_edit_in_the_same_second_runs_the_new_code(
    agents_dir: Path, write_agent: AgentWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The import system trusts __pycache__ while the source keeps its size and its mtime in
    # whole seconds: an editor (or a deploy) can change a file and keep both.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = write_agent("agent", GOOD.format(word="one"))
    before = path.stat()
    registry = AgentRegistry(agents_dir)
    registry.reload()
    assert registry.get("agent").function("x") == "one x"
    write_agent("agent", GOOD.format(word="two"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert registry.reload().updated == ("agent",)
    assert registry.get("agent").function("x") == "two x"


def test_broken_edit_keeps_the_last_good_version(
    agents_dir: Path, write_agent: AgentWriter
) -> None:
    path = write_agent("agent", GOOD.format(word="good"))
    registry = AgentRegistry(agents_dir)
    registry.reload()
    write_agent("agent", "DESCRIPTION = 'x'\ndef run(q):\n    return 1/0 +\n")
    report = registry.reload()
    assert "SyntaxError" in report.failed[path]
    assert registry.get("agent").function("x") == "good x"
    assert sys.modules["sel_otel_agents.agent"].run("y") == "good y"
    write_agent("agent", GOOD.format(word="fixed"))
    assert registry.reload().updated == ("agent",)
    assert not registry.failures


async def test_reload_does_not_drop_calls_in_flight(
    make_runtime: RuntimeFactory, write_agent: AgentWriter
) -> None:
    write_agent(
        "slow",
        """
        import asyncio
        DESCRIPTION = "v1"
        CACHEABLE = False
        STARTED, FINISH = asyncio.Event(), asyncio.Event()  # a call: begun, may answer
        async def run(query):
            STARTED.set()
            await FINISH.wait()
            return "v1"
        """,
    )
    runtime = make_runtime()
    in_flight = asyncio.create_task(runtime.run("slow", "q"))
    v1 = agent_globals(runtime, "slow")
    await v1["STARTED"].wait()
    write_agent("slow", 'DESCRIPTION = "v2"\ndef run(query):\n    return "v2"\n')
    assert runtime.registry.reload().updated == ("slow",)
    v1["FINISH"].set()
    assert (await in_flight).output == "v1"
    assert (await runtime.run("slow", "q")).output == "v2"


def test_missing_directory_loads_nothing(tmp_path: Path) -> None:
    registry = AgentRegistry(tmp_path / "absent")
    report = registry.reload()
    assert report.added == ()
    assert report.failed == {tmp_path / "absent": "directory does not exist"}
    assert not registry.agents


def test_a_directory_gone_for_a_moment_removes_no_agent(tmp_path: Path) -> None:
    directory = tmp_path / "agents"
    directory.mkdir()
    (directory / "echo.py").write_text('DESCRIPTION = "d"\ndef run(q):\n    return q\n')
    registry = AgentRegistry(directory)
    registry.reload()
    directory.rename(tmp_path / "agents.old")  # e.g. a deploy swapping the directory
    report = registry.reload()
    assert (report.removed, list(report.failed)) == ((), [directory])
    assert list(registry.agents) == ["echo"]
    (tmp_path / "agents.old").rename(directory)
    assert registry.reload() == ReloadReport()  # back, unchanged: nothing to do


def test_a_later_directory_adds_agents_and_replaces_those_of_the_same_name(
    tmp_path: Path,
) -> None:
    shipped, own = tmp_path / "shipped", tmp_path / "own"
    shipped.mkdir()
    own.mkdir()
    (shipped / "calc.py").write_text(GOOD.format(word="shipped"))
    (shipped / "clock.py").write_text(GOOD.format(word="clock"))
    mine = own / "calc.py"
    mine.write_text(GOOD.format(word="mine"))
    (own / "extra.py").write_text(GOOD.format(word="extra"))
    registry = AgentRegistry(shipped, own)
    assert set(registry.reload().added) == {"calc", "clock", "extra"}
    assert registry.get("calc").function("x") == "mine x"
    assert registry.get("calc").path == mine
    assert registry.get("clock").function("x") == "clock x"
    mine.unlink()  # the shipped agent comes back
    assert registry.reload().updated == ("calc",)
    assert registry.get("calc").function("x") == "shipped x"


def test_a_replacing_file_identical_to_the_one_it_replaces_is_still_loaded_from_its_path(
    tmp_path: Path,
) -> None:
    shipped, own = tmp_path / "shipped", tmp_path / "own"
    shipped.mkdir()
    own.mkdir()
    (shipped / "echo.py").write_text(GOOD.format(word="same"))
    registry = AgentRegistry(shipped, own)
    registry.reload()
    (own / "echo.py").write_text(GOOD.format(word="same"))
    assert registry.reload().updated == ("echo",)
    assert registry.get("echo").path == own / "echo.py"


def test_a_directory_gone_for_a_moment_keeps_its_replacements(tmp_path: Path) -> None:
    shipped, own = tmp_path / "shipped", tmp_path / "own"
    shipped.mkdir()
    own.mkdir()
    (shipped / "echo.py").write_text(GOOD.format(word="shipped"))
    (own / "echo.py").write_text(GOOD.format(word="mine"))
    registry = AgentRegistry(shipped, own)
    registry.reload()
    own.rename(tmp_path / "own.old")
    report = registry.reload()
    assert (report.updated, report.removed, list(report.failed)) == ((), (), [own])
    assert registry.get("echo").function("x") == "mine x"


def test_a_directory_named_twice_is_read_once(agents_dir: Path, write_agent: AgentWriter) -> None:
    write_agent("echo", GOOD.format(word="echo"))
    registry = AgentRegistry(agents_dir, agents_dir.parent / agents_dir.name / ".")
    assert registry.directories == (agents_dir,)
    assert registry.reload().added == ("echo",)


def test_a_process_finds_the_shipped_agents_then_its_own_directory(tmp_path: Path) -> None:
    [shipped] = agent_directories()
    assert {"calc", "clock", "host_exec", "sysinfo"} <= {p.stem for p in shipped.glob("*.py")}
    assert agent_directories(tmp_path) == (shipped, tmp_path)
