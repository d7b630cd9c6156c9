"""`sel-otel serve`: requests over HTTP, answered as the console answers a line."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import CLI, cli_environment, free_port


@pytest.fixture
def served() -> Iterator[str]:
    """A `sel-otel serve` process on a free loopback port: its base URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)],
        env=cli_environment(HOST_EXEC_URL="http://127.0.0.1:9"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "sel-otel serve did not answer within 30 s"
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
        assert process.returncode == 128 + 15, errors  # ended by SIGTERM, in order


def test_a_request_is_answered_with_how_the_call_went(served: str) -> None:
    first = httpx.post(f"{served}/request", json={"text": "agent:calc 6*7", "user": "u1"}).json()
    again = httpx.post(f"{served}/request", json={"text": "agent:calc 6*7", "user": "u2"}).json()
    assert first.pop("text").endswith("= 42")
    assert first == {"ok": True, "cached": False, "coalesced": False, "error_type": None}
    assert again["cached"] is True
    failed = httpx.post(f"{served}/request", json={"text": "agent:calc 1/0"}).json()
    assert (failed["ok"], failed["error_type"]) == (False, "InvalidExpression")
    stats = httpx.post(f"{served}/request", json={"text": "/sel_agent_stats scope:this"}).json()
    assert "Calls: 3 (cached: 1)" in stats["text"]


def test_a_request_that_is_not_a_json_object_with_text_is_refused(served: str) -> None:
    assert httpx.post(f"{served}/request", content=b"agent:calc 1").status_code == 400
    assert httpx.post(f"{served}/request", json={"user": "u"}).status_code == 400
