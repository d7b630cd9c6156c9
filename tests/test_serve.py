"""`sel-otel serve`: requests over HTTP, answered as the console answers a line."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import CLI, cli_environment, free_port


@contextlib.contextmanager
def serving(**env: str) -> Iterator[str]:
    """A `sel-otel serve` process on a free loopback port: its base URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)],
        env=cli_environment(HOST_EXEC_URL="http://127.0.0.1:9", **env),
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


@pytest.fixture
def served() -> Iterator[str]:
    with serving() as url:
        yield url


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
    as_json = {"Content-Type": "application/json"}
    assert httpx.post(f"{served}/request", content=b"x", headers=as_json).status_code == 400
    assert httpx.post(f"{served}/request", json={"user": "u"}).status_code == 400
    # What a web page may send to another origin unasked: never read.
    as_text = {"Content-Type": "text/plain"}
    body = b'{"text": "agent:calc 1"}'
    assert httpx.post(f"{served}/request", content=body, headers=as_text).status_code == 415


OWNERS_ONLY = ["agent:host_exec uname -a", "/sel_agent_reload", "/sel_agent_history"]


def ask(url: str, text: str, token: str | None = None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{url}/request", json={"text": text, "user": "u1"}, headers=headers)


def test_what_only_owners_may_do_is_refused_to_all_when_no_token_is_set(served: str) -> None:
    for text in OWNERS_ONLY:
        refused = ask(served, text, token="anything")
        assert refused.status_code == 403, text
        assert refused.json()["error_type"] == "forbidden"
    assert ask(served, "agent:calc 1+1").json()["ok"]  # ordinary agents need nothing


def test_what_only_owners_may_do_needs_the_serve_token() -> None:
    with serving(SEL_SERVE_TOKEN="s3cret-token") as url:
        for text in OWNERS_ONLY:
            assert ask(url, text).status_code == 403, text
            assert ask(url, text, token="s3cret-tokem").status_code == 403, text
        not_utf8 = {b"Authorization": b"Bearer \xff\xfe"}  # refused, not a server error
        body = {"text": "/sel_agent_reload"}
        assert httpx.post(f"{url}/request", json=body, headers=not_utf8).status_code == 403
        assert ask(url, "/sel_agent_reload", token="s3cret-token").json()["ok"]
        history = ask(url, "/sel_agent_history", token="s3cret-token").json()
        assert history["ok"]
        # The refused host_exec calls are in it, as the bot's refusals are.
        assert history["text"].count("host_exec") == 2 and "forbidden" in history["text"]
        call = ask(url, "agent:host_exec uname -a", token="s3cret-token")
        assert call.status_code == 200  # run: the service at HOST_EXEC_URL is not there
        assert call.json()["error_type"] not in (None, "forbidden")
