"""The allow-list file format and the policy that turns command lines into argvs."""

from __future__ import annotations

import json
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


def test_operands_go_after_a_double_dash_typed_or_not(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("x")
    policy = _policy(tmp_path, {"argv": ["cat", "--", "<path>"]})
    expected = ("cat", "--", str(tmp_path / "notes"))
    assert _approved(policy, f"cat {tmp_path}/notes").argv == expected
    assert _approved(policy, f"cat -- {tmp_path}/notes").argv == expected


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


def test_path_operand_is_passed_resolved(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    policy = _policy(tmp_path, {"argv": ["ls", "--", "<path>"]})
    assert _approved(policy, f"ls {tmp_path}/a/../a/.").argv == ("ls", "--", str(tmp_path / "a"))


def test_glob_and_word_operands_accept_only_their_characters(tmp_path: Path) -> None:
    policy = _policy(
        tmp_path,
        {"argv": ["find", "<path>", "-name", "<glob>"]},
        {"argv": ["ip", "addr", "show", "<word>"]},
    )
    assert _approved(policy, f"find {tmp_path} -name '*.log'").argv[-1] == "*.log"
    assert _refused(policy, f"find {tmp_path} -name a/b").reason == "bad_operand"
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
