"""The allow-list file format and the policy that turns command lines into argvs."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from sel_otel._exceptions import ConfigError
from sel_otel.hostexec import AllowList, Approved, OperandType, Policy, Refused


def _policy(root: Path, *commands: dict[str, Any], max_length: int = 1024) -> Policy:
    allowlist = AllowList.from_json({"roots": [str(root)], "commands": list(commands)})
    return Policy(allowlist, max_length=max_length, default_timeout=15.0)


def _approved(policy: Policy, line: str) -> Approved:
    decision = policy.check(line)
    assert isinstance(decision, Approved), decision
    return decision


def _refused(policy: Policy, line: str) -> Refused:
    decision = policy.check(line)
    assert isinstance(decision, Refused), decision
    return decision


def test_default_allowlist_loads_with_slow_entries_at_30s() -> None:
    policy = Policy(AllowList.load(), default_timeout=15.0)
    assert _approved(policy, "uname -a").timeout == 15.0
    assert _approved(policy, "fastfetch").argv == ("fastfetch",)
    assert _approved(policy, "ip -brief addr").argv == ("ip", "-brief", "addr")
    assert _approved(policy, "find /var/log -name '*.log'").timeout == 30.0
    assert _approved(policy, "grep -rn error /var/log").timeout == 30.0


def test_default_allowlist_roots_exclude_system_secrets() -> None:
    policy = Policy(AllowList.load())
    for line in ("cat /etc/shadow", "cat /proc/self/environ", "ls /root", "ls /home"):
        assert _refused(policy, line).reason == "outside_roots"


def test_exact_entry_runs_its_argv(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"argv": ["df", "-h"], "timeout": 3})
    approved = _approved(policy, "  df   -h ")
    assert approved.argv == ("df", "-h")
    assert approved.timeout == 3.0


def test_exact_entry_refuses_extra_and_missing_arguments(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"argv": ["df", "-h"]})
    refused = _refused(policy, "df -h /")
    assert (refused.status, refused.reason) == (403, "not_allowed")
    assert refused.message == "command not allowed: df -h /"
    assert _refused(policy, "df").reason == "not_allowed"


def test_operands_go_after_a_double_dash_typed_or_not(trusted_tmp: Path) -> None:
    (trusted_tmp / "notes").write_text("x")
    policy = _policy(trusted_tmp, {"argv": ["cat", "--", "<path>"]})
    expected = ("cat", "--", str(trusted_tmp / "notes"))
    assert _approved(policy, f"cat {trusted_tmp}/notes").argv == expected
    assert _approved(policy, f"cat -- {trusted_tmp}/notes").argv == expected


def test_operand_starting_with_dash_is_refused(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"argv": ["grep", "-rn", "--", "<text>", "<path>"]})
    refused = _refused(policy, f"grep -rn -- -f {tmp_path}")
    assert (refused.status, refused.reason) == (403, "option_operand")


def test_path_traversal_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    policy = _policy(root, {"argv": ["cat", "--", "<path>"]})
    assert _refused(policy, f"cat {root}/../secret").reason == "outside_roots"
    assert _refused(policy, "cat relative/file").reason == "relative_path"


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to("/etc/passwd")
    policy = _policy(root, {"argv": ["cat", "--", "<path>"]})
    assert _refused(policy, f"cat {root}/link").reason == "outside_roots"


def test_path_operand_is_passed_resolved(trusted_tmp: Path) -> None:
    (trusted_tmp / "a").mkdir()
    policy = _policy(trusted_tmp, {"argv": ["ls", "--", "<path>"]})
    assert _approved(policy, f"ls {trusted_tmp}/a/../a/.").argv == (
        "ls",
        "--",
        str(trusted_tmp / "a"),
    )


def test_glob_and_word_operands_accept_only_their_characters(trusted_tmp: Path) -> None:
    policy = _policy(
        trusted_tmp,
        {"argv": ["find", "<path>", "-name", "<glob>"]},
        {"argv": ["ip", "addr", "show", "<word>"]},
    )
    assert _approved(policy, f"find {trusted_tmp} -name '*.log'").argv[-1] == "*.log"
    assert _refused(policy, f"find {trusted_tmp} -name a/b").reason == "bad_operand"
    assert _approved(policy, "ip addr show eth0").argv[-1] == "eth0"
    assert _refused(policy, "ip addr show 'eth0 x'").reason == "bad_operand"


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        ("", 400, "empty"),
        ("   ", 400, "empty"),
        ("uname -a" + " " * 2000, 400, "too_long"),
        ("uname\x00-a", 400, "control_char"),
        ("uname\t-a", 400, "control_char"),
        ("'uname -a", 400, "unparsable"),
        ("uname \uff0da", 403, "non_ascii"),
        ("uname -a; id", 403, "shell_syntax"),
        ("uname -a && id", 403, "shell_syntax"),
    ],
)
def test_malformed_and_hostile_lines_are_refused_before_matching(
    tmp_path: Path, line: str, status: int, reason: str
) -> None:
    refused = _refused(_policy(tmp_path, {"argv": ["uname", "-a"]}), line)
    assert (refused.status, refused.reason) == (status, reason)


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"commands": [{"argv": ["uptime"]}]}))
    allowlist = AllowList.load(path)
    assert [str(entry) for entry in allowlist.entries] == ["uptime"]
    assert allowlist.roots == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected an object"),
        ({"commands": []}, "'commands' is empty"),
        ({"commands": [{"argv": ["ls"]}], "extra": 1}, "unknown keys"),
        ({"commands": [{"argv": ["ls", "<file>"]}]}, "unknown placeholder"),
        ({"commands": [{"argv": ["<path>"]}], "roots": ["/tmp"]}, "argv[0] must be"),
        ({"commands": [{"argv": ["cat", "<path>"]}]}, "no 'roots'"),
        ({"commands": [{"argv": ["ls"]}], "roots": ["/"]}, "whole system"),
        ({"commands": [{"argv": ["ls"]}], "roots": ["/proc/1"]}, "process environments"),
        ({"commands": [{"argv": ["ls"]}], "roots": ["tmp"]}, "absolute"),
        ({"commands": [{"argv": ["ls"], "timeout": 0}]}, "'timeout'"),
        ({"commands": [{"argv": ["ls"], "timeout": True}]}, "'timeout'"),
        ({"commands": [{"argv": ["ls -la"]}]}, "without spaces"),
        ({"commands": [{"argv": []}]}, "non-empty list"),
    ],
)
def test_invalid_allowlist_file_is_a_config_error(tmp_path: Path, data: Any, message: str) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="invalid") as caught:
        AllowList.load(path)
    assert message in str(caught.value)


def test_missing_allowlist_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        AllowList.load(tmp_path / "absent.json")


def test_placeholders_cover_every_operand_type() -> None:
    data = {
        "roots": ["/var/log"],
        "commands": [{"argv": ["x", *(f"<{t.value}>" for t in OperandType)]}],
    }
    assert AllowList.from_json(data).entries[0].pattern[1:] == tuple(OperandType)


# -- the trusted-path rule: no one but root or the service's user can swap a component --------

_AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="changing ownership needs root")
_OTHER_ID = 12345


def _cat_policy(root: Path) -> Policy:
    return _policy(root, {"argv": ["cat", "--", "<path>"]}, {"argv": ["ls", "--", "<path>"]})


def _tree(root: Path) -> Path:
    """`root/d/file`, all owned by the test's user, mode 755/644."""
    (root / "d").mkdir()
    (root / "d" / "file").write_text("x")
    return root / "d"


def test_trusted_tree_is_allowed(trusted_tmp: Path) -> None:
    directory = _tree(trusted_tmp)
    policy = _cat_policy(trusted_tmp)
    assert policy.untrusted_roots() == []
    assert _approved(policy, f"cat {directory}/file").argv[-1] == str(directory / "file")
    assert _approved(policy, f"ls {directory}").argv[-1] == str(directory)
    assert _approved(policy, f"cat {directory}/absent/file").argv[-1].endswith("absent/file")


@_AS_ROOT
def test_directory_owned_by_another_user_is_refused(trusted_tmp: Path) -> None:
    directory = _tree(trusted_tmp)
    os.chown(directory, _OTHER_ID, _OTHER_ID)
    policy = _cat_policy(trusted_tmp)
    refused = _refused(policy, f"cat {directory}/file")
    assert (refused.status, refused.reason) == (403, "untrusted_path")
    assert refused.detail == f"{directory} is writable by uid {_OTHER_ID} (its owner)"
    assert _refused(policy, f"ls {directory}").reason == "untrusted_path"  # the operand itself
    (trusted_tmp / "other").write_text("y")
    assert _approved(policy, f"cat {trusted_tmp}/other")  # a sibling stays readable


@_AS_ROOT
def test_root_owned_by_another_user_refuses_every_path_and_is_reported(trusted_tmp: Path) -> None:
    directory = _tree(trusted_tmp)
    os.chown(trusted_tmp, _OTHER_ID, _OTHER_ID)
    policy = _cat_policy(trusted_tmp)
    assert _refused(policy, f"cat {directory}/file").reason == "untrusted_path"
    assert [p.detail for p in policy.untrusted_roots()] == [
        f"{trusted_tmp} is writable by uid {_OTHER_ID} (its owner)"
    ]


@_AS_ROOT
def test_group_writable_directory_is_refused_unless_the_group_is_trusted(
    trusted_tmp: Path,
) -> None:
    directory = _tree(trusted_tmp)
    directory.chmod(0o775)
    os.chown(directory, -1, _OTHER_ID)
    policy = _cat_policy(trusted_tmp)
    refused = _refused(policy, f"cat {directory}/file")
    assert refused.detail == f"{directory} is writable by group gid {_OTHER_ID}"
    os.chown(directory, -1, 0)  # root's group
    assert _approved(policy, f"cat {directory}/file")


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o757])
def test_world_writable_directory_is_refused_even_when_sticky(trusted_tmp: Path, mode: int) -> None:
    directory = _tree(trusted_tmp)
    directory.chmod(mode)
    policy = _cat_policy(trusted_tmp)
    refused = _refused(policy, f"cat {directory}/file")
    assert refused.detail == f"{directory} is writable by everyone"


def test_a_writable_file_in_a_trusted_directory_is_allowed(trusted_tmp: Path) -> None:
    directory = _tree(trusted_tmp)
    (directory / "file").chmod(0o666)  # its content may change, not what the name points at
    assert _approved(_cat_policy(trusted_tmp), f"cat {directory}/file")


def test_paths_under_a_world_writable_tmp_are_refused(tmp_path: Path) -> None:
    top = Path(tmp_path.parts[0], tmp_path.parts[1])  # /tmp, or wherever pytest keeps them
    if not top.stat().st_mode & stat.S_IWOTH:
        pytest.skip(f"{top} is not world-writable here")
    (tmp_path / "file").write_text("x")
    refused = _refused(_cat_policy(tmp_path), f"cat {tmp_path}/file")
    assert refused.detail == f"{top} is writable by everyone"


def test_default_root_var_log_is_trusted_on_a_stock_system() -> None:
    info = os.stat("/var/log")
    if info.st_uid != 0 or info.st_mode & 0o002 or (info.st_mode & 0o020 and info.st_gid != 0):
        pytest.skip("/var/log is writable beyond root here (for example by group syslog)")
    policy = Policy(AllowList.load())
    assert policy.untrusted_roots() == []
    assert _approved(policy, "ls /var/log").argv == ("ls", "--", "/var/log")


#: Directories of tools and environments, not of the project.
_NOT_THE_PROJECT = re.compile(r"^(\.git|\.venv|.*_cache|.*\.egg-info|__pycache__|build|dist)$")


def test_the_project_calls_it_the_allow_list_everywhere() -> None:
    """Messages, code, documentation and tests use one word: allow-list (README's)."""
    root = Path(__file__).resolve().parents[2]
    other_word = re.compile("white" + r"[\s_-]?" + "list", re.IGNORECASE)
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if not _NOT_THE_PROJECT.match(d)]
        for name in files:
            path = Path(directory, name)
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):  # not text
                continue
            found += [
                f"{path.relative_to(root)}:{text.count(chr(10), 0, match.start()) + 1}"
                for match in other_word.finditer(text)
            ]
    assert not found


def _program_in(directory: Path, name: str = "sel-test-tool") -> str:
    program = directory / name
    program.write_text("#!/bin/sh\necho planted\n", encoding="utf-8")
    program.chmod(0o755)
    return name


def test_a_program_found_where_others_can_write_is_refused(trusted_tmp: Path) -> None:
    shared = trusted_tmp / "shared-bin"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may put a program of that name there
    name = _program_in(shared)
    allowlist = AllowList.from_json({"roots": [], "commands": [{"argv": [name]}]})
    policy = Policy(allowlist, program_path=f"/nonexistent{os.pathsep}{shared}")
    refused = _refused(policy, name)
    assert (refused.status, refused.reason) == (403, "untrusted_program")
    assert "writable by everyone" in refused.logged
    [problem] = policy.untrusted_program_directories()
    assert str(shared) in problem.message


def test_a_program_found_in_a_trusted_directory_runs(trusted_tmp: Path) -> None:
    name = _program_in(trusted_tmp)
    allowlist = AllowList.from_json({"roots": [], "commands": [{"argv": [name]}]})
    policy = Policy(allowlist, program_path=str(trusted_tmp))
    assert _approved(policy, name).argv == (name,)
    assert policy.untrusted_program_directories() == []
