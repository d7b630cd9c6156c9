"""The public API is what `sel_otel.__all__` lists, and all of it is importable."""

from __future__ import annotations

import sel_otel


def test_all_exports_exist_once() -> None:
    assert len(set(sel_otel.__all__)) == len(sel_otel.__all__)
    missing = [name for name in sel_otel.__all__ if not hasattr(sel_otel, name)]
    assert missing == []


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
