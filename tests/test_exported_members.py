"""The public API is what `sel_otel.__all__` lists, and all of it is importable."""

from __future__ import annotations

import sel_otel


def test_all_exports_exist_once() -> None:
    assert len(set(sel_otel.__all__)) == len(sel_otel.__all__)
    missing = [name for name in sel_otel.__all__ if not hasattr(sel_otel, name)]
    assert missing == []
    # The package root imports its names on first use, from this map: it lists them all.
    assert sorted(sel_otel._MODULE_OF) == sorted(sel_otel.__all__)


def test_public_members_come_from_private_modules() -> None:
    import types

    for name in sel_otel.__all__:
        member = getattr(sel_otel, name)
        if isinstance(member, types.UnionType):  # a type alias such as Request
            continue
        module = getattr(member, "__module__", "sel_otel._")
        assert module.startswith("sel_otel._"), (name, module)


def test_every_public_name_of_the_package_is_exported() -> None:
    import types

    public = {
        name
        for name, value in vars(sel_otel).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    } - {"TYPE_CHECKING"}
    assert public <= set(sel_otel.__all__), sorted(public - set(sel_otel.__all__))


def test_the_public_api_is_what_users_write_and_nothing_more() -> None:
    # The agent contract, the runtime and its results, the errors, the settings, telemetry
    # and the app. Adding a name here is a promise to keep it: prefer a private module.
    assert sel_otel.__all__ == [
        "Agent",
        "AgentBusy",
        "AgentContext",  # what an agent's setup(context) gets
        "AgentError",
        "AgentFailed",
        "AgentLoadError",
        "AgentNotFound",
        "AgentOutputError",
        "AgentRegistry",
        "AgentReplyError",
        "AgentResult",
        "AgentRuntime",
        "AgentStats",
        "AgentThreadsExhausted",
        "AgentTimeout",
        "BotSettings",
        "ConfigError",
        "LRUMemoryCache",
        "ResultCache",
        "SelApp",
        "SelBot",
        "SelOtelError",
        "Settings",
        "StatsStoreError",
        "Telemetry",
        "code_span",
        "first_word",
        "read_stats",
        "stats_reader",
    ]


def test_a_name_outside_the_public_api_is_not_an_attribute() -> None:
    import pytest

    with pytest.raises(AttributeError, match="Lookup"):
        _ = sel_otel.Lookup
