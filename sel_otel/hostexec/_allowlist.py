"""The allow-list: which command lines may run, loaded and validated from JSON.

```json
{
  "roots": ["/var/log"],
  "commands": [
    {"argv": ["uname", "-a"]},
    {"argv": ["cat", "--", "<path>"]},
    {"argv": ["find", "<path>", "-name", "<glob>"], "timeout": 30}
  ]
}
```
An entry's `argv` is matched token by token against the user's command line. Literal
tokens must be typed exactly, except `--`, which is always placed in the executed argv
whether or not the user typed it. Placeholders accept one operand of a type
(`OperandType`); `<path>` operands must resolve under one of `roots`, through directories
that only root or the service's user can change (see `_policy`): a root such as /var/log
owned by root and not group- or world-writable qualifies, anything under /tmp does not.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError

_DEFAULT_RESOURCE = "default_allowlist.json"
_MAX_TIMEOUT = 3600.0
#: Never a root: /proc/<pid>/environ holds every process's environment, the service's too.
_PROC = Path("/proc")


class OperandType(Enum):
    """What a placeholder accepts; no operand may start with `-`."""

    PATH = "path"  # an absolute path, resolved, under an allowed root
    GLOB = "glob"  # a file-name pattern: letters, digits, `._+@%,=:-` and `*?[]`, no `/`
    TEXT = "text"  # free printable ASCII text, such as a search string
    WORD = "word"  # letters, digits and `._@:+-`, such as a unit or interface name

    @property
    def placeholder(self) -> str:
        return f"<{self.value}>"


_PLACEHOLDERS = {kind.placeholder: kind for kind in OperandType}

Part = str | OperandType


@dataclass(frozen=True)
class Entry:
    """One allowed command: literal tokens and typed placeholders, and its timeout."""

    pattern: tuple[Part, ...]
    timeout: float | None = None  # None: the service's default timeout

    def __str__(self) -> str:
        return " ".join(
            part if isinstance(part, str) else part.placeholder for part in self.pattern
        )


@dataclass(frozen=True)
class AllowList:
    """Allowed commands, in matching order, and the roots `<path>` operands must stay under."""

    entries: tuple[Entry, ...]
    roots: tuple[Path, ...] = ()

    @classmethod
    def load(cls, path: Path | None = None) -> AllowList:
        """Load a JSON allow-list file, or the built-in default when `path` is None."""
        if path is None:
            source = "the built-in allow-list"
            text = resources.files(__package__).joinpath(_DEFAULT_RESOURCE).read_text("utf-8")
        else:
            source = str(path)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"allow-list {source} cannot be read: {exc}") from exc
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"allow-list {source} is invalid: {exc}") from exc

    @classmethod
    def from_json(cls, data: Any) -> AllowList:
        """Validate decoded JSON; raises ValueError or TypeError naming the problem."""
        if not isinstance(data, dict):
            raise TypeError("expected an object with 'commands' and optional 'roots'")
        unknown = set(data) - {"roots", "commands"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        roots = tuple(_root(raw) for raw in _list(data.get("roots", []), "roots"))
        entries = tuple(_entry(raw) for raw in _list(data.get("commands"), "commands"))
        if not entries:
            raise ValueError("'commands' is empty")
        for entry in entries:
            if OperandType.PATH in entry.pattern and not roots:
                raise ValueError(f"{entry} takes a <path> but no 'roots' are configured")
        return cls(entries=entries, roots=roots)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{what!r} must be a list")
    return value


def _root(raw: Any) -> Path:
    if not isinstance(raw, str) or not os.path.isabs(raw):
        raise ValueError(f"root {raw!r} must be an absolute path")
    root = Path(os.path.realpath(raw))
    if root == Path("/") or root == _PROC or _PROC in root.parents:
        raise ValueError(f"root {raw!r} would expose the whole system or process environments")
    return root


def _entry(raw: Any) -> Entry:
    if not isinstance(raw, dict):
        raise TypeError(f"command {raw!r} must be an object with 'argv'")
    unknown = set(raw) - {"argv", "timeout"}
    if unknown:
        raise ValueError(f"command {raw!r} has unknown keys {sorted(unknown)}")
    argv = _list(raw.get("argv"), "argv")
    if not argv or not all(isinstance(token, str) and token for token in argv):
        raise ValueError(f"command {raw!r}: 'argv' must be a non-empty list of non-empty strings")
    pattern = tuple(_part(token) for token in argv)
    if not isinstance(pattern[0], str) or pattern[0] == "--":
        raise ValueError(f"command {raw!r}: argv[0] must be a program name")
    timeout = raw.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= _MAX_TIMEOUT
    ):
        raise ValueError(f"command {raw!r}: 'timeout' must be a number in (0, {_MAX_TIMEOUT:g}]")
    return Entry(pattern=pattern, timeout=None if timeout is None else float(timeout))


def _part(token: str) -> Part:
    if token.startswith("<") and token.endswith(">"):
        try:
            return _PLACEHOLDERS[token]
        except KeyError:
            raise ValueError(
                f"unknown placeholder {token!r}; known: {sorted(_PLACEHOLDERS)}"
            ) from None
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError(f"literal {token!r} must be printable ASCII without spaces")
    return token
