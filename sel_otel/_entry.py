"""The `sel-otel` console script: the CLI, or one line about a setting the SDK refuses as it
loads (it reads `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT` when imported, before any code of ours)."""

from __future__ import annotations

import sys


def main() -> int:
    """Run the CLI (`sel_otel._cli.main`); exit with status 2 and one line on standard error
    when an `OTEL_*` setting keeps the SDK from loading, as for any setting that is wrong."""
    try:
        from ._cli import main as cli
    except ValueError as exc:
        if not str(exc).startswith("OTEL_"):
            raise
        print(f"sel-otel: {exc}", file=sys.stderr)
        return 2
    return cli()
