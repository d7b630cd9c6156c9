"""Secrets in command lines reach neither the exec span nor the service log."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sel_otel._redact import REDACTED
from sel_otel.hostexec import HostExecSettings, create_app

from ..secrets_corpus import SECRETS, Secret

TOKEN = "secrets-test-token-0123456789"
#: Secrets a user may grep for, bare: nothing but their shape gives them away.
BARE = [s for s in SECRETS if s.text == s.secret or "bare" in s.shape]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest_asyncio.fixture
async def client(
    tmp_path: Path, file_root: Path, exporter: InMemorySpanExporter
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    allowlist = tmp_path / "allowlist.json"
    allowlist.write_text(
        json.dumps(
            {
                "roots": [str(file_root)],
                "commands": [{"argv": ["grep", "-rn", "--", "<text>", "<path>"]}],
            }
        ),
        encoding="utf-8",
    )
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = HostExecSettings(token=TOKEN, allowlist=allowlist, host="127.0.0.1")
    async with TestClient(TestServer(create_app(settings, tracer_provider=provider))) as test:
        yield test
    provider.shutdown()


async def _post(client: TestClient[web.Request, web.Application], command: str) -> int:
    response = await client.post(
        "/exec", json={"command": command}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    await response.read()
    return response.status


def test_the_corpus_has_bare_secrets_to_grep_for() -> None:
    assert len(BARE) >= 40


@pytest.mark.parametrize("case", BARE, ids=lambda case: case.shape)
async def test_a_bare_secret_grepped_for_is_scrubbed_from_the_span_and_the_audit_line(
    client: TestClient[web.Request, web.Application],
    exporter: InMemorySpanExporter,
    file_root: Path,
    caplog: pytest.LogCaptureFixture,
    case: Secret,
) -> None:
    caplog.set_level(logging.INFO, logger="sel_otel.hostexec")
    secret = case.secret.replace("'", "")
    assert await _post(client, f"grep -rn -- '{secret}' {file_root}") == 200
    [span] = [s for s in exporter.get_finished_spans() if s.name == "exec grep"]
    assert span.attributes is not None
    assert span.attributes["process.command_args"] == (
        "grep",
        "-rn",
        "--",
        REDACTED,
        str(file_root),
    )
    [audit] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("exec (")]
    assert secret[-10:] not in audit and REDACTED in audit


@pytest.mark.parametrize(
    "case",
    [s for s in SECRETS if s.shape.startswith(("discord webhook", "sendgrid", "azure storage"))],
    ids=lambda case: case.shape,
)
async def test_a_refused_command_line_is_logged_scrubbed(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture, case: Secret
) -> None:
    caplog.set_level(logging.INFO, logger="sel_otel.hostexec")
    assert await _post(client, f"curl -d x {case.text}") == 403
    [refusal] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert case.secret[-10:] not in refusal and REDACTED in refusal
