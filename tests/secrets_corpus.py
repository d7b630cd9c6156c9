"""Secret shapes from the rules of public secret scanners (gitleaks, detect-secrets,
trufflehog), in the places they turn up, and harmless look-alikes.

Every value is made up: the random parts are drawn from a fixed seed, so none is a real
credential and no scanner has a reason to flag this file for a literal key.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "_-"
BASE64 = ALNUM + "+/"
HEX = "0123456789abcdef"
UPPER_ALNUM = string.ascii_uppercase + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits


def fake(alphabet: str, length: int, seed: str) -> str:
    """`length` characters of `alphabet`, the same for the same seed."""
    return "".join(random.Random(seed).choices(alphabet, k=length))


def digits(length: int, seed: str) -> str:
    return str(random.Random(seed).randint(10 ** (length - 1), 10**length - 1))


def aws_secret_key(seed: str) -> str:
    """40 base64 characters, as AWS secret access keys are: both cases, digits, few slashes."""
    key = fake(BASE64, 40, seed)
    while not (
        any(c.islower() for c in key)
        and any(c.isupper() for c in key)
        and sum(c.isdigit() for c in key) >= 2
        and key.count("/") < 4
    ):
        seed += "+"
        key = fake(BASE64, 40, seed)
    return key


@dataclass(frozen=True)
class Secret:
    """`text` as it might reach a span or a log, and the `secret` in it that must go."""

    shape: str
    text: str
    secret: str


def _secret(shape: str, template: str, secret: str) -> Secret:
    return Secret(shape, template.format(secret), secret)


_SNOWFLAKE = digits(19, "snowflake")
_TELEGRAM = f"{digits(10, 'telegram id')}:AA{fake(URLSAFE, 33, 'telegram')}"
_AZURE_KEY = fake(BASE64, 86, "azure account key") + "=="

SECRETS: tuple[Secret, ...] = (
    # Chat platforms: what a bot sees first
    _secret(
        "discord webhook",
        f"https://discord.com/api/webhooks/{_SNOWFLAKE}/{{}}",
        fake(URLSAFE, 68, "discord webhook"),
    ),
    _secret(
        "discord webhook, discordapp.com, API version",
        f"curl -d @msg.json https://discordapp.com/api/v10/webhooks/{_SNOWFLAKE}/{{}}?wait=true",
        fake(URLSAFE, 68, "discordapp webhook"),
    ),
    _secret(
        "discord bot token",
        "bot.run('{}')",
        f"MT{fake(ALNUM, 24, 'd1')}.{fake(URLSAFE, 6, 'd2')}.{fake(URLSAFE, 38, 'd3')}",
    ),
    _secret("telegram bot token", "TELEGRAM_BOT={}", _TELEGRAM),
    _secret("telegram bot token, bare", "echo {} | wc -c", _TELEGRAM),
    _secret(
        "telegram bot token in the API URL",
        "GET https://api.telegram.org/bot{}/getUpdates",
        f"{digits(9, 'tg2')}:AA{fake(URLSAFE, 33, 'tg2')}",
    ),
    _secret("slack bot token", "slack: {}", f"xoxb-{digits(12, 's1')}-{fake(ALNUM, 24, 's1')}"),
    _secret("slack user token", "{}", f"xoxp-{digits(12, 's2')}-{fake(ALNUM, 32, 's2')}"),
    _secret("slack app token", "{}", f"xapp-1-A{fake(UPPER_ALNUM, 10, 's3')}-{digits(13, 's3')}"),
    _secret(
        "slack webhook",
        "https://hooks.slack.com/services/{}",
        f"T{fake(UPPER_ALNUM, 8, 'sw')}/B{fake(UPPER_ALNUM, 10, 'sw')}/{fake(ALNUM, 24, 'sw')}",
    ),
    # Cloud providers
    _secret(
        "aws access key id",
        "aws configure set aws_access_key_id {}",
        "AKIA" + fake(UPPER_ALNUM, 16, "a1"),
    ),
    _secret("aws temporary access key id", "key {} expired", "ASIA" + fake(UPPER_ALNUM, 16, "a2")),
    _secret("aws secret key, bare, as a grep pattern", "grep -rn {} /etc", aws_secret_key("a3")),
    _secret("aws secret key, bare, quoted", 'creds = ("AKIA…", "{}")', aws_secret_key("a4")),
    _secret("aws secret key in a config", "aws_secret_access_key = {}", aws_secret_key("a5")),
    _secret(
        "aws session token", "AWS_SESSION_TOKEN={}", "IQoJb3JpZ2luX2Vj" + fake(BASE64, 200, "a6")
    ),
    _secret(
        "azure storage connection string",
        "DefaultEndpointsProtocol=https;AccountName=devstore1;AccountKey={};"
        "EndpointSuffix=core.windows.net",
        _AZURE_KEY,
    ),
    _secret(
        "azure service bus connection string",
        "Endpoint=sb://ns1.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={}",
        fake(BASE64, 43, "sb") + "=",
    ),
    _secret("azure storage key variable", "AZURE_STORAGE_ACCOUNT_KEY={}", _AZURE_KEY),
    _secret(
        "azure sas url",
        "https://acct.blob.core.windows.net/c/f.txt?sv=2022-11-02&se=2030-01-01&sig={}",
        fake(ALNUM, 43, "sas") + "%3D",
    ),
    _secret(
        "azure ad client secret",
        "client_credential: {}",
        f"{fake(ALNUM, 3, 'ad')}8Q~{fake(URLSAFE + '.~', 34, 'ad')}",
    ),
    _secret(
        "google api key",
        "https://maps.googleapis.com/maps/api/geocode/json?key={}",
        "AIza" + fake(URLSAFE, 35, "g1"),
    ),
    _secret(
        "google oauth client secret",
        '"client_secret_value": "{}"',
        "GOCSPX-" + fake(URLSAFE, 28, "g2"),
    ),
    _secret(
        "google oauth access token",
        "gcloud returned {} for the call",
        "ya29." + fake(URLSAFE, 120, "g3"),
    ),
    _secret("alibaba access key id", "{}", "LTAI" + fake(ALNUM, 20, "ali")),
    _secret("digitalocean token", "doctl auth init -t {}", "dop_v1_" + fake(HEX, 64, "do")),
    _secret("databricks token", "{}", "dapi" + fake(HEX, 32, "dbx")),
    _secret("heroku api key", "{}", "HRKU-AA" + fake(URLSAFE, 58, "hk")),
    _secret("fly.io token", "{}", "fo1_" + fake(URLSAFE, 43, "fly")),
    _secret("supabase token", "{}", "sbp_" + fake(HEX, 40, "sb")),
    _secret("pulumi token", "{}", "pul-" + fake(HEX, 40, "pul")),
    _secret(
        "tailscale auth key",
        "tailscale up --auth-key {}",
        f"tskey-auth-k{fake(ALNUM, 17, 'ts')}-{fake(ALNUM, 33, 'ts')}",
    ),
    _secret(
        "cloudflare origin ca key",
        "{}",
        f"v1.0-{fake(HEX, 24, 'cf')}-{fake(HEX, 146, 'cf')}",
    ),
    _secret(
        "hashicorp vault token", "VAULT_ADDR=x vault login {}", "hvs." + fake(URLSAFE, 90, "hv")
    ),
    _secret(
        "terraform cloud token",
        "{}",
        f"{fake(LOWER_ALNUM, 14, 'tf')}.atlasv1.{fake(URLSAFE, 67, 'tf')}",
    ),
    # Code hosting and registries
    _secret(
        "github personal token",
        "git clone https://x:{}@github.com/o/r",
        "ghp_" + fake(ALNUM, 36, "gh1"),
    ),
    _secret("github oauth token", "{}", "gho_" + fake(ALNUM, 36, "gh2")),
    _secret("github app token", "{}", "ghs_" + fake(ALNUM, 36, "gh3")),
    _secret("github refresh token", "{}", "ghr_" + fake(ALNUM, 76, "gh4")),
    _secret("github fine-grained token", "{}", "github_pat_" + fake(ALNUM + "_", 82, "gh5")),
    _secret(
        "github token as URL user", "https://{}@github.com/o/r.git", "ghp_" + fake(ALNUM, 36, "gh6")
    ),
    _secret("gitlab personal token", "{}", "glpat-" + fake(URLSAFE, 20, "gl1")),
    _secret("gitlab deploy token", "{}", "gldt-" + fake(URLSAFE, 20, "gl2")),
    _secret("gitlab runner registration token", "{}", "GR1348941" + fake(URLSAFE, 20, "gl3")),
    _secret("npm token", "//registry.npmjs.org/:_authToken={}", "npm_" + fake(ALNUM, 36, "npm")),
    _secret("pypi token", "twine upload -p {}", "pypi-AgEIcHlwaS5vcmc" + fake(URLSAFE, 60, "pypi")),
    # Payments, mail and messaging
    _secret("stripe secret key", "{}", "sk_live_" + fake(ALNUM, 99, "st1")),
    _secret("stripe restricted key", "{}", "rk_live_" + fake(ALNUM, 99, "st2")),
    _secret("stripe webhook secret", "{}", "whsec_" + fake(ALNUM, 32, "st3")),
    _secret("square access token", "{}", "sq0atp-" + fake(URLSAFE, 22, "sq1")),
    _secret("square oauth secret", "{}", "sq0csp-" + fake(URLSAFE, 43, "sq2")),
    _secret(
        "sendgrid key", "SENDGRID={}", f"SG.{fake(URLSAFE, 22, 'sg')}.{fake(URLSAFE, 43, 'sg')}"
    ),
    _secret(
        "sendgrid key, bare", "{}", f"SG.{fake(URLSAFE, 22, 'sg2')}.{fake(URLSAFE, 43, 'sg2')}"
    ),
    _secret("twilio api key", "{}", "SK" + fake(HEX, 32, "tw")),
    _secret("mailgun key", "{}", "key-" + fake(HEX, 32, "mg")),
    _secret("mailchimp key", "{}", fake(HEX, 32, "mc") + "-us6"),
    _secret("shopify token", "{}", "shpat_" + fake(HEX, 32, "shop")),
    # AI platforms
    _secret("openai key", "OPENAI={}", "sk-proj-" + fake(URLSAFE, 156, "oai")),
    _secret("anthropic key", "{}", "sk-ant-api03-" + fake(URLSAFE, 95, "ant")),
    _secret("hugging face token", "{}", "hf_" + fake(ALNUM, 34, "hf")),
    _secret("groq key", "{}", "gsk_" + fake(ALNUM, 52, "groq")),
    _secret("replicate token", "{}", "r8_" + fake(ALNUM, 37, "r8")),
    _secret("perplexity key", "{}", "pplx-" + fake(ALNUM, 48, "pplx")),
    _secret("xai key", "{}", "xai-" + fake(ALNUM, 80, "xai")),
    _secret("langsmith key", "{}", f"lsv2_pt_{fake(HEX, 32, 'ls')}_{fake(HEX, 10, 'ls')}"),
    # SaaS
    _secret("atlassian api token", "{}", "ATATT3xFfGF0" + fake(URLSAFE, 180, "atl")),
    _secret("linear key", "{}", "lin_api_" + fake(ALNUM, 40, "lin")),
    _secret("postman key", "{}", f"PMAK-{fake(HEX, 24, 'pm')}-{fake(HEX, 34, 'pm')}"),
    _secret("grafana cloud token", "{}", "glc_" + fake(ALNUM, 60, "gc") + "=="),
    _secret(
        "grafana service account token",
        "{}",
        f"glsa_{fake(ALNUM, 32, 'gsa')}_{fake(HEX, 8, 'gsa')}",
    ),
    _secret("new relic key", "{}", "NRAK-" + fake(UPPER_ALNUM, 27, "nr")),
    _secret("sentry token", "{}", "sntrys_" + fake(ALNUM, 80, "sn")),
    _secret(
        "sentry dsn",
        "SENTRY_DSN=https://{}@o123456.ingest.sentry.io/4505",
        fake(HEX, 32, "dsn"),
    ),
    _secret("notion token", "{}", f"ntn_{digits(11, 'nt')}{fake(ALNUM, 35, 'nt')}"),
    _secret("figma token", "{}", "figd_" + fake(URLSAFE, 40, "fig")),
    _secret("doppler token", "{}", "dp.pt." + fake(ALNUM, 43, "dp")),
    _secret(
        "mapbox secret token", "{}", f"sk.eyJ1{fake(URLSAFE, 60, 'mb')}.{fake(URLSAFE, 22, 'mb')}"
    ),
    _secret("facebook access token", "{}", "EAACEdEose0cBA" + fake(ALNUM, 150, "fb")),
    _secret(
        "twitter bearer token",
        "{}",
        "A" * 22 + fake(ALNUM, 60, "tw") + "%3D" + fake(ALNUM, 20, "tw"),
    ),
    _secret("age secret key", "{}", "AGE-SECRET-KEY-1" + fake(UPPER_ALNUM, 58, "age")),
    # Keys, tokens and passwords in generic places
    _secret(
        "jwt",
        "session {}",
        f"eyJhbGciOiJIUzI1NiJ9.eyJ{fake(URLSAFE, 40, 'jwt')}.{fake(URLSAFE, 43, 'jwt')}",
    ),
    _secret(
        "pem private key",
        "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----",
        fake(BASE64, 64, "rsa"),
    ),
    _secret(
        "openssh private key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----",
        fake(BASE64, 70, "ossh"),
    ),
    _secret(
        "pgp private key block",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{}\n-----END PGP PRIVATE KEY BLOCK-----",
        fake(BASE64, 64, "pgp"),
    ),
    _secret("postgres url", "postgresql://app:{}@db:5432/app", fake(ALNUM, 16, "pg")),
    _secret(
        "mongodb srv url", "mongodb+srv://admin:{}@cluster0.example.net/", fake(ALNUM, 16, "mongo")
    ),
    _secret(
        "bearer header", "curl -H 'Authorization: Bearer {}' https://api.x", fake(URLSAFE, 40, "bh")
    ),
    _secret("api key header", "x-api-key: {}", fake(ALNUM, 32, "xak")),
    _secret(
        "token in a query string",
        "https://api.example.com/v1/items?access_token={}&page=2",
        fake(URLSAFE, 40, "qs"),
    ),
    _secret("api key in a query string", "GET /v1/search?q=cats&api_key={}", fake(HEX, 32, "qs2")),
    _secret("netrc", "machine api.example.com login alice password {}", fake(ALNUM, 20, "netrc")),
    _secret("client secret option", "deploy --client-secret {}", fake(ALNUM, 24, "cs")),
    _secret("password in json", '{{"db_password": "{}"}}', fake(ALNUM, 14, "pw")),
)

LOOK_ALIKES: tuple[str, ...] = (
    # model settings and counts
    "temperature=0.7 top_p=0.95 max_tokens=4096",
    "tokenizer: gpt2",
    "prompt_tokens: 12, completion_tokens: 345, total_tokens: 357",
    "token_count=57",
    "token_type=Bearer",
    "model=gpt-4o-mini",
    # prose about tokens and passwords
    "invalid token provided",
    "token validation failed for user alice",
    "secretary: Jane",
    "password_policy=strict",
    "Login failed: password incorrect",
    # identifiers that are no secrets
    "git show 3f2c9a1b7e4d6c8a0b5f1e2d3c4b5a6978695a4b",
    "https://api.example.com/v1/items/123e4567-e89b-12d3-a456-426614174000",
    "docker pull nginx@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "x-request-id: 0f8fad5b-d9cb-469f-a165-70867728950e",
    "https://discord.com/channels/123456789012345678/987654321098765432",
    "https://discord.com/api/webhooks",
    "user 123456789012345678 joined at 12:34:56",
    "AccountName=devstore1;EndpointSuffix=core.windows.net",
    "ssh-ed25519 " + "AAAAC3NzaC1lZDI1NTE5AAAAI" + fake(BASE64, 43, "ed25519") + " alice@laptop",
    "ThisIsAVeryLongClassNameWithVersion2Impl",
    "/home/alice/Projects/Sel2024/ReleaseNotes/Index.md",
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "echo aGVsbG8gd29ybGQ=",
    "key-value store",
    "sk-learn",
    # settings that name a secret without holding one
    "HOST_EXEC_TOKEN_FILE=/run/secrets/host_exec_token",
    "docker login --password-stdin registry.example.com",
    "auth_url=https://login.example.com/oauth2/token",
    "ssh -o PasswordAuthentication=no host",
    "git log --author=alice",
    "grep -rn password= /etc",
    "Europe/Paris",
    "uname -a",
)
