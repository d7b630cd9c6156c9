"""Secret-looking values never reach a span."""

from __future__ import annotations

import pytest

from sel_otel._redact import REDACTED, redact, scrub, scrub_argv, span_content

from .conftest import AgentWriter, RuntimeFactory, TelemetryFixture
from .secrets_corpus import LOOK_ALIKES, SECRETS, Secret, aws_secret_key, fake


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
        ("curl -H 'Authorization: Token 9f8e7d6c5b4a39281706f5e4d3c2b1a0' x", "9f8e7d6c5b4a"),
        ("curl -H 'Cookie: sessionid=3f9a8b7c6d5e4f3a2b1c' https://x", "3f9a8b7c6d5e"),
        ("stripe sk_live_51HxyzABCDEFGHIJKLMNOPQRSTUV", "sk_live_51Hxyz"),
        ("mysql -u root -pS3cretPass db", "S3cretPass"),
        ("key AIzaSyA1234567890abcdefghijklmnopqrstuv", "AIzaSyA123"),
        ("gitlab glpat-abcdefghij0123456789", "glpat-abcdefghij"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "MIIEow"),
        ("deploy --api-key=abc123def456", "abc123def456"),
        ("export DISCORD_TOKEN=abc123def456", "abc123def456"),
        ("curl -H 'x-api-key: k-123456' https://x", "k-123456"),
        ("run --password=hunter2", "hunter2"),
        ("PGPASSWORD=Zq8vS3cret psql", "Zq8vS3cret"),
        ("JWT_SECRET_KEY=abcd1234", "abcd1234"),
        ('{"accessToken": "tok123456"}', "tok123456"),
        ("dbPassword: hunter2", "hunter2"),
        ("deploy --client-secret xyz123", "xyz123"),
        ("HTTP_AUTHORIZATION=Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("DB_PASS=s3cr3tPass", "s3cr3tPass"),
        ("password => 's3cr3tPass'", "s3cr3tPass"),
        ("mysql -ps3cr3tPass db", "s3cr3tPass"),
        ("docker exec db mysql -u root -ps3cr3tPass", "s3cr3tPass"),
        ("sshpass -p s3cr3tPass ssh host", "s3cr3tPass"),
        ("docker login -u me -p s3cr3tPass registry", "s3cr3tPass"),
        ("ldapsearch -x -D cn=a -w s3cr3tPass", "s3cr3tPass"),
        ("smbclient //h/s -U user%s3cr3tPass", "s3cr3tPass"),
        ("ssh-keygen -t ed25519 -N s3cr3tPass", "s3cr3tPass"),
        ("openssl passwd -6 s3cr3tPass", "s3cr3tPass"),
        ("https://ghp_abcdefghijklmnopqrstuvwx@github.com/o/r.git", "ghp_abcdefghijk"),
        ("https://hooks.slack.com/services/T000/B000/XXXXabcd", "XXXXabcd"),
        ("https://x.blob.core.windows.net/c/f?sv=1&sig=abcDEF123", "abcDEF123"),
        ("<password>s3cr3tPass</password>", "s3cr3tPass"),
        ("npm_abcdefghijklmnopqrstuvwxyz0123456789", "npm_abcdefghij"),
        ("hf_abcdefghijklmnopqrstuvwxyz01234567", "hf_abcdefghij"),
    ],
)
def test_secret_values_are_redacted(text: str, secret: str) -> None:
    scrubbed = scrub(text)
    assert secret not in scrubbed
    assert REDACTED in scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "uname -a",
        "df -h /var",
        "2**10 / 4",
        "Europe/Paris",
        "ls -u /tmp",
        "grep -rn auth",
        "git log --author=alice",
        "grep token /etc/config",
        "grep 'password=' /etc/app.conf",
        "grep -rn password= /etc",
        "ssh -o PasswordAuthentication=no host",
        "helm --set auth.enabled=true",
        "bypass=1",
        "ps -U root",
        "ssh git@github.com",
        "ssh-keygen -l -f key.pub",
        "curl 'https://x/api?page=2&size=10'",
        "find /var/lib/mysql -perm 600",
        "find /var/log -name '*.log'",
        "https://example.com/a?b=c",
        "ps aux",
        "mkdir -p /tmp/x",
        "ssh -p 22 host",
        "HOST_EXEC_TOKEN_FILE is unset",
    ],
)
def test_ordinary_inputs_are_kept(text: str) -> None:
    assert scrub(text) == text


def test_span_content_is_scrubbed_then_cut() -> None:
    assert span_content("x" * 10, 4) == "xxx…"
    assert span_content("password=abc", 100) == f"password={REDACTED}"
    assert span_content("short", 100) == "short"


def test_a_secret_that_starts_in_view_is_scrubbed_whole_however_long_the_text() -> None:
    token = "ghp_" + "Z" * 36
    shown = span_content("echo " + token + " " + "x" * 100_000, 20)
    assert "ZZZZ" not in shown and "ghp_" not in shown
    # Scrubbing a long private key brings what follows it into view: it is read whole too.
    pem = "-----BEGIN RSA PRIVATE KEY-----" + "x" * 4090 + "-----END RSA PRIVATE KEY-----"
    shown = span_content(f"key {pem} {token} tail", 120)
    assert "Z9" not in shown and "ZZZ" not in shown and "ghp_" not in shown
    assert span_content("A" * 2000, 256) == "A" * 255 + "…"  # no space: cut all the same


@pytest.mark.parametrize(
    "unit",
    [
        *("auth.", "a_", "token-", "mysql -p", "Authorization: ", "eyJ-", "xoxb-", "sk-", "ldap "),
        *("\n", "discord.com/api/webhooks/1/", "A" * 22 + "%", "1234567:", "/bot1", "token 1"),
        *("sk.eyJ.", "glc_/", "Ab1/", "Ab1+", "x.atlasv1.", "sntrys_/", "0Q~", "machine a login "),
    ],
)
def test_hostile_repetitions_are_scrubbed_in_linear_time(unit: str) -> None:
    # A pattern with nested quantifiers would take hours here (the suite's timeout fails
    # it); these finish at once.
    text = unit * 20_000 + " no value"
    assert scrub(text).endswith((" no value", REDACTED))  # untouched, or a header value


def test_the_corpus_holds_at_least_60_secret_shapes_and_their_look_alikes() -> None:
    assert len({secret.shape for secret in SECRETS}) >= 60
    assert len(LOOK_ALIKES) >= 30


@pytest.mark.parametrize("case", SECRETS, ids=lambda case: case.shape)
def test_every_secret_shape_of_the_corpus_is_scrubbed_whole(case: Secret) -> None:
    scrubbed = scrub(case.text)
    assert REDACTED in scrubbed
    # Neither the secret nor a head or tail of it is left.
    assert case.secret not in scrubbed
    assert case.secret[:10] not in scrubbed and case.secret[-10:] not in scrubbed, scrubbed


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_every_look_alike_of_the_corpus_is_kept(text: str) -> None:
    assert scrub(text) == text


@pytest.mark.parametrize(
    ("text", "rules"),
    [
        ("https://discord.com/api/webhooks/1234/" + fake("abc", 68, "w"), ("discord_webhook",)),
        ("grep " + aws_secret_key("r"), ("aws_secret_access_key",)),
        (
            "x password=a token=b https://u:p@h/ sk_live_" + "a1" * 8,
            ("secret_key_value", "url_credentials", "stripe_key"),
        ),
        ("uname -a", ()),
    ],
)
def test_redact_names_the_rules_that_matched(text: str, rules: tuple[str, ...]) -> None:
    scrubbed, matched = redact(text)
    assert matched == rules
    assert scrubbed == scrub(text)


def test_a_bare_secret_as_a_command_argument_is_scrubbed() -> None:
    key = aws_secret_key("argv")
    telegram = f"123456789:AA{fake('abcXYZ019_-', 33, 'argv')}"
    assert scrub_argv(["grep", "-rn", "--", key, "/etc"]) == ["grep", "-rn", "--", REDACTED, "/etc"]
    assert scrub_argv(["grep", telegram, "/var/log"]) == ["grep", REDACTED, "/var/log"]


FAIL_WITH_INPUT = "DESCRIPTION = 'd'\ndef run(q):\n    raise ValueError(f'cannot post to {q}')\n"


@pytest.mark.parametrize(
    "case",
    [s for s in SECRETS if s.shape.startswith(("discord webhook", "telegram", "sendgrid", "azure"))]
    + [s for s in SECRETS if s.shape.startswith("aws secret key, bare")],
    ids=lambda case: case.shape,
)
async def test_secrets_in_an_input_reach_neither_the_input_nor_the_status_nor_the_exception(
    make_runtime: RuntimeFactory,
    write_agent: AgentWriter,
    telemetry: TelemetryFixture,
    case: Secret,
) -> None:
    write_agent("post", FAIL_WITH_INPUT)
    result = await make_runtime(trace_content_max=4096).run("post", case.text)
    assert not result.ok
    [span] = telemetry.finished()
    [event] = span.events
    recorded = {
        "input": str(span.attributes["sel.agent.input"]),
        "status": span.status.description or "",
        "exception.message": str(event.attributes["exception.message"]),
    }
    for where, text in recorded.items():
        assert REDACTED in text, where
        assert case.secret[-10:] not in text, where
