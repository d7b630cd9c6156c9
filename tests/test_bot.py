"""The Discord frontend without Discord: the real slash-command callbacks and message handler,
called with interaction and message objects built for the test, over a real runtime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from sel_otel import ConfigError
from sel_otel import _semconv as names
from sel_otel._bot import SelBot, application_owners
from sel_otel._bot_settings import BotSettings
from sel_otel._commands import CommandHandler
from sel_otel._discord_format import CONTENT_LIMIT
from tests.conftest import AgentWriter, RuntimeFactory, TelemetryFixture

OWNER, ALLOWED, STRANGER, ROLE_MEMBER = 101, 102, 103, 104
ALLOWED_ROLE = 900
GUILD, CHANNEL = 555, 777


# -- test doubles ------------------------------------------------------------------------------


@dataclass
class Snowflake:
    id: int


@dataclass
class User:
    id: int
    roles: list[Snowflake] = field(default_factory=list)
    bot: bool = False


@dataclass
class Sent:
    """One call the frontend made towards Discord."""

    via: str  # "defer", "response", "followup" or "reply"
    content: str | None = None
    embed: discord.Embed | None = None
    ephemeral: bool = False
    thinking: bool = False
    allowed_mentions: discord.AllowedMentions | None = None
    view: discord.ui.View | None = None


class Response:
    def __init__(self, log: list[Sent], fail: bool = False) -> None:
        self._log = log
        self._done = False
        self._fail = fail

    def is_done(self) -> bool:
        return self._done

    async def defer(self, *, ephemeral: bool = False, thinking: bool = False) -> None:
        assert not self._done, "an interaction is acknowledged once"
        self._done = True
        self._log.append(Sent("defer", ephemeral=ephemeral, thinking=thinking))

    async def send_message(self, content: str | None = None, **kwargs: Any) -> None:
        assert not self._done, "an interaction is acknowledged once"
        if self._fail:
            raise RuntimeError("Discord said no")
        self._done = True
        self._log.append(Sent("response", content, **kwargs))

    async def edit_message(self, **kwargs: Any) -> None:
        assert not self._done, "an interaction is acknowledged once"
        self._done = True
        self._log.append(Sent("edit", **kwargs))


class Followup:
    def __init__(self, log: list[Sent], response: Response) -> None:
        self._log = log
        self._response = response

    async def send(self, content: str | None = None, **kwargs: Any) -> None:
        assert self._response.is_done(), "a followup needs an acknowledged interaction"
        self._log.append(Sent("followup", content, **kwargs))


class Interaction:
    def __init__(
        self, user: User, *, guild: bool = True, fail: bool = False, client: Any = None
    ) -> None:
        self.client = client  # the bot the command came to
        self.user = user
        self.guild = Snowflake(GUILD) if guild else None
        self.guild_id = GUILD if guild else None
        self.channel = Snowflake(CHANNEL)
        self.channel_id = CHANNEL
        self.command = None
        self.sent: list[Sent] = []
        self.response = Response(self.sent, fail)
        self.followup = Followup(self.sent, self.response)

    async def original_response(self) -> SentMessage:
        assert self.response.is_done()
        return SentMessage(self.sent)


class SentMessage:
    """The message an interaction was answered with: edits are logged with the rest."""

    def __init__(self, log: list[Sent]) -> None:
        self._log = log

    async def edit(self, **kwargs: Any) -> None:
        self._log.append(Sent("message edit", **kwargs))


class Channel(Snowflake):
    def __init__(self) -> None:
        super().__init__(CHANNEL)
        self.typing_entered = 0

    @contextlib.asynccontextmanager
    async def typing(self) -> AsyncIterator[None]:
        self.typing_entered += 1
        yield


class Message:
    def __init__(self, author: User, content: str) -> None:
        self.author = author
        self.content = content
        self.guild = Snowflake(GUILD)
        self.channel = Channel()
        self.replies: list[Sent] = []

    async def reply(self, content: str | None = None, **kwargs: Any) -> None:
        self.replies.append(Sent("reply", content, **kwargs))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- fixtures ----------------------------------------------------------------------------------

SETTINGS = BotSettings(
    token="test",
    owner_ids=frozenset({OWNER}),
    allowed_user_ids=frozenset({ALLOWED}),
    allowed_role_ids=frozenset({ALLOWED_ROLE}),
    cooldown=10,
    message_prefix=True,
)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A file the privileged agent appends to each time it runs."""
    return tmp_path / "runs.txt"


@pytest.fixture
def agents(write_agent: AgentWriter, marker: Path) -> None:
    write_agent(
        "echo",
        """
        DESCRIPTION = "Say the input back"
        CACHEABLE = False
        def run(query):
            return query
        """,
    )
    write_agent(
        "secret",
        f"""
        DESCRIPTION = "Privileged"
        PRIVILEGED = True
        CACHEABLE = False
        def run(query):
            with open({str(marker)!r}, "a") as runs:
                runs.write("ran\\n")
            return "secret ran"
        """,
    )
    write_agent(
        "slow",
        """
        import asyncio
        DESCRIPTION = "Takes its time"
        CACHEABLE = False
        async def run(query):
            await asyncio.sleep(0.3)
            return "late but here"
        """,
    )
    write_agent(
        "whoami",
        """
        import itertools
        DESCRIPTION = "Counts computations, cached per user"
        CACHE_PER_USER = True
        _calls = itertools.count(1)
        def run(query):
            return f"computation {next(_calls)}"
        """,
    )


BotFactory = Callable[..., SelBot]


@pytest.fixture
async def make_bot(
    agents: None, make_runtime: RuntimeFactory, telemetry: TelemetryFixture
) -> AsyncIterator[BotFactory]:
    bots: list[SelBot] = []

    def make(settings: BotSettings = SETTINGS, **options: Any) -> SelBot:
        commands = CommandHandler(make_runtime(), telemetry.reader)
        bot = SelBot(commands, settings, tracer_provider=telemetry.tracer_provider, **options)
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        await bot.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bot(make_bot: BotFactory, clock: Clock) -> SelBot:
    return make_bot(clock=clock)


async def slash(bot: SelBot, command: str, interaction: Interaction, **arguments: Any) -> None:
    """Invoke the registered slash command's callback as the command tree would."""
    registered = bot.tree.get_command(command)
    assert isinstance(registered, discord.app_commands.Command)
    # The test's Interaction stands in for discord.Interaction: called as the tree calls it.
    callback: Callable[..., Awaitable[Any]] = registered.callback
    interaction.client = bot
    await callback(interaction, **arguments)


def mentions_disabled(sent: Sent) -> bool:
    mentions = sent.allowed_mentions
    return (
        mentions is not None
        and mentions.everyone is False
        and mentions.users is False
        and mentions.roles is False
        and mentions.replied_user is False
    )


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


# -- /sel_agent --------------------------------------------------------------------------------


async def test_sel_agent_answers_at_once_with_mentions_disabled(bot: SelBot) -> None:
    interaction = Interaction(User(STRANGER))
    await slash(bot, "sel_agent", interaction, agent="echo", input="hi @everyone <@123>")
    [sent] = interaction.sent
    assert (sent.via, sent.content, sent.ephemeral) == ("response", "hi @everyone <@123>", False)
    assert mentions_disabled(sent)


async def test_a_call_outlasting_the_window_is_deferred_then_followed_up(
    make_bot: BotFactory, telemetry: TelemetryFixture
) -> None:
    bot = make_bot(defer_after=0.05)
    interaction = Interaction(User(STRANGER))
    await slash(bot, "sel_agent", interaction, agent="slow", input="")
    assert [(s.via, s.thinking, s.ephemeral) for s in interaction.sent] == [
        ("defer", True, False),
        ("followup", False, False),
    ]
    assert interaction.sent[1].content == "late but here"
    assert mentions_disabled(interaction.sent[1])
    [root] = telemetry.finished("discord.command /sel_agent")
    assert root.attributes[names.SEL_DISCORD_DEFERRED] is True


async def test_an_unknown_agent_gets_the_runtimes_answer(bot: SelBot) -> None:
    interaction = Interaction(User(STRANGER))
    await slash(bot, "sel_agent", interaction, agent="nope", input="x")
    [sent] = interaction.sent
    assert sent.content is not None
    assert "Unknown agent 'nope'" in sent.content and "echo" in sent.content


@pytest.mark.parametrize("size", [CONTENT_LIMIT, CONTENT_LIMIT + 1])
async def test_agent_output_is_cut_at_the_content_limit(bot: SelBot, size: int) -> None:
    interaction = Interaction(User(OWNER))
    text = "```\n" + "x" * (size - 4)
    await slash(bot, "sel_agent", interaction, agent="echo", input=text)
    [sent] = interaction.sent
    assert sent.content is not None
    if size == CONTENT_LIMIT:
        assert sent.content == text
    else:
        assert len(sent.content) <= CONTENT_LIMIT
        body, _, note = sent.content.partition("\n_(cut to fit Discord: ")
        assert body.endswith("\n```") and body.count("```") == 2
        assert note.endswith(f"of {size:,} characters shown)_")


# -- authorization and cooldown ----------------------------------------------------------------


async def test_a_privileged_agent_refuses_strangers_and_runs_nothing(
    bot: SelBot, marker: Path, telemetry: TelemetryFixture
) -> None:
    interaction = Interaction(User(STRANGER, roles=[Snowflake(1)]))
    await slash(bot, "sel_agent", interaction, agent="secret", input="")
    [sent] = interaction.sent
    assert sent.via == "response" and sent.ephemeral is True
    assert sent.content is not None and "privileged" in sent.content
    assert runs(marker) == 0
    assert telemetry.finished("invoke_agent secret") == []
    [root] = telemetry.finished("discord.command /sel_agent")
    assert root.attributes[names.SEL_DISCORD_OUTCOME] == names.DISCORD_OUTCOME_FORBIDDEN


@pytest.mark.parametrize(
    "user",
    [User(OWNER), User(ALLOWED), User(ROLE_MEMBER, roles=[Snowflake(1), Snowflake(ALLOWED_ROLE)])],
    ids=["owner", "allowed user", "allowed role"],
)
async def test_a_privileged_agent_runs_for_owners_allowed_users_and_roles(
    bot: SelBot, marker: Path, user: User
) -> None:
    interaction = Interaction(user)
    await slash(bot, "sel_agent", interaction, agent="secret", input="")
    assert [(s.content, s.ephemeral) for s in interaction.sent] == [("secret ran", False)]
    assert runs(marker) == 1


async def test_agent_calls_are_spaced_by_the_users_cooldown(
    bot: SelBot, clock: Clock, telemetry: TelemetryFixture
) -> None:
    first, second, third = (Interaction(User(STRANGER)) for _ in range(3))
    await slash(bot, "sel_agent", first, agent="echo", input="one")
    clock.now += 6.5
    await slash(bot, "sel_agent", second, agent="echo", input="two")
    [refusal] = second.sent
    assert (refusal.content, refusal.ephemeral) == ("⏳ Slow down: try again in 4s.", True)
    assert len(telemetry.finished("invoke_agent echo")) == 1
    other = Interaction(User(ALLOWED))  # the cooldown is per user
    await slash(bot, "sel_agent", other, agent="echo", input="mine")
    assert other.sent[0].content == "mine"
    clock.now += 3.5
    await slash(bot, "sel_agent", third, agent="echo", input="three")
    assert third.sent[0].content == "three"
    outcomes = [
        s.attributes[names.SEL_DISCORD_OUTCOME]
        for s in telemetry.finished("discord.command /sel_agent")
    ]
    assert outcomes == ["ok", "cooldown", "ok", "ok"]


async def test_owners_have_no_cooldown(bot: SelBot) -> None:
    for text in ("one", "two", "three"):
        interaction = Interaction(User(OWNER))
        await slash(bot, "sel_agent", interaction, agent="echo", input=text)
        assert interaction.sent[0].content == text


async def test_a_refused_call_does_not_start_the_cooldown(bot: SelBot) -> None:
    await slash(bot, "sel_agent", Interaction(User(STRANGER)), agent="secret", input="")
    interaction = Interaction(User(STRANGER))
    await slash(bot, "sel_agent", interaction, agent="echo", input="still mine")
    assert interaction.sent[0].content == "still mine"


async def test_the_discord_user_scopes_per_user_cache_entries(
    make_bot: BotFactory, telemetry: TelemetryFixture
) -> None:
    bot = make_bot(BotSettings(cooldown=0))
    replies = []
    for user in (STRANGER, STRANGER, ALLOWED):
        interaction = Interaction(User(user))
        await slash(bot, "sel_agent", interaction, agent="whoami", input="")
        replies.append(interaction.sent[0].content)
    assert replies == ["computation 1", "computation 1", "computation 2"]
    hits = [s.attributes[names.SEL_CACHE_HIT] for s in telemetry.finished("invoke_agent whoami")]
    assert hits == [False, True, False]


# -- autocomplete ------------------------------------------------------------------------------


async def test_agent_names_are_autocompleted_from_the_registry(
    bot: SelBot, write_agent: AgentWriter
) -> None:
    command = bot.tree.get_command("sel_agent")
    assert isinstance(command, discord.app_commands.Command)
    complete = command._params["agent"].autocomplete
    assert callable(complete)
    interaction = Interaction(User(STRANGER), client=bot)
    choices = await complete(interaction, "O")
    # Names containing the text, those starting with it first.
    assert [c.value for c in choices] == ["echo", "slow", "whoami"]
    assert choices[0].name == "echo: Say the input back"
    for index in range(30):
        write_agent(f"tool_{index:02}", 'DESCRIPTION = "t"\ndef run(q):\n    return q\n')
    bot.commands.runtime.registry.reload()
    assert len(await complete(interaction, "")) == 25
    assert [c.value for c in await complete(interaction, "sec")] == ["secret"]


async def test_stats_agent_argument_is_autocompleted_too(bot: SelBot) -> None:
    command = bot.tree.get_command("sel_agent_stats")
    assert isinstance(command, discord.app_commands.Command)
    complete = command._params["agent"].autocomplete
    assert callable(complete)
    interaction = Interaction(User(STRANGER), client=bot)
    assert [c.value for c in await complete(interaction, "ech")] == ["echo"]


# -- /sel_agent_stats, /sel_agents, /sel_agent_reload ------------------------------------------


async def test_stats_embed_is_open_to_everyone(bot: SelBot, clock: Clock) -> None:
    for text in ("a", "b"):
        await slash(bot, "sel_agent", Interaction(User(OWNER)), agent="echo", input=text)
    await slash(bot, "sel_agent", Interaction(User(OWNER)), agent="whoami", input="")
    clock.now += 65
    interaction = Interaction(User(STRANGER))
    await slash(bot, "sel_agent_stats", interaction)
    [sent] = interaction.sent
    assert sent.via == "response" and sent.ephemeral is False and sent.embed is not None
    assert mentions_disabled(sent)
    assert sent.embed.description is not None
    assert "**echo**\n  Calls: 2 (cached: 0)" in sent.embed.description
    assert "**whoami**\n  Calls: 1 (cached: 0)" in sent.embed.description
    fields = {f.name: f.value for f in sent.embed.fields}
    assert fields["Uptime"] == "1m 5s"
    assert fields["Total calls"] == "3 (cached: 0)"


async def test_stats_for_one_agent(bot: SelBot) -> None:
    await slash(bot, "sel_agent", Interaction(User(OWNER)), agent="echo", input="a")
    await slash(bot, "sel_agent", Interaction(User(OWNER)), agent="whoami", input="")
    interaction = Interaction(User(STRANGER))
    await slash(bot, "sel_agent_stats", interaction, agent="whoami")
    embed = interaction.sent[0].embed
    assert embed is not None and embed.description is not None
    assert embed.title == "SEL agent stats: whoami"
    assert "**whoami**" in embed.description and "echo" not in embed.description


async def test_stats_say_what_they_cover_and_an_unknown_agent_is_an_error(bot: SelBot) -> None:
    await slash(bot, "sel_agent", Interaction(User(OWNER)), agent="echo", input="a")
    interaction = Interaction(User(STRANGER))
    await slash(bot, "sel_agent_stats", interaction, scope="this")
    [sent] = interaction.sent
    assert sent.embed is not None and sent.view is None
    fields = {f.name: f.value for f in sent.embed.fields}
    assert fields["Coverage"] == "this instance only (scope:this)"
    unknown = Interaction(User(ALLOWED))  # another user: no cooldown in the way
    await slash(bot, "sel_agent_stats", unknown, agent="no_such")
    [sent] = unknown.sent
    assert sent.ephemeral and sent.content is not None and sent.embed is None
    assert sent.content.startswith("❌ Unknown agent") and "no" in sent.content
    assert sent.content.endswith("Known agents: echo, secret, slow, whoami")


async def press(view: discord.ui.View, label: str, interaction: Interaction) -> None:
    """Press the button `label` as discord.py dispatches a click: the check, then the button."""
    [button] = [b for b in view.children if isinstance(b, discord.ui.Button) and b.label == label]
    assert not button.disabled, label
    if await view.interaction_check(interaction):  # type: ignore[arg-type]
        await button.callback(interaction)  # type: ignore[arg-type]


async def test_stats_too_long_for_one_embed_are_paged_with_buttons_for_the_asker(
    bot: SelBot, write_agent: AgentWriter
) -> None:
    for index in range(60):
        write_agent(f"tool_{index:02}", 'DESCRIPTION = "t"\ndef run(q):\n    return q\n')
    bot.commands.runtime.registry.reload()
    for index in range(60):
        for _ in range(index % 3 + 1):
            await bot.commands.handle(f"agent:tool_{index:02} x")
    asker = Interaction(User(STRANGER))
    await slash(bot, "sel_agent_stats", asker)
    [sent] = asker.sent
    assert sent.via == "response" and sent.embed is not None and sent.view is not None
    pages = sent.view.pages  # type: ignore[attr-defined]
    assert sent.embed is pages[0] and len(pages) >= 2
    assert sent.embed.footer.text == f"Page 1/{len(pages)}"
    assert (sent.embed.description or "").startswith("**tool_")  # the most called first
    # another user may not turn the asker's pages
    other = Interaction(User(OWNER))
    await press(sent.view, "Next ▶", other)
    [refusal] = other.sent
    assert refusal.ephemeral and refusal.content and "whoever asked" in refusal.content
    turned = Interaction(User(STRANGER))
    await press(sent.view, "Next ▶", turned)
    [edit] = turned.sent
    assert edit.via == "edit" and edit.embed is pages[1] and edit.view is sent.view
    back = Interaction(User(STRANGER))
    await press(sent.view, "◀ Previous", back)
    assert back.sent[0].embed is pages[0]
    # when the buttons stop working, the message shows them disabled
    await sent.view.on_timeout()
    [_, disabled] = asker.sent
    assert disabled.via == "message edit" and disabled.view is sent.view
    assert all(getattr(item, "disabled", False) for item in sent.view.children)


async def test_agent_list_is_open_to_everyone(bot: SelBot) -> None:
    interaction = Interaction(User(STRANGER))
    await slash(bot, "sel_agents", interaction)
    [sent] = interaction.sent
    assert sent.embed is not None and sent.embed.description is not None
    assert sent.embed.title == "SEL agents (4)"
    assert "**echo**: Say the input back" in sent.embed.description
    assert "**secret**: Privileged" in sent.embed.description
    assert mentions_disabled(sent)


async def test_reload_is_refused_to_non_owners(bot: SelBot, write_agent: AgentWriter) -> None:
    write_agent("fresh", 'DESCRIPTION = "New"\ndef run(q):\n    return q\n')
    interaction = Interaction(User(ALLOWED))
    await slash(bot, "sel_agent_reload", interaction)
    [sent] = interaction.sent
    assert sent.ephemeral is True and sent.content is not None and "owners" in sent.content
    assert "fresh" not in bot.commands.runtime.registry.agents


async def test_owners_reload_the_agents_and_alone_see_the_report(
    bot: SelBot, write_agent: AgentWriter
) -> None:
    write_agent("fresh", 'DESCRIPTION = "New"\ndef run(q):\n    return q\n')
    interaction = Interaction(User(OWNER))
    await slash(bot, "sel_agent_reload", interaction)
    assert [(s.via, s.ephemeral) for s in interaction.sent] == [
        ("defer", True),
        ("followup", True),
    ]
    assert interaction.sent[1].content == "Agents reloaded: added: fresh"
    assert "fresh" in bot.commands.runtime.registry.agents


# -- agent:NAME INPUT messages -----------------------------------------------------------------


async def test_prefix_message_runs_the_agent_and_replies(bot: SelBot) -> None:
    message = Message(User(STRANGER), "agent:echo hello @here")
    await bot.on_message(message)  # type: ignore[arg-type]
    [reply] = message.replies
    assert reply.content == "hello @here"
    assert mentions_disabled(reply)
    assert message.channel.typing_entered == 1


async def test_prefix_message_follows_the_same_access_rules(bot: SelBot, marker: Path) -> None:
    refused = Message(User(STRANGER), "agent:secret now")
    await bot.on_message(refused)  # type: ignore[arg-type]
    assert refused.replies[0].content is not None and "privileged" in refused.replies[0].content
    assert runs(marker) == 0
    allowed = Message(User(ALLOWED), "agent:secret now")
    await bot.on_message(allowed)  # type: ignore[arg-type]
    assert allowed.replies[0].content == "secret ran"
    assert runs(marker) == 1


async def test_prefix_message_is_cut_to_the_content_limit(bot: SelBot) -> None:
    message = Message(User(OWNER), "agent:echo " + "y" * 5000)
    await bot.on_message(message)  # type: ignore[arg-type]
    content = message.replies[0].content
    assert content is not None and len(content) <= CONTENT_LIMIT
    assert "of 5,000 characters shown" in content


@pytest.mark.parametrize(
    ("author", "content", "prefix"),
    [
        (User(OWNER, bot=True), "agent:echo from a bot", True),
        (User(OWNER), "just chatting about agent:echo", True),
        (User(OWNER), "agent:echo prefix off", False),
    ],
    ids=["bot author", "not a prefix", "prefix disabled"],
)
async def test_other_messages_are_ignored(
    make_bot: BotFactory, telemetry: TelemetryFixture, author: User, content: str, prefix: bool
) -> None:
    bot = make_bot(BotSettings(owner_ids=frozenset({OWNER}), message_prefix=prefix))
    message = Message(author, content)
    await bot.on_message(message)  # type: ignore[arg-type]
    assert message.replies == []
    assert telemetry.finished() == []


async def test_an_agent_prefix_without_a_name_gets_help(bot: SelBot) -> None:
    message = Message(User(STRANGER), "agent: hello")
    await bot.on_message(message)  # type: ignore[arg-type]
    assert message.replies[0].content is not None
    assert message.replies[0].content.startswith("missing agent name")


def test_the_message_content_intent_follows_the_prefix_setting(make_bot: BotFactory) -> None:
    assert make_bot(BotSettings(message_prefix=True)).intents.message_content is True
    assert make_bot(BotSettings(message_prefix=False)).intents.message_content is False


# -- telemetry ---------------------------------------------------------------------------------


async def test_each_command_is_a_root_span_holding_the_agent_call(
    bot: SelBot, telemetry: TelemetryFixture
) -> None:
    await slash(bot, "sel_agent", Interaction(User(STRANGER)), agent="echo", input="private text")
    [root] = telemetry.finished("discord.command /sel_agent")
    [call] = telemetry.finished("invoke_agent echo")
    assert root.parent is None
    assert root.kind is SpanKind.SERVER
    assert call.parent is not None and call.parent.span_id == root.context.span_id
    assert call.context.trace_id == root.context.trace_id
    assert dict(root.attributes) == {
        names.SEL_FRONTEND: "discord",
        names.SEL_REQUEST: "agent",
        names.SEL_DISCORD_COMMAND: "/sel_agent",
        names.SEL_DISCORD_TRIGGER: "slash",
        names.SEL_USER_ID: str(STRANGER),
        names.SEL_DISCORD_GUILD_ID: str(GUILD),
        names.SEL_DISCORD_CHANNEL_ID: str(CHANNEL),
        names.SEL_DISCORD_OUTCOME: "ok",
    }


async def test_prefix_commands_are_root_spans_too(bot: SelBot, telemetry: TelemetryFixture) -> None:
    await bot.on_message(Message(User(STRANGER), "agent:echo private"))  # type: ignore[arg-type]
    [root] = telemetry.finished("discord.command agent:")
    [call] = telemetry.finished("invoke_agent echo")
    assert call.parent is not None and call.parent.span_id == root.context.span_id
    assert root.attributes[names.SEL_DISCORD_TRIGGER] == "prefix"
    assert "private" not in str(dict(root.attributes))


async def test_a_failed_agent_call_marks_the_command_outcome(
    bot: SelBot, telemetry: TelemetryFixture
) -> None:
    await slash(bot, "sel_agent", Interaction(User(STRANGER)), agent="nope", input="")
    [root] = telemetry.finished("discord.command /sel_agent")
    assert root.attributes[names.SEL_DISCORD_OUTCOME] == "error"


@pytest.mark.parametrize(
    ("command", "arguments"),
    [("sel_agent_stats", {}), ("sel_agents", {}), ("sel_agent_reload", {})],
)
async def test_every_slash_command_is_a_root_span(
    bot: SelBot, telemetry: TelemetryFixture, command: str, arguments: dict[str, Any]
) -> None:
    await slash(bot, command, Interaction(User(OWNER), guild=False), **arguments)
    [root] = telemetry.finished(f"discord.command /{command}")
    assert root.parent is None and root.kind is SpanKind.SERVER
    assert root.attributes[names.SEL_DISCORD_COMMAND] == f"/{command}"
    assert names.SEL_DISCORD_GUILD_ID not in root.attributes  # a direct message


async def test_a_failure_to_answer_is_recorded_on_the_command_span(
    bot: SelBot, telemetry: TelemetryFixture
) -> None:
    with pytest.raises(RuntimeError):
        await slash(bot, "sel_agents", Interaction(User(STRANGER), fail=True))
    [root] = telemetry.finished("discord.command /sel_agents")
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes[names.ERROR_TYPE] == "RuntimeError"
    assert [event.name for event in root.events] == ["exception"]


async def test_a_deferred_call_still_nests_under_the_command_span(
    make_bot: BotFactory, telemetry: TelemetryFixture
) -> None:
    bot = make_bot(defer_after=0.0)
    await asyncio.gather(
        *(
            slash(bot, "sel_agent", Interaction(User(OWNER)), agent="slow", input=str(i))
            for i in range(3)
        )
    )
    roots = {s.context.span_id for s in telemetry.finished("discord.command /sel_agent")}
    calls = telemetry.finished("invoke_agent slow")
    assert len(roots) == 3 and len(calls) == 3
    assert {c.parent.span_id for c in calls if c.parent is not None} == roots


def test_owners_are_the_accepted_admins_and_developers_of_the_team() -> None:
    role, state = discord.TeamMemberRole, discord.TeamMembershipState
    members = [
        SimpleNamespace(id=1, role=role.admin, membership_state=state.accepted),
        SimpleNamespace(id=2, role=role.developer, membership_state=state.accepted),
        SimpleNamespace(id=3, role=role.read_only, membership_state=state.accepted),
        SimpleNamespace(id=4, role=role.admin, membership_state=state.invited),
    ]
    team = SimpleNamespace(team=SimpleNamespace(members=members), owner=SimpleNamespace(id=9))
    assert application_owners(team) == {1, 2}  # type: ignore[arg-type]
    solo = SimpleNamespace(team=None, owner=SimpleNamespace(id=9))
    assert application_owners(solo) == {9}  # type: ignore[arg-type]


# -- what users control, what they are shown -----------------------------------------------------


async def test_the_agent_list_names_a_broken_file_to_everyone_and_shows_owners_why(
    bot: SelBot, write_agent: AgentWriter
) -> None:
    path = write_agent("broken", 'raise RuntimeError("token in /srv/sel/secrets.env")\n')
    bot.commands.runtime.registry.reload()
    shown = {}
    for user in (STRANGER, OWNER):
        interaction = Interaction(User(user))
        await slash(bot, "sel_agents", interaction)
        embed = interaction.sent[0].embed
        assert embed is not None and embed.description is not None
        shown[user] = embed.description
    assert "`broken`: failed to load" in shown[STRANGER]
    assert str(path.parent) not in shown[STRANGER] and "secrets.env" not in shown[STRANGER]
    assert str(path) in shown[OWNER] and "secrets.env" in shown[OWNER]


@pytest.mark.parametrize("command", ["sel_agents", "sel_agent_stats"])
async def test_the_agent_list_and_stats_are_spaced_by_the_cooldown(
    bot: SelBot, clock: Clock, telemetry: TelemetryFixture, command: str
) -> None:
    first, second, third = (Interaction(User(STRANGER)) for _ in range(3))
    await slash(bot, command, first)
    assert first.sent[0].embed is not None
    await slash(bot, command, second)
    [refusal] = second.sent
    assert (refusal.content, refusal.ephemeral) == ("⏳ Slow down: try again in 10s.", True)
    # an agent call and the other command have cooldowns of their own; owners have none
    other = "sel_agent_stats" if command == "sel_agents" else "sel_agents"
    for interaction, name, arguments in [
        (Interaction(User(STRANGER)), "sel_agent", {"agent": "echo", "input": "hi"}),
        (Interaction(User(STRANGER)), other, {}),
        (Interaction(User(OWNER)), command, {}),
        (Interaction(User(OWNER)), command, {}),
    ]:
        await slash(bot, name, interaction, **arguments)
        assert not interaction.sent[0].ephemeral, name
    clock.now += 10
    await slash(bot, command, third)
    assert third.sent[0].embed is not None
    outcomes = [
        s.attributes[names.SEL_DISCORD_OUTCOME]
        for s in telemetry.finished(f"discord.command /{command}")
    ]
    assert outcomes == ["ok", "cooldown", "ok", "ok", "ok"]


async def test_replies_show_control_characters_as_symbols(bot: SelBot) -> None:
    escapes = "\x1b]0;pwned\x07\x1b[2J\x9b31m"
    interaction = Interaction(User(OWNER))
    await slash(bot, "sel_agent", interaction, agent="echo", input=escapes)
    message = Message(User(OWNER), f"agent:echo {escapes}")
    await bot.on_message(message)  # type: ignore[arg-type]
    for sent in (interaction.sent[0], message.replies[0]):
        assert sent.content == "␛]0;pwned␇␛[2J\\x9b31m"


async def test_the_everyone_role_never_allows_a_privileged_agent(
    make_bot: BotFactory, marker: Path
) -> None:
    bot = make_bot(BotSettings(allowed_role_ids=frozenset({GUILD, ALLOWED_ROLE})))
    member = SimpleNamespace(id=STRANGER, roles=[Snowflake(GUILD)], guild=Snowflake(GUILD))
    interaction = Interaction(member)  # type: ignore[arg-type]
    await slash(bot, "sel_agent", interaction, agent="secret", input="")
    assert interaction.sent[0].content is not None and "privileged" in interaction.sent[0].content
    assert runs(marker) == 0


async def test_the_bot_refuses_to_start_with_an_everyone_role_among_the_allowed(
    make_bot: BotFactory,
) -> None:
    synced: list[object] = []

    async def guilds(limit: int | None = 200) -> AsyncIterator[Snowflake]:
        assert limit is None  # every guild the bot is in
        for guild_id in (GUILD, 556):
            yield Snowflake(guild_id)

    async def sync(guild: object = None) -> list[object]:
        synced.append(guild)
        return []

    for roles, refused in [({ALLOWED_ROLE, 556}, True), ({ALLOWED_ROLE}, False)]:
        settings = BotSettings(owner_ids=frozenset({OWNER}), allowed_role_ids=frozenset(roles))
        bot = make_bot(settings)
        bot.fetch_guilds = guilds  # type: ignore[method-assign,assignment]
        bot.tree.sync = sync  # type: ignore[method-assign,assignment]
        if refused:
            with pytest.raises(ConfigError, match="holds 556: the @everyone role"):
                await bot.setup_hook()
            assert synced == []
        else:
            await bot.setup_hook()
            assert synced == [None]
