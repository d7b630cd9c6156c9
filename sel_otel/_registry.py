"""Discover agent modules in directories once, keep them in memory, reload on demand.

A process looks in two places (`agent_directories`): the agents shipped with sel_otel,
installed as the `sel_otel_agents` package, then `SEL_AGENTS_DIR` when it is set, whose agents
replace shipped ones of the same name.

Loading is atomic per file: a file that fails to import or breaks the contract is reported
with its path and reason and skipped, and when it was already loaded the last good version
keeps serving. Calls in flight hold their own `Agent`, so a reload never drops them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType, ModuleType

from ._agent import Agent
from ._exceptions import AgentLoadError, AgentNotFound

logger = logging.getLogger(__name__)

#: The package the shipped agents are installed as (from `agents/` in the source tree); the
#: registry loads every agent, shipped or not, as a module of that name.
SHIPPED_PACKAGE = "sel_otel_agents"
_MODULE_PREFIX = SHIPPED_PACKAGE + "."


def shipped_agents_dir() -> Path:
    """The directory of the agents shipped with sel_otel, wherever sel_otel is installed.

    Found without importing it; in a source tree used without being installed, `agents/`
    beside `sel_otel/`.
    """
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "agents"


def agent_directories(extra: Path | None = None) -> tuple[Path, ...]:
    """Where a process finds its agents: the shipped ones, then `extra` (`SEL_AGENTS_DIR`),
    whose agents replace shipped ones of the same name."""
    return (shipped_agents_dir(),) if extra is None else (shipped_agents_dir(), extra)


@dataclass(frozen=True)
class ReloadReport:
    """What a (re)load changed: agent names added, updated and removed, and broken files."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    failed: Mapping[Path, str] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("added", self.added),
                ("updated", self.updated),
                ("removed", self.removed),
            )
            if names
        ]
        parts += [f"failed: {path} ({reason})" for path, reason in self.failed.items()]
        return "; ".join(parts) or "no changes"


@dataclass(frozen=True)
class _Loaded:
    agent: Agent
    digest: bytes


class AgentRegistry:
    """The agents found in `directories`, looked up by name from memory.

    An agent file in a later directory replaces one of the same name in an earlier directory.
    """

    def __init__(self, *directories: Path | str) -> None:
        unique: dict[str, Path] = {}
        for directory in map(Path, directories):
            unique.setdefault(os.path.realpath(directory), directory)
        self.directories = tuple(unique.values())
        self._loaded: dict[str, _Loaded] = {}
        self._agents: dict[str, Agent] = {}
        self._retired: list[Agent] = []
        self.agents: Mapping[str, Agent] = MappingProxyType(self._agents)
        self.failures: Mapping[Path, str] = MappingProxyType({})

    def get(self, name: str) -> Agent:
        """The agent called `name`; raise `AgentNotFound` listing the known names."""
        try:
            return self._agents[name]
        except KeyError:
            raise AgentNotFound(name, known=sorted(self._agents)) from None

    def take_retired(self) -> list[Agent]:
        """Agents replaced or removed by reloads since the last call, for their owner to close.

        They are not closed at reload time: calls in flight may still be using them.
        """
        retired, self._retired = self._retired, []
        return retired

    def reload(self) -> ReloadReport:
        """Re-read the directories: load new and changed files, drop deleted ones.

        A directory that is not there (gone for a moment during a deploy, say) is reported as
        failed and changes nothing: the agents loaded from it keep serving.
        """
        files: dict[str, Path | None] = {}  # None: keep the version loaded (directory gone)
        failed: dict[Path, str] = {}
        for directory in self.directories:
            if not directory.is_dir():
                logger.warning("agents directory %s does not exist", directory)
                failed[directory] = "directory does not exist"
                for name, loaded in self._loaded.items():
                    if loaded.agent.path is not None and loaded.agent.path.parent == directory:
                        files[name] = None
                continue
            for file in sorted(directory.glob("*.py")):
                if not file.name.startswith("_"):
                    files[file.stem] = file
        added: list[str] = []
        updated: list[str] = []
        for name, path in files.items():
            if path is None:
                continue
            try:
                source = path.read_bytes()
            except OSError as exc:
                failed[path] = f"cannot read: {exc}"
                continue
            digest = hashlib.blake2b(source, digest_size=16).digest()
            previous = self._loaded.get(name)
            if previous is not None and (previous.digest, previous.agent.path) == (digest, path):
                continue
            try:
                loaded = _load(name, path, source, digest)
            except AgentLoadError as exc:
                failed[path] = exc.reason
                logger.error("agent %s not loaded: %s", name, exc)
                continue
            self._loaded[name] = loaded
            self._agents[name] = loaded.agent
            if previous is not None:
                self._retired.append(previous.agent)
            (updated if previous is not None else added).append(name)
        removed = sorted(set(self._loaded) - set(files))
        for name in removed:
            self._retired.append(self._loaded.pop(name).agent)
            del self._agents[name]
            sys.modules.pop(_MODULE_PREFIX + name, None)
        self.failures = MappingProxyType(failed)
        report = ReloadReport(tuple(added), tuple(updated), tuple(removed), failed)
        logger.info("agents reloaded from %s: %s", ", ".join(map(str, self.directories)), report)
        return report


def _load(name: str, path: Path, source: bytes, digest: bytes) -> _Loaded:
    """Run `source`, read from `path`, as a fresh module; on failure leave `sys.modules` as it
    was.

    The bytes hashed are the bytes run: they are compiled here, never read again through the
    import system, whose `__pycache__` is trusted while a file keeps its size and its mtime
    in whole seconds (an edit can keep both), and no bytecode is written.
    """
    if not name.isidentifier():
        raise AgentLoadError(name, path=path, reason="file name is not a valid identifier")
    module_name = _MODULE_PREFIX + name
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise AgentLoadError(name, path=path, reason="not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    old_module = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
        agent = replace(Agent.from_module(name, module, path), version=digest.hex())
    except AgentLoadError:
        _restore(module_name, old_module)
        raise
    except (Exception, SystemExit) as exc:
        _restore(module_name, old_module)
        reason = f"import failed: {type(exc).__name__}: {exc}"
        raise AgentLoadError(name, path=path, reason=reason) from exc
    except BaseException:
        _restore(module_name, old_module)
        raise
    return _Loaded(agent, digest)


def _restore(module_name: str, old_module: ModuleType | None) -> None:
    if old_module is None:
        sys.modules.pop(module_name, None)
    else:
        sys.modules[module_name] = old_module
