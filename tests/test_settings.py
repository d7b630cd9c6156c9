"""Settings of the runtime, the bot and the host-exec service: every number in range, and
`--help` listing every variable a command reads, from the settings' own declarations."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from typing import Any

import pytest

from sel_otel import BotSettings, ConfigError, Settings
from sel_otel._settings import _VARIABLE, settings_help
from sel_otel.hostexec import HostExecSettings

from .conftest import CLI, ROOT, cli_environment

CLASSES = (Settings, BotSettings, HostExecSettings)
#: Just enough for each class to be built, so that the variable under test decides.
REQUIRED = {"DISCORD_TOKEN": "t", "HOST_EXEC_TOKEN": "t" * 32}


def _names(field: dataclasses.Field[Any]) -> tuple[str, ...]:
    """The variables a settings field is read from."""
    names: tuple[str, ...] = field.metadata[_VARIABLE].names
    return names


def _variables(cls: type[Any]) -> list[str]:
    return [name for f in dataclasses.fields(cls) for name in _names(f)]


def _numeric(cls: type[Any]) -> list[str]:
    """The variables of `cls` whose field holds a number (`int`, `float`, or either or None)."""
    hints = typing.get_type_hints(cls)
    numbers = {int, float}
    return [
        name
        for f in dataclasses.fields(cls)
        if {hints[f.name], *typing.get_args(hints[f.name])} & numbers
        for name in _names(f)
    ]


NUMERIC = [(cls, name) for cls in CLASSES for name in _numeric(cls)]


def _class_reading(name: str) -> Any:
    return next(cls for cls, numeric in NUMERIC if numeric == name)


def test_every_field_is_declared_with_its_variable() -> None:
    for cls in CLASSES:
        for field in dataclasses.fields(cls):
            assert _VARIABLE in field.metadata, f"{cls.__name__}.{field.name}"


def test_the_numeric_settings_are_found() -> None:
    names = {name for _, name in NUMERIC}
    assert {"SEL_TRACE_CONTENT_MAX", "SEL_AGENT_TIMEOUT", "SEL_DISCORD_COOLDOWN"} <= names
    assert {"HOST_EXEC_PORT", "HOST_EXEC_LISTEN_FD", "HOST_EXEC_TIMEOUT"} <= names


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "-inf", "1e10"])
@pytest.mark.parametrize(("cls", "name"), NUMERIC, ids=[name for _, name in NUMERIC])
def test_an_out_of_range_number_is_refused_naming_the_variable(
    cls: Any, name: str, value: str
) -> None:
    # 1e10 seconds is past the longest wait the platform's locks accept (about 292 years).
    with pytest.raises(ConfigError, match=rf"^{name}='{re.escape(value)}' is invalid: "):
        cls.from_env({**REQUIRED, name: value})


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("SEL_TRACE_CONTENT_MAX", "-5", "must be a whole number of at least 1"),
        ("SEL_TRACE_CONTENT_MAX", "0", "must be a whole number of at least 1"),
        ("SEL_AGENT_THREADS", "0", "must be a whole number of at least 1"),
        ("SEL_AGENT_TIMEOUT", "0", "must be a finite number greater than 0"),
        ("SEL_TELEMETRY_SHUTDOWN_TIMEOUT", "1e300", "at most 9223372036"),
        ("SEL_DISCORD_COOLDOWN", "-1", "must be a finite number of seconds >= 0"),
        ("HOST_EXEC_LISTEN_FD", "4294967296", "3 to 2147483647"),
    ],
)
def test_the_refusal_says_what_is_accepted(name: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)):
        _class_reading(name).from_env({**REQUIRED, name: value})


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SEL_TRACE_CONTENT_MAX", "1", 1),
        ("SEL_DISCORD_COOLDOWN", "0", 0.0),
        ("HOST_EXEC_PORT", "0", 0),
        ("HOST_EXEC_LISTEN_FD", "3", 3),
    ],
)
def test_the_ends_of_each_range_are_accepted(name: str, value: str, expected: object) -> None:
    cls = _class_reading(name)
    field = next(f for f in dataclasses.fields(cls) if (name,) == _names(f))
    assert getattr(cls.from_env({**REQUIRED, name: value}), field.name) == expected


def test_sel_otel_refuses_a_negative_trace_content_max_at_start() -> None:
    done = subprocess.run(
        [*CLI, "run", "calc", "1"],
        capture_output=True,
        text=True,
        env=cli_environment(SEL_TRACE_CONTENT_MAX="-5"),
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "SEL_TRACE_CONTENT_MAX='-5' is invalid: must be a whole number of at least 1" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def _help(*command: str) -> str:
    done = subprocess.run(
        [*command, "--help"],
        capture_output=True,
        text=True,
        env=cli_environment(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _listed(cls: type[Any]) -> list[str]:
    """The entries `--help` must show for `cls`: each variable with its default."""
    return [line for line in settings_help(cls, "").splitlines()[1:] if not line[2].isspace()]


@pytest.mark.parametrize(
    ("command", "classes"),
    [
        ((*CLI, "console"), (Settings,)),
        ((*CLI, "run"), (Settings,)),
        ((*CLI, "bot"), (BotSettings, Settings)),
        ((*CLI, "host-exec"), (HostExecSettings,)),
        ((sys.executable, "-m", "sel_otel.hostexec"), (HostExecSettings,)),
    ],
    ids=["console", "run", "bot", "host-exec", "python -m sel_otel.hostexec"],
)
def test_help_lists_every_variable_the_command_reads_with_its_default(
    command: tuple[str, ...], classes: tuple[type[Any], ...]
) -> None:
    shown = _help(*command)
    for cls in classes:
        for entry in _listed(cls):
            assert entry in shown.splitlines(), entry
    assert "OTEL_*" in shown


def test_help_shows_the_defaults_a_reader_can_use() -> None:
    runtime = settings_help(Settings, "settings")
    assert "  SEL_TRACE_CONTENT_MAX (default: 256)" in runtime
    assert "  SEL_AGENT_TIMEOUT (default: 30)" in runtime
    assert "  SEL_TRACE_CONTENT (default: true)" in runtime
    host_exec = settings_help(HostExecSettings, "settings")
    assert "  HOST_EXEC_TOKEN_FILE or HOST_EXEC_TOKEN (required)" in host_exec
    assert "  HOST_EXEC_CHILD_ENV (default: LANG,LANGUAGE,LC_ALL,LC_CTYPE," in host_exec
    assert "  DISCORD_TOKEN (required)" in settings_help(BotSettings, "settings")


def test_the_readme_documents_every_variable() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for cls in CLASSES:
        for name in _variables(cls):
            assert f"`{name}`" in readme, name
