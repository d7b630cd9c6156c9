"""Secret-looking values never reach a span."""

from __future__ import annotations

import pytest

from sel_otel._redact import REDACTED, scrub, span_content


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("login password=hunter2 now", "hunter2"),
        ("HOST_EXEC_TOKEN=abc123def456", "abc123def456"),
        ('{"api_key": "k-123456"}', "k-123456"),
        ("curl -H 'Authorization: Bearer abcdefghijklmnop'", "abcdefghijklmnop"),
        ("redis://user:s3cr3t@cache:6379/0", "s3cr3t"),
        ("token MTA1234567890123456789012.GhIjKl.abcdefghijklmnopqrstuvwxyz1234", "GhIjKl.abc"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlMTIz", "eyJhbGciOiJIUzI1NiJ9"),
        ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abc"),
        ("aws AKIAABCDEFGHIJKLMNOP", "AKIAABCDEFGHIJKLMNOP"),
        ("secret: 'quoted value'", "quoted value"),
        ("redis://:s3cr3t@cache:6379/0", "s3cr3t"),
        ("deploy --token abc123def456", "abc123def456"),
        ("curl -u admin:hunter2 https://example.test", "hunter2"),
        ("tok github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_pat_"),
    ],
)
def test_secret_values_are_redacted(text: str, secret: str) -> None:
    scrubbed = scrub(text)
    assert secret not in scrubbed
    assert REDACTED in scrubbed


@pytest.mark.parametrize(
    "text", ["uname -a", "df -h /var", "2**10 / 4", "Europe/Paris", "ls -u /tmp", "grep -rn auth"]
)
def test_ordinary_inputs_are_kept(text: str) -> None:
    assert scrub(text) == text


def test_span_content_is_scrubbed_then_cut() -> None:
    assert span_content("x" * 10, 4) == "xxx…"
    assert span_content("password=abc", 100) == f"password={REDACTED}"
    assert span_content("short", 100) == "short"
