"""Every agent call and every refusal lands in the history, linked to its span: through the
runtime, the commands (`/sel_agent_history`), the Discord bot's checks and the assembled
process; a broken store never fails or holds up a call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from sel_otel import AgentRegistry, AgentRuntime, SelApp, Settings, Telemetry
from sel_otel._app import cache_from_settings
from sel_otel._bot import SelBot
from sel_otel._commands import CommandHandler
from sel_otel._history import ContentPolicy, History, HistoryEntry, HistoryQuery
from sel_otel._history_redis import RedisHistoryStore
from sel_otel._history_sqlite import SqliteHistoryStore
from sel_otel._telemetry import build_resource
from tests.conftest import AgentWriter, TelemetryFixture
from tests.test_bot import (
    OWNER,
    SETTINGS,
    STRANGER,
    Clock,
    Interaction,
    Message,
    User,
    slash,
)
from tests.test_history import dropped

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]

TEMPLATE = "http://jaeger.example:16686/trace/{trace_id}"


@pytest.fixture
def agents(write_agent: AgentWriter) -> None:
    write_agent(
        "echo",
        """
        DESCRIPTION = "Say the input back"
        CACHE_TTL = 60
        def run(query):
            return query
        """,
    )
    write_agent(
        "boom",
        """
        DESCRIPTION = "Fails"
        def run(query):
            raise ValueError("no " + query)
        """,
    )
    write_agent(
        "slow",
        """
        import asyncio
        DESCRIPTION = "Outlasts its timeout"
        TIMEOUT = 0.2
        async def run(query):
            await asyncio.sleep(60)
        """,
    )
    write_agent(
        "secret",
        """
        DESCRIPTION = "Privileged"
        PRIVILEGED = True
        def run(query):
            return "secret ran"
        """,
    )


class Recorded:
    """A runtime recording into a history on a real SQLite file, and what it recorded."""

    def __init__(self, runtime: AgentRuntime, history: History, store: SqliteHistoryStore):
        self.runtime, self.history, self.store = runtime, history, store

    async def entries(self, **filters: Any) -> list[HistoryEntry]:
        """Everything recorded so far (written first), oldest first."""
        assert await self.history.flush()
        return self.store.query(HistoryQuery(limit=1000, **filters))[::-1]


RecordedFactory = Callable[..., Recorded]


@pytest.fixture
async def make_recorded(
    agents: None, agents_dir: Path, tmp_path: Path, telemetry: TelemetryFixture
) -> AsyncIterator[RecordedFactory]:
    made: list[Recorded] = []

    def make(
        *extra_stores: Any,
        path: Path | None = None,
        policy: ContentPolicy | None = None,
        **settings: Any,
    ) -> Recorded:
        config = Settings(agents_dir=agents_dir, trace_url_template=TEMPLATE, **settings)
        registry = AgentRegistry(agents_dir)
        registry.reload()
        store = SqliteHistoryStore(
            path or tmp_path / f"data{len(made)}" / "history.db", max_age=1e9, max_rows=10_000
        )
        history = History(
            [store, *extra_stores],
            instance="test-instance",
            policy=policy,
            flush_interval=60.0,
            meter_provider=telemetry.meter_provider,
        )
        history.open()
        runtime = AgentRuntime(
            registry,
            cache_from_settings(config, telemetry.meter_provider),
            settings=config,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            history=history,
        )
        made.append(Recorded(runtime, history, store))
        return made[-1]

    yield make
    for recorded in made:
        await recorded.runtime.aclose()
        await recorded.runtime.cache.close()
        await recorded.history.aclose()


@pytest.fixture
def recorded(make_recorded: RecordedFactory) -> Recorded:
    return make_recorded()


def ids(span: ReadableSpan) -> tuple[str, str]:
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


# -- the runtime ------------------------------------------------------------------------------


async def test_hits_misses_errors_and_timeouts_are_recorded_with_their_spans(
    recorded: Recorded, telemetry: TelemetryFixture
) -> None:
    runtime = recorded.runtime
    await runtime.run("echo", "hello", user="alice", frontend="console")
    await runtime.run("echo", "hello", user="bob", frontend="discord")
    await runtime.run("boom", "luck", user="alice", frontend="cli")
    await runtime.run("slow", "down", user="alice", frontend="cli")
    entries = await recorded.entries()
    assert [(e.agent, e.user, e.frontend, e.outcome, e.error_type, e.cached) for e in entries] == [
        ("echo", "alice", "console", "ok", None, False),
        ("echo", "bob", "discord", "ok", None, True),
        ("boom", "alice", "cli", "error", "ValueError", False),
        ("slow", "alice", "cli", "error", "timeout", False),
    ]
    spans = [
        *telemetry.finished("invoke_agent echo"),
        *telemetry.finished("invoke_agent boom"),
        *telemetry.finished("invoke_agent slow"),
    ]
    assert [(e.trace_id, e.span_id) for e in entries] == [ids(span) for span in spans]
    assert entries[3].duration_ms >= 200.0
    assert {e.instance for e in entries} == {"test-instance"}
    assert entries[0].input == "hello" and entries[0].output is None


async def test_a_call_of_an_unknown_agent_is_recorded_in_its_requests_trace(
    recorded: Recorded, telemetry: TelemetryFixture
) -> None:
    tracer = telemetry.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("console agent"):
        await recorded.runtime.run("nope", "x", user="alice", frontend="console")
    [entry] = await recorded.entries()
    [request] = telemetry.finished("console agent")
    assert (entry.agent, entry.outcome, entry.error_type) == ("nope", "error", "agent_not_found")
    assert (entry.trace_id, entry.span_id) == ids(request)


async def test_output_is_recorded_only_when_asked_scrubbed_and_capped(
    make_recorded: RecordedFactory,
) -> None:
    recorded = make_recorded(policy=ContentPolicy(output_max=12))
    await recorded.runtime.run("echo", "password=hunter2hunter2 and more words")
    [entry] = await recorded.entries()
    assert entry.output == "password=[R…"
    assert entry.input == "password=[REDACTED] and more words"


async def test_calls_neither_fail_nor_wait_when_every_store_is_broken(
    make_recorded: RecordedFactory,
    tmp_path: Path,
    redis_server: RedisServer,
    telemetry: TelemetryFixture,
) -> None:
    (tmp_path / "blocked").write_text("a file where the data directory should be")
    redis_store = RedisHistoryStore.from_url(
        redis_server.url, "sel:history", timeout=30.0, max_len=1000, max_age=1e6
    )
    recorded = make_recorded(redis_store, path=tmp_path / "blocked" / "history.db")
    await recorded.runtime.run("echo", "warm")
    assert await recorded.history.flush()  # Redis connected, the file failing already
    redis_server.pause()
    try:
        results = [await recorded.runtime.run("echo", "warm") for _ in range(100)]
        # Every call has answered while the Redis writer still waits on the stalled server.
        assert all(result.ok and result.cached for result in results)
        assert not await recorded.history.flush(wait=0.2)
    finally:
        redis_server.resume()
    assert await recorded.history.flush()
    assert dropped(telemetry)[("sqlite", "FileExistsError")] == 101


# -- /sel_agent_history -----------------------------------------------------------------------


async def test_history_requests_filter_and_link_each_entry_to_its_trace(
    recorded: Recorded, telemetry: TelemetryFixture
) -> None:
    commands = CommandHandler(
        recorded.runtime, telemetry.reader, tracer_provider=telemetry.tracer_provider
    )
    await commands.handle("agent:echo one", user="alice", frontend="console")
    await commands.handle("agent:boom two", user="bob", frontend="console")
    await commands.handle("agent:echo three", user="bob", frontend="console")
    await recorded.history.flush()

    everything = await commands.handle("/sel_agent_history", frontend="console")
    lines = everything.text.splitlines()
    assert everything.ok and len(lines) == 3
    assert "**echo**" in lines[0] and "`three`" in lines[0]  # newest first
    [span] = telemetry.finished("invoke_agent boom")
    link = TEMPLATE.replace("{trace_id}", ids(span)[0])
    assert f"[trace](<{link}>)" in lines[1] and "ValueError" in lines[1]

    bobs_errors = await commands.handle("/sel_agent_history user=bob outcome=error")
    assert len(bobs_errors.text.splitlines()) == 1 and "**boom**" in bobs_errors.text
    latest = await commands.handle("/sel_agent_history echo limit=1")
    assert len(latest.text.splitlines()) == 1 and "`three`" in latest.text
    none = await commands.handle("/sel_agent_history agent=calc")
    assert none.text == "No history entries match."


async def test_a_history_reply_says_which_store_could_not_be_read(
    make_recorded: RecordedFactory, redis_server: RedisServer, telemetry: TelemetryFixture
) -> None:
    redis_store = RedisHistoryStore.from_url(
        redis_server.url, "sel:history", timeout=5.0, max_len=1000, max_age=1e6
    )
    recorded = make_recorded(redis_store)
    commands = CommandHandler(recorded.runtime, telemetry.reader)
    await commands.handle("agent:echo hi")
    redis_server.kill()
    reply = await commands.handle("/sel_agent_history")
    assert reply.ok and "`hi`" in reply.text
    assert "Not read: the redis history" in reply.text


@pytest.mark.parametrize(
    "arguments", ["outcome=maybe", "limit=0", "limit=ten", "colour=blue", "user="]
)
async def test_bad_history_arguments_get_help(
    recorded: Recorded, telemetry: TelemetryFixture, arguments: str
) -> None:
    commands = CommandHandler(recorded.runtime, telemetry.reader)
    reply = await commands.handle(f"/sel_agent_history {arguments}")
    assert not reply.ok and "/sel_agent_history [agent=NAME]" in reply.text


async def test_history_requests_say_when_the_history_is_off(
    agents: None, make_runtime: Any, telemetry: TelemetryFixture
) -> None:
    commands = CommandHandler(make_runtime(), telemetry.reader)
    reply = await commands.handle("/sel_agent_history")
    assert not reply.ok and "SEL_HISTORY=false" in reply.text


# -- the Discord bot ---------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def bot(
    recorded: Recorded, telemetry: TelemetryFixture, clock: Clock
) -> AsyncIterator[SelBot]:
    commands = CommandHandler(recorded.runtime, telemetry.reader)
    discord_bot = SelBot(commands, SETTINGS, tracer_provider=telemetry.tracer_provider, clock=clock)
    yield discord_bot
    await discord_bot.close()


async def test_refusals_by_the_bots_checks_are_recorded_with_the_commands_span(
    bot: SelBot, recorded: Recorded, telemetry: TelemetryFixture
) -> None:
    await slash(bot, "sel_agent", Interaction(User(STRANGER)), agent="secret", input="please")
    await slash(bot, "sel_agent", Interaction(User(STRANGER)), agent="echo", input="first")
    in_the_cooldown = Message(User(STRANGER), "agent:echo second")
    await bot.handle_prefix(in_the_cooldown)  # type: ignore[arg-type]  # stands in for discord's
    entries = await recorded.entries()
    assert [(e.agent, e.input, e.outcome, e.error_type) for e in entries] == [
        ("secret", "please", "refused", "forbidden"),
        ("echo", "first", "ok", None),
        ("echo", "second", "refused", "cooldown"),
    ]
    assert {(e.user, e.frontend) for e in entries} == {(str(STRANGER), "discord")}
    commands = [
        *telemetry.finished("discord.command /sel_agent"),
        *telemetry.finished("discord.command agent:"),
    ]
    [call] = telemetry.finished("invoke_agent echo")
    assert [(e.trace_id, e.span_id) for e in entries] == [
        ids(commands[0]),
        ids(call),
        ids(commands[2]),
    ]


async def test_a_users_history_queries_are_spaced_by_the_cooldown(
    bot: SelBot, clock: Clock
) -> None:
    first, second, third = (Interaction(User(STRANGER)) for _ in range(3))
    await slash(bot, "sel_agent_history", first)
    await slash(bot, "sel_agent_history", second)
    assert second.sent[-1].content == "⏳ Slow down: try again in 10s."
    for _ in range(2):  # owners have none
        owner = Interaction(User(OWNER))
        await slash(bot, "sel_agent_history", owner)
        assert "Slow down" not in (owner.sent[-1].content or "")
    clock.now += SETTINGS.cooldown
    await slash(bot, "sel_agent_history", third)
    assert "Slow down" not in (third.sent[-1].content or "")


async def test_owners_see_anyones_calls_and_others_only_their_own(
    bot: SelBot, recorded: Recorded, clock: Clock
) -> None:
    await recorded.runtime.run("echo", "the owner's", user=str(OWNER), frontend="discord")
    await recorded.runtime.run("echo", "the stranger's", user=str(STRANGER), frontend="discord")
    await recorded.history.flush()

    async def shown(asker: int, **options: Any) -> str:
        clock.now += SETTINGS.cooldown  # apart from the cooldown, tested below
        interaction = Interaction(User(asker))
        await slash(bot, "sel_agent_history", interaction, **options)
        *_, answer = interaction.sent
        assert answer.ephemeral
        return answer.content or ""

    everything = await shown(OWNER)
    assert "the owner's" in everything and "the stranger's" in everything
    assert "the owner's" not in await shown(OWNER, user=User(STRANGER))
    own = await shown(STRANGER)
    assert "the stranger's" in own and "the owner's" not in own
    assert "🔒" in await shown(STRANGER, user=User(OWNER))
    assert "the stranger's" in await shown(STRANGER, user=User(STRANGER), outcome="ok")


# -- the assembled process --------------------------------------------------------------------


async def test_the_app_records_into_its_data_dir_under_its_instance_id(
    agents: None, agents_dir: Path, tmp_path: Path, telemetry: TelemetryFixture
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    resource = build_resource()
    process = Telemetry(
        TracerProvider(resource=resource), telemetry.meter_provider, telemetry.reader
    )
    settings = Settings(agents_dir=agents_dir, data_dir=tmp_path / "data", cache_url="memory://")
    async with SelApp(settings, process) as app:
        await app.commands.handle("agent:echo hi", user="u1", frontend="console")
        reply = await app.commands.handle("/sel_agent_history", frontend="console")
    assert "**echo**" in reply.text
    store = SqliteHistoryStore(tmp_path / "data" / "history.db", max_age=1e9, max_rows=10)
    [entry] = store.query(HistoryQuery())
    assert entry.instance == resource.attributes["service.instance.id"]
    assert (entry.user, entry.frontend) == ("u1", "console")


async def test_no_history_is_kept_when_it_is_off(
    agents: None, agents_dir: Path, tmp_path: Path, telemetry: TelemetryFixture
) -> None:
    process = Telemetry(telemetry.tracer_provider, telemetry.meter_provider, telemetry.reader)
    settings = Settings(agents_dir=agents_dir, data_dir=tmp_path / "data", history=False)
    async with SelApp(settings, process) as app:
        assert (await app.runtime.run("echo", "hi")).ok
        assert app.history is None
    assert not (tmp_path / "data").exists()
