"""Hostile command lines against the service with its built-in allow-list.

Every line would create the canary file if any part of it ran (through a shell, an option
that executes commands, a config file or a look-alike character). None may run: each is
answered 400 or 403, the canary never appears, and the service logs no command run.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sel_otel.hostexec._local import LocalHostExec

from .conftest import post_exec

C = "CANARY"  # replaced by the canary's path

HOSTILE = [
    # command separators and operators
    f"uname -a; touch {C}",
    f"uname -a;touch {C}",
    f"uname -a && touch {C}",
    f"uname -a || touch {C}",
    f"uname -a | touch {C}",
    f"uname -a & touch {C}",
    f"uname -a |& touch {C}",
    # substitutions and expansions
    f"$(touch {C})",
    f"uname -a $(touch {C})",
    f"uname `touch {C}`",
    f"uname -a <(touch {C})",
    f"uname${{IFS}}-a;touch${{IFS}}{C}",
    f"{{touch,{C}}}",
    f"uname -a \\; touch {C}",
    # redirections
    f"uname -a > {C}",
    f"uname -a >> {C}",
    f"uname -a 2>{C}",
    f"uname -a &>{C}",
    "uname -a < /etc/passwd",
    # control characters and line breaks
    f"uname -a\ntouch {C}",
    f"uname -a\rtouch {C}",
    f"uname -a\x00touch {C}",
    f"uname -a\x00; touch {C}",
    f"uname -a\ttouch {C}",
    f"uname -a\x1b[2J touch {C}",
    f"uname -a\x7f touch {C}",
    # interpreters and wrappers
    f"touch {C}",
    f"sh -c 'touch {C}'",
    f"bash -c 'touch {C}'",
    f"/bin/sh -c 'touch {C}'",
    f"env touch {C}",
    f"env -i touch {C}",
    f"xargs -a /etc/hostname touch {C}",
    f"nohup touch {C}",
    f"timeout 5 touch {C}",
    f"busybox touch {C}",
    f"sudo touch {C}",
    f"exec touch {C}",
    f"eval 'touch {C}'",
    f'python3 -c \'open("{C}", "w")\'',
    f"perl -e 'open(F, \">{C}\")'",
    f"awk 'BEGIN {{system(\"touch {C}\")}}'",
    f"IFS=x touch {C}",
    "LD_PRELOAD=/tmp/evil.so uname -a",
    "PATH=/tmp uname -a",
    # options that execute or write, smuggled into allowed commands
    f"find /var/log -name x -exec touch {C} +",
    f"find /var/log -exec touch {C} +",
    f"find /var/log -name '*' -execdir touch {C} +",
    f"find /var/log -name x -fprint {C}",
    "find /var/log -name x -delete",
    "find /var/log -name -delete",
    f"tar --checkpoint=1 --checkpoint-action=exec='touch {C}' -cf /dev/null /var/log",
    f"tar -cf /dev/null /var/log --to-command='touch {C}'",
    f"grep -rn -- --include=x /var/log -f {C}",
    "grep -rn -- -f /var/log",
    f"du -sh -- /var/log --files0-from={C}",
    "tail -- /var/log -f",
    "ls -- --color=always",
    f"fastfetch --config {C}",
    f"fastfetch --command-key 'touch {C}'",
    "ps e",
    "ps auxe",
    "ps aux e",
    f"cp /etc/hostname {C}",
    f"dd if=/dev/zero of={C} count=1",
    f"'uname -a' 'touch {C}'",
    f"uname -a # touch {C}",
    # path traversal and files holding secrets
    "cat /var/log/../../etc/shadow",
    "cat -- /var/log/../../proc/self/environ",
    "cat /proc/1/environ",
    "ls -la -- /var/log/../../root",
    "cat ../../../../etc/passwd",
    f"cat {C}/../../../etc/passwd",
    # unicode look-alikes
    f"uname -a\u037e touch {C}",  # Greek question mark, looks like ;
    f"uname -a\uff1b touch {C}",  # fullwidth semicolon
    f"uname -a \uff5c touch {C}",  # fullwidth vertical bar
    f"uname -a \uff06\uff06 touch {C}",  # fullwidth ampersands
    f"\uff54ouch {C}",  # fullwidth t
    f"tou\u0441h {C}",  # Cyrillic es
    "uname \u2013a",  # en dash
    "uname \u2212a",  # minus sign
    f"uname -a\u200b; touch {C}",  # zero-width space
    f"uname -a \u202e{C} hcuot",  # right-to-left override
    f"uname\u00a0-a; touch {C}",  # no-break space
    # very long lines
    "uname -a" + " " * 2000 + f"; touch {C}",
    f"touch {C} " + "A" * 5000,
]


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("canary") / "canary"
    yield path
    assert not path.exists()


def test_the_suite_is_large_enough() -> None:
    assert len(HOSTILE) >= 50
    assert len(set(HOSTILE)) == len(HOSTILE)


def test_the_canary_would_appear_if_a_command_ran(canary: Path) -> None:
    probe = canary.with_name("probe")
    subprocess.run(["touch", str(probe)], check=True, timeout=10)
    assert probe.exists()
    probe.unlink()


def _assert_nothing_ran(canary: Path, service: LocalHostExec) -> None:
    assert not canary.exists()
    assert " exec " not in service.log_path.read_text()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("line", HOSTILE)
async def test_hostile_line_is_refused_and_runs_nothing(
    default_service: LocalHostExec, canary: Path, line: str
) -> None:
    command = line.replace(C, str(canary))
    response = await post_exec(default_service, {"command": command})
    assert response.status_code in (400, 403), response.text
    body = response.json()
    assert body["error"]
    assert "exit_code" not in body
    _assert_nothing_ran(canary, default_service)
