"""Bot settings from the environment, `sel-otel bot` without a token, and shutdown."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, cast

import aiohttp
import discord
import pytest

from sel_otel import ConfigError
from sel_otel._bot import serve
from sel_otel._bot_settings import BotSettings
from sel_otel._exceptions import StartupError
from tests.test_cli import sel_otel
from tests.waiting import wait_until


def test_settings_are_read_from_the_environment() -> None:
    settings = BotSettings.from_env(
        {
            "DISCORD_TOKEN": " abc.def ",
            "SEL_DISCORD_GUILD_ID": "123456789012345678",
            "SEL_DISCORD_OWNER_IDS": "1, 2",
            "SEL_DISCORD_ALLOWED_USER_IDS": "3 4,5",
            "SEL_DISCORD_ALLOWED_ROLE_IDS": "6",
            "SEL_DISCORD_COOLDOWN": "2.5",
            "SEL_DISCORD_MESSAGE_PREFIX": "on",
        }
    )
    assert settings == BotSettings(
        token="abc.def",
        guild_id=123456789012345678,
        owner_ids=frozenset({1, 2}),
        allowed_user_ids=frozenset({3, 4, 5}),
        allowed_role_ids=frozenset({6}),
        cooldown=2.5,
        message_prefix=True,
    )
    assert "abc.def" not in repr(settings)


def test_defaults_sync_globally_and_leave_the_prefix_off() -> None:
    settings = BotSettings.from_env({"DISCORD_TOKEN": "t"})
    assert settings.guild_id is None
    assert settings.owner_ids == settings.allowed_user_ids == settings.allowed_role_ids == set()
    assert (settings.cooldown, settings.message_prefix) == (3.0, False)


def test_a_missing_token_names_the_variable_and_the_console() -> None:
    with pytest.raises(ConfigError, match=r"DISCORD_TOKEN is not set.*sel-otel console"):
        BotSettings.from_env({"DISCORD_TOKEN": "  "})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SEL_DISCORD_GUILD_ID", "my-server"),
        ("SEL_DISCORD_GUILD_ID", "1,2"),
        ("SEL_DISCORD_OWNER_IDS", "1,@me"),
        ("SEL_DISCORD_ALLOWED_ROLE_IDS", "-5"),
        ("SEL_DISCORD_COOLDOWN", "-1"),
        ("SEL_DISCORD_COOLDOWN", "nan"),
        ("SEL_DISCORD_COOLDOWN", "inf"),
        ("SEL_DISCORD_COOLDOWN", "1e309"),
        ("SEL_DISCORD_MESSAGE_PREFIX", "maybe"),
    ],
)
def test_invalid_values_are_configuration_errors_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        BotSettings.from_env({"DISCORD_TOKEN": "t", name: value})


def test_sel_otel_bot_without_a_token_exits_2_pointing_to_the_console() -> None:
    done = sel_otel("bot", DISCORD_TOKEN="")
    assert done.returncode == 2
    assert "DISCORD_TOKEN is not set" in done.stderr
    assert "sel-otel console" in done.stderr
    assert done.stdout == ""


class FakeClient:
    """Stands in for `discord.Client` in `serve`: start runs until close."""

    def __init__(
        self,
        fail_with: BaseException | None = None,
        fail_when_closed: BaseException | None = None,
        close_delay: float = 0.0,
    ) -> None:
        self.fail_with = fail_with
        self.fail_when_closed = fail_when_closed  # as a login cut short by close() fails
        self.close_delay = close_delay
        self.closed = asyncio.Event()
        self.tokens: list[str] = []

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def start(self, token: str) -> None:
        self.tokens.append(token)
        if self.fail_with is not None:
            raise self.fail_with
        await self.closed.wait()
        if self.fail_when_closed is not None:
            raise self.fail_when_closed

    async def close(self) -> None:
        await asyncio.sleep(self.close_delay)
        self.closed.set()


async def test_serve_closes_the_client_when_asked_to_stop() -> None:
    client = FakeClient()
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(client, "tok", stop))  # type: ignore[arg-type]
    await wait_until(lambda: client.tokens, "serve to start the client")
    assert client.tokens == ["tok"] and not serving.done()
    stop.set()
    await asyncio.wait_for(serving, timeout=2)
    assert client.closed.is_set()


async def test_serve_cancelled_closes_the_client_and_leaves_signals_to_its_caller() -> None:
    client = FakeClient()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: None)
    try:
        serving = asyncio.create_task(serve(client, "tok"))  # type: ignore[arg-type]
        await wait_until(lambda: client.tokens, "serve to start the client")
        serving.cancel()  # what `sel-otel bot` does on SIGTERM
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert client.closed.is_set()
        # The caller's handler is still in place (removing it restores the default action,
        # under which a second SIGTERM during clean-up would kill the process).
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def test_a_cancelled_serve_ends_cancelled_whatever_the_closing_client_raises() -> None:
    client = FakeClient(fail_when_closed=OSError("Connector is closed."), close_delay=0.1)
    serving = asyncio.create_task(serve(client, "tok"))  # type: ignore[arg-type]
    await wait_until(lambda: client.tokens, "serve to start the client")
    serving.cancel()  # the connection task then fails: that must not replace the cancellation
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert client.closed.is_set()


async def test_a_rejected_token_becomes_a_configuration_error() -> None:
    client = FakeClient(fail_with=discord.LoginFailure("Improper token has been passed."))
    with pytest.raises(ConfigError, match="DISCORD_TOKEN was rejected"):
        await serve(client, "bad")  # type: ignore[arg-type]
    assert client.closed.is_set()


async def test_a_missing_message_content_intent_says_what_to_change() -> None:
    client = FakeClient(fail_with=discord.PrivilegedIntentsRequired(None))
    with pytest.raises(ConfigError, match="SEL_DISCORD_MESSAGE_PREFIX=off"):
        await serve(client, "tok")  # type: ignore[arg-type]


class _Response:
    """Enough of an aiohttp response for discord.py's HTTP exceptions."""

    status = 403
    reason = "Forbidden"


@pytest.mark.parametrize(
    ("failure", "error", "message"),
    [
        (
            discord.Forbidden(
                cast(aiohttp.ClientResponse, _Response()),
                {"code": 50001, "message": "Missing Access"},
            ),
            ConfigError,
            "applications.commands",
        ),
        # Discord out of reach is no setting's fault: a startup error, not a ConfigError.
        (ConnectionRefusedError(111, "Connection refused"), StartupError, "cannot reach Discord"),
        # discord.py leaves GatewayNotFound.__init__ unannotated.
        (discord.GatewayNotFound(), StartupError, "cannot reach Discord"),  # type: ignore[no-untyped-call]
    ],
)
async def test_start_failures_say_what_to_check(
    failure: BaseException, error: type[StartupError], message: str
) -> None:
    client = FakeClient(fail_with=failure)
    with pytest.raises(error, match=message) as raised:
        await serve(client, "tok")  # type: ignore[arg-type]
    assert isinstance(raised.value, ConfigError) == (error is ConfigError)
    assert client.closed.is_set()


def test_importing_sel_otel_leaves_discord_unloaded_until_the_bot_is_used() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sel_otel; assert 'discord' not in sys.modules; "
        "assert sel_otel.SelBot.__module__ == 'sel_otel._bot'; assert 'discord' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
