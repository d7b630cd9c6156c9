"""Policy: decide whether a command line may run, and turn it into an argv.

Checks run in order, before anything is executed, and the first failure wins: length,
control characters (NUL included), non-ASCII characters (look-alikes of `;`, `|`, `-`...),
shell syntax, quoting, then a match against the allow-list with typed operands. Nothing
here runs a process or touches a shell; the argv is executed as is.

A `<path>` operand is resolved and must lie under an allowed root, and its path must be
trusted: every directory from `/` down to its parent (and the operand itself when it is a
directory) is owned by root or by the service's user, and writable by no one else (group
write only for root's group or the service's own group; never world-writable, sticky or
not; no ACL granting write). The command opens the path later, by name; only then can no
other user swap a component for a symbolic link between the check and the open.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from ._allowlist import AllowList, Entry, OperandType, Part

#: Characters that mean something to a shell. No shell ever sees the line, so they are
#: refused as a sign of an injection attempt rather than because they would work.
_SHELL_SYNTAX = frozenset(";&|<>$`\\(){}")
_GLOB = re.compile(r"[A-Za-z0-9._+@%,=:*?\[\]-]+")
_WORD = re.compile(r"[A-Za-z0-9._@:+-]+")
_MAX_OPERAND = 256
#: Holds a directory's POSIX access ACL; the group bits of its mode are then the ACL mask.
_ACL_XATTR = "system.posix_acl_access"


@dataclass(frozen=True)
class Approved:
    """A command line that may run: the argv to execute and its timeout in seconds."""

    argv: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class Refused:
    """A command line that must not run.

    `status` is the HTTP status (400 malformed, 403 not allowed), `reason` a
    low-cardinality code, `message` the explanation shown to the user and `detail` what only
    the service's log may say (who can write a directory, for an untrusted path).
    """

    status: int
    reason: str
    message: str
    detail: str = ""

    @property
    def logged(self) -> str:
        """What the service's log says of this refusal."""
        return self.detail or self.message


def _malformed(reason: str, message: str) -> Refused:
    return Refused(400, reason, message)


def _forbidden(reason: str, message: str) -> Refused:
    return Refused(403, reason, message)


class Policy:
    """Checks command lines against an allow-list.

    A program named without a directory is looked up in `program_path` (the commands' PATH,
    when given) and must pass the trusted-path rule, as `<path>` operands do: a directory of
    the PATH that others can write could otherwise swap `uname` for anything.
    """

    def __init__(
        self,
        allowlist: AllowList,
        *,
        max_length: int = 1024,
        default_timeout: float = 15.0,
        program_path: str | None = None,
    ) -> None:
        self._allowlist = allowlist
        self._max_length = max_length
        self._default_timeout = default_timeout
        self._program_path = program_path
        self._trust = _Trust(
            owners=frozenset({0, os.geteuid()}), groups=frozenset({0, os.getegid()})
        )

    def untrusted_roots(self) -> list[Refused]:
        """Why each allowed root that fails the trusted-path rule is refused (for start-up logs)."""
        problems = (self._trust.check(root) for root in self._allowlist.roots)
        return [problem for problem in problems if problem is not None]

    def untrusted_program_directories(self) -> list[Refused]:
        """Why each directory of `program_path` that fails the trusted-path rule does (for
        start-up logs)."""
        directories = [Path(entry) for entry in (self._program_path or "").split(os.pathsep)]
        problems = (self._trust.check(entry) for entry in directories if entry.is_absolute())
        return [problem for problem in problems if problem is not None]

    def check(self, line: str) -> Approved | Refused:
        """Approve `line` with its argv, or refuse it with a reason."""
        refused = self._check_characters(line)
        if refused is not None:
            return refused
        try:
            tokens = shlex.split(line)
        except ValueError as exc:
            return _malformed("unparsable", f"cannot parse command: {exc}")
        first_problem: Refused | None = None
        for entry in self._allowlist.entries:
            aligned = _align(entry.pattern, tokens)
            if aligned is None:
                continue
            result = self._approve(entry, aligned)
            if isinstance(result, Approved):
                return result
            first_problem = first_problem or result
        return first_problem or _forbidden("not_allowed", f"command not allowed: {line.strip()}")

    def _check_characters(self, line: str) -> Refused | None:
        if not line.strip():
            return _malformed("empty", "empty command")
        if len(line) > self._max_length:
            return _malformed(
                "too_long", f"command is {len(line)} characters, over {self._max_length}"
            )
        for char in line:
            if char.isascii() and not char.isprintable():
                return _malformed("control_char", f"control character U+{ord(char):04X}")
        for char in line:
            if not char.isascii():
                return _forbidden("non_ascii", f"non-ASCII character U+{ord(char):04X}")
        syntax = sorted(_SHELL_SYNTAX.intersection(line))
        if syntax:
            return _forbidden("shell_syntax", f"shell syntax is not allowed: {' '.join(syntax)}")
        return None

    def _approve(self, entry: Entry, tokens: list[str]) -> Approved | Refused:
        argv: list[str] = []
        for part, token in zip(entry.pattern, tokens, strict=True):
            if isinstance(part, str):
                argv.append(part)
                continue
            checked = _check_operand(part, token, self._allowlist.roots, self._trust)
            if isinstance(checked, Refused):
                return checked
            argv.append(checked)
        refused = self._check_program(argv[0])
        if refused is not None:
            return refused
        timeout = self._default_timeout if entry.timeout is None else entry.timeout
        return Approved(argv=tuple(argv), timeout=timeout)

    def _check_program(self, program: str) -> Refused | None:
        """Refuse a program found through `program_path` in a place others can change (one
        not found is left to fail as it runs, reported as not executable)."""
        if self._program_path is None or os.sep in program:
            return None
        found = shutil.which(program, path=self._program_path)
        if found is None:
            return None
        refused = self._trust.check(Path(os.path.realpath(found)))
        if refused is None:
            return None
        message = f"program {program} is not trusted"
        return Refused(403, "untrusted_program", message, refused.detail)


def _align(pattern: tuple[Part, ...], tokens: list[str]) -> list[str] | None:
    """The user's token for each part of `pattern`, or None when the shape differs.

    Literal tokens must match exactly; a literal `--` is optional in the user's line.
    """
    aligned: list[str] = []
    index = 0
    for part in pattern:
        if part == "--":
            if index < len(tokens) and tokens[index] == "--":
                index += 1
            aligned.append("--")
            continue
        if index >= len(tokens):
            return None
        token = tokens[index]
        index += 1
        if isinstance(part, str) and token != part:
            return None
        aligned.append(token)
    return aligned if index == len(tokens) else None


def _check_operand(
    kind: OperandType, token: str, roots: tuple[Path, ...], trust: _Trust
) -> str | Refused:
    if token.startswith("-"):
        return _forbidden("option_operand", f"options are not allowed here: {token}")
    if not token or len(token) > _MAX_OPERAND:
        return _forbidden("bad_operand", f"operand must be 1 to {_MAX_OPERAND} characters")
    if kind is OperandType.PATH:
        return _check_path(token, roots, trust)
    if kind is OperandType.GLOB and not _GLOB.fullmatch(token):
        return _forbidden("bad_operand", f"not a file-name pattern: {token}")
    if kind is OperandType.WORD and not _WORD.fullmatch(token):
        return _forbidden("bad_operand", f"not a plain word: {token}")
    return token


def _check_path(token: str, roots: tuple[Path, ...], trust: _Trust) -> str | Refused:
    if not os.path.isabs(token):
        return _forbidden("relative_path", f"path must be absolute: {token}")
    try:
        resolved = Path(os.path.realpath(token))
    except OSError as exc:  # a link that changed while being followed
        return _untrusted(token, f"path {token} changed while it was checked: {exc.strerror}")
    if not any(resolved == root or root in resolved.parents for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        return _forbidden("outside_roots", f"path {token} is outside the allowed roots ({allowed})")
    refused = trust.check(resolved)
    if refused is not None:  # named as the user wrote it, not as it resolved
        return _untrusted(token, refused.detail)
    return str(resolved)


@dataclass(frozen=True)
class _Trust:
    """The trusted-path rule: who may own, and which groups may write, a path's directories."""

    owners: frozenset[int]
    groups: frozenset[int]

    def check(self, path: Path) -> Refused | None:
        """None when no one outside `owners`/`groups` can change what `path` names."""
        directories = [*reversed(path.parents), path]
        for index, directory in enumerate(directories):
            try:
                info = os.lstat(directory)
            except FileNotFoundError:
                # Nothing below exists, and only a trusted user may create it here.
                return None
            except OSError as exc:
                return _untrusted(path, f"{directory} cannot be checked: {exc.strerror}")
            last = index == len(directories) - 1
            if last and not stat.S_ISDIR(info.st_mode):
                return None  # a file in a trusted directory: it cannot be swapped
            problem = self._writer(directory, info)
            if problem is not None:
                return _untrusted(path, f"{directory} is writable by {problem}")
        return None

    def _writer(self, directory: Path, info: os.stat_result) -> str | None:
        """Who besides the trusted users can change `directory`'s entries, if anyone."""
        if stat.S_ISLNK(info.st_mode):
            return "whoever swapped it for a symbolic link"  # it was resolved a moment ago
        if info.st_uid not in self.owners:
            return f"uid {info.st_uid} (its owner)"
        if info.st_mode & stat.S_IWOTH:
            return "everyone"
        if info.st_mode & stat.S_IWGRP:
            if info.st_gid not in self.groups:
                return f"group gid {info.st_gid}"
            if _has_acl(directory):
                return "the users and groups its ACL names"
        return None


def _has_acl(path: Path) -> bool:
    try:
        os.getxattr(path, _ACL_XATTR, follow_symlinks=False)
    except OSError:
        return False
    return True


def _untrusted(path: str | Path, detail: str) -> Refused:
    """Refuse an untrusted path; who owns or can write what stays in `detail`."""
    return Refused(403, "untrusted_path", f"path {path} is not trusted", detail)
