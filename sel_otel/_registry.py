"""Discover agent modules in a directory once, keep them in memory, reload on demand.

Loading is atomic per file: a file that fails to import or breaks the contract is reported
with its path and reason and skipped, and when it was already loaded the last good version
keeps serving. Calls in flight hold their own `Agent`, so a reload never drops them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType

from ._agent import Agent
from ._exceptions import AgentLoadError, AgentNotFound

logger = logging.getLogger(__name__)

_MODULE_PREFIX = "sel_otel_agents."


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
    """The agents found in one directory, looked up by name from memory."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
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
        """Re-read the directory: load new and changed files, drop deleted ones.

        A directory that is not there (gone for a moment during a deploy, say) changes
        nothing: it is reported as failed and the agents loaded keep serving.
        """
        if not self.directory.is_dir():
            logger.warning("agents directory %s does not exist", self.directory)
            self.failures = MappingProxyType({self.directory: "directory does not exist"})
            return ReloadReport(failed=dict(self.failures))
        files = {
            path.stem: path
            for path in sorted(self.directory.glob("*.py"))
            if not path.name.startswith("_")
        }
        added: list[str] = []
        updated: list[str] = []
        failed: dict[Path, str] = {}
        for name, path in files.items():
            try:
                source = path.read_bytes()
            except OSError as exc:
                failed[path] = f"cannot read: {exc}"
                continue
            digest = hashlib.blake2b(source, digest_size=16).digest()
            previous = self._loaded.get(name)
            if previous is not None and previous.digest == digest:
                continue
            try:
                loaded = _load(name, path, digest)
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
        logger.info("agents reloaded from %s: %s", self.directory, report)
        return report


def _load(name: str, path: Path, digest: bytes) -> _Loaded:
    """Import `path` as a fresh module; on failure leave `sys.modules` as it was."""
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
        spec.loader.exec_module(module)
        agent = Agent.from_module(name, module, path)
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
