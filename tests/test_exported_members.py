"""The public API is what `sel_otel.__all__` lists, and all of it is importable."""

from __future__ import annotations

import sel_otel


def test_all_exports_exist_once() -> None:
    assert len(set(sel_otel.__all__)) == len(sel_otel.__all__)
    missing = [name for name in sel_otel.__all__ if not hasattr(sel_otel, name)]
    assert missing == []


def test_public_members_come_from_private_modules() -> None:
    for name in sel_otel.__all__:
        member = getattr(sel_otel, name)
        module = getattr(member, "__module__", "sel_otel._")
        assert module.startswith("sel_otel._"), (name, module)
