"""The Discord frontend: slash commands and the `agent:NAME INPUT` prefix over the shared commands.

This module renders: when to defer, one root span per command, refusals answered and recorded
in one place. Who may run what is `_access`'s; parsing, agent calls and typed replies come
from `_commands`, sizing and embeds from `_discord_format`. Slash commands:

- `/sel_agent agent input`   run an agent (agent names autocompleted from the registry)
- `/sel_agent_stats [agent] [scope]` stats embeds, every instance merged by default, with
  coverage, uptime and totals; paged with buttons when they do not fit one
- `/sel_agents`              agent list
- `/sel_agent_reload`        re-read the agents directory (owners only)
- `/sel_agent_history [agent] [user] [outcome] [limit]`  the latest calls and refusals, with
  trace links (owners: anyone's; others: their own), shown to the asker alone
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, Literal

import discord
from discord import app_commands
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import _semconv as names
from ._access import Access, AccessPolicy
from ._app import SelApp
from ._bot_settings import BotSettings, everyone_role_problem
from ._commands import (
    CommandHandler,
    HistoryReply,
    ListAgents,
    ReloadAgents,
    Reply,
    Request,
    RunAgent,
    ShowHistory,
    ShowStats,
    StatsReply,
    parse_request,
    request_kind,
)
from ._discord_format import (
    CONTENT_LIMIT,
    MAX_CHOICES,
    agents_embed,
    choice_name,
    fit,
    stats_pages,
)
from ._discord_pages import Pager
from ._exceptions import ConfigError, Refused, StartupError
from ._history import HistoryQuery
from ._history_format import DEFAULT_LIMIT, MAX_LIMIT
from ._settings import Settings
from ._stats_report import Scope
from ._telemetry import Telemetry, package_version

logger = logging.getLogger(__name__)

PREFIX = "agent:"
#: Discord must see an answer within 3 s; a call still running after this long is deferred.
DEFER_AFTER = 1.5
NO_MENTIONS = discord.AllowedMentions.none()
FRONTEND = "discord"
#: The request each command makes (its `sel.request` is the request's kind).
_REQUESTS: dict[str, type[Request]] = {
    "/sel_agent": RunAgent,
    PREFIX: RunAgent,
    "/sel_agent_stats": ShowStats,
    "/sel_agents": ListAgents,
    "/sel_agent_reload": ReloadAgents,
    "/sel_agent_history": ShowHistory,
}


#: Team roles that own the application, as discord.py's `Bot.is_owner` counts them.
OWNER_ROLES = frozenset({discord.TeamMemberRole.admin, discord.TeamMemberRole.developer})


def application_owners(info: discord.AppInfo) -> frozenset[int]:
    """The application's owner, or the team members who have accepted an admin or
    developer role (not read-only members, nor people only invited)."""
    if info.team is None:
        return frozenset({info.owner.id})
    return frozenset(
        member.id
        for member in info.team.members
        if member.role in OWNER_ROLES
        and member.membership_state is discord.TeamMembershipState.accepted
    )


class SelBot(discord.Client):
    """The SEL bot: a discord.py client with the sel_otel slash commands and prefix handler."""

    def __init__(
        self,
        commands: CommandHandler,
        settings: BotSettings,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        defer_after: float = DEFER_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        intents = discord.Intents.default()
        intents.message_content = settings.message_prefix
        super().__init__(intents=intents, allowed_mentions=NO_MENTIONS)
        self.commands = commands
        self.settings = settings
        access = Access(settings.owner_ids, settings.allowed_user_ids, settings.allowed_role_ids)
        self.policy = AccessPolicy(access, settings.cooldown, clock)
        self.defer_after = defer_after
        self._clock = clock
        self.started = clock()
        self._tracer = trace.get_tracer(names.SCOPE_NAME, package_version(), tracer_provider)
        self.tree: app_commands.CommandTree[SelBot] = _CommandTree(self)
        for command in _SLASH_COMMANDS:
            self.tree.add_command(command)

    # -- connection -------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        """Before connecting: find the owners when none are configured, refuse an @everyone
        role among the allowed ones, sync the commands."""
        access = self.policy.access
        if not access.owner_ids:
            access = self.policy.access = replace(
                access, owner_ids=await self._application_owners()
            )
        if access.allowed_role_ids:
            everyone = access.everyone_roles([g.id async for g in self.fetch_guilds(limit=None)])
            if everyone:
                raise ConfigError(everyone_role_problem(everyone))
        guild = discord.Object(self.settings.guild_id) if self.settings.guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        synced = await self.tree.sync(guild=guild)
        logger.info(
            "synced %d commands %s",
            len(synced),
            f"to guild {guild.id}" if guild else "globally (may take up to an hour to show)",
        )

    async def _application_owners(self) -> frozenset[int]:
        return application_owners(await self.application_info())

    async def on_ready(self) -> None:
        logger.info("connected to Discord as %s", self.user)

    # -- commands ---------------------------------------------------------------------------

    def agent_choices(self, current: str) -> list[app_commands.Choice[str]]:
        """Registry agents whose name contains `current`, those starting with it first."""
        needle = current.strip().lower()
        agents = self.commands.agents
        matches = sorted(
            (name for name in agents if needle in name.lower()),
            key=lambda name: (not name.lower().startswith(needle), name),
        )
        return [
            app_commands.Choice(name=choice_name(name, agents[name].description), value=name)
            for name in matches[:MAX_CHOICES]
        ]

    async def run_agent(
        self, interaction: discord.Interaction[Any], agent: str, query: str
    ) -> None:
        """`/sel_agent`: refuse, or run the agent, deferring when it outlasts `defer_after`."""
        request = RunAgent(agent, query)
        async with self._slash("/sel_agent", interaction, request) as span:
            self.policy.check_agent(agent, self.commands.agent(agent), interaction.user)
            call = asyncio.create_task(
                self.commands.execute(
                    request, user=str(interaction.user.id), frontend=FRONTEND, root_span=False
                )
            )
            deferred = False
            try:
                done, _ = await asyncio.wait({call}, timeout=max(self.defer_after, 0))
                if not done:
                    await interaction.response.defer(thinking=True)
                    deferred = True
                    span.set_attribute(names.SEL_DISCORD_DEFERRED, True)
                reply = await call
            finally:
                call.cancel()  # only when the interaction failed before the call ended
            _set_outcome(span, reply)
            content = fit(reply.text, CONTENT_LIMIT)
            if deferred:
                await interaction.followup.send(content, allowed_mentions=NO_MENTIONS)
            else:
                await interaction.response.send_message(content, allowed_mentions=NO_MENTIONS)

    async def show_stats(
        self, interaction: discord.Interaction[Any], agent: str | None, scope: Scope = "all"
    ) -> None:
        """`/sel_agent_stats [agent] [scope]`: embeds open to everyone, paged with buttons
        that the asker turns when the report does not fit one; an unknown agent is an error
        shown to the asker alone."""
        async with self._slash("/sel_agent_stats", interaction) as span:
            self.policy.check_cooldown("stats", interaction.user)
            reply = await self.commands.execute(ShowStats(agent or None, scope), root_span=False)
            _set_outcome(span, reply)
            if not isinstance(reply, StatsReply):
                await interaction.response.send_message(
                    fit(reply.text), ephemeral=True, allowed_mentions=NO_MENTIONS
                )
                return
            pages = stats_pages(reply.stats, self._clock() - self.started, reply.agent)
            if len(pages) == 1:
                await interaction.response.send_message(
                    embed=pages[0], allowed_mentions=NO_MENTIONS
                )
                return
            pager = Pager(pages, interaction.user.id)
            await interaction.response.send_message(
                embed=pages[0], view=pager, allowed_mentions=NO_MENTIONS
            )
            pager.message = await interaction.original_response()

    async def list_agents(self, interaction: discord.Interaction[Any]) -> None:
        """`/sel_agents`: the shared agent list in an embed, open to everyone; the files that
        failed to load by name, with their paths and errors for owners only."""
        async with self._slash("/sel_agents", interaction) as span:
            self.policy.check_cooldown("agents", interaction.user)
            owner = self.policy.is_owner(interaction.user)
            reply = await self.commands.execute(ListAgents(detail=owner))
            span.set_attribute(names.SEL_DISCORD_OUTCOME, names.DISCORD_OUTCOME_OK)
            await interaction.response.send_message(
                embed=agents_embed(reply), allowed_mentions=NO_MENTIONS
            )

    async def reload_agents(self, interaction: discord.Interaction[Any]) -> None:
        """`/sel_agent_reload`: owners only; the report is shown to the owner alone."""
        async with self._slash("/sel_agent_reload", interaction) as span:
            self.policy.check_owner(interaction.user, "reload the agents")
            await interaction.response.defer(ephemeral=True, thinking=True)
            span.set_attribute(names.SEL_DISCORD_DEFERRED, True)
            reply = await self.commands.execute(ReloadAgents())
            _set_outcome(span, reply)
            await interaction.followup.send(
                fit(reply.text, CONTENT_LIMIT), ephemeral=True, allowed_mentions=NO_MENTIONS
            )

    async def show_history(
        self,
        interaction: discord.Interaction[Any],
        agent: str | None,
        user: str | None,
        outcome: str | None,
        limit: int,
    ) -> None:
        """`/sel_agent_history`: owners see anyone's calls, others their own; the answer is
        shown to the asker alone."""
        async with self._slash("/sel_agent_history", interaction) as span:
            user = self.policy.history_user(interaction.user, user)
            self.policy.check_cooldown("history", interaction.user)
            await interaction.response.defer(ephemeral=True, thinking=True)
            span.set_attribute(names.SEL_DISCORD_DEFERRED, True)
            query = HistoryQuery(agent or None, user, outcome, limit)
            reply = await self.commands.execute(
                ShowHistory(query),
                user=str(interaction.user.id),
                frontend=FRONTEND,
                root_span=False,
            )
            _set_outcome(span, reply)
            text = reply.within(CONTENT_LIMIT) if isinstance(reply, HistoryReply) else reply.text
            await interaction.followup.send(
                fit(text, CONTENT_LIMIT), ephemeral=True, allowed_mentions=NO_MENTIONS
            )

    async def on_message(self, message: discord.Message) -> None:
        """`agent:NAME INPUT` in a channel the bot reads (message content intent)."""
        if not self.settings.message_prefix or message.author.bot:
            return
        if message.content.startswith(PREFIX):
            await self.handle_prefix(message)

    async def handle_prefix(self, message: discord.Message) -> None:
        """Answer one `agent:NAME INPUT` message with a reply, by the rules of /sel_agent."""
        request = parse_request(message.content)
        call = request if isinstance(request, RunAgent) else None
        async with self._prefix(message, call) as span:
            if call is None:
                reply = await self.commands.execute(request)
            else:
                self.policy.check_agent(call.agent, self.commands.agent(call.agent), message.author)
                async with message.channel.typing():
                    reply = await self.commands.execute(
                        call, user=str(message.author.id), frontend=FRONTEND, root_span=False
                    )
            _set_outcome(span, reply)
            await message.reply(fit(reply.text), allowed_mentions=NO_MENTIONS)

    # -- one span per command, refusals answered and recorded -------------------------------

    def _slash(
        self,
        command: str,
        interaction: discord.Interaction[Any],
        call: RunAgent | None = None,
    ) -> contextlib.AbstractAsyncContextManager[trace.Span]:
        async def refuse(text: str) -> None:
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=NO_MENTIONS
            )

        # An interaction knows its ids even where the guild is not cached (user installs).
        return self._command(
            command,
            names.DISCORD_TRIGGER_SLASH,
            interaction.user,
            interaction.guild_id,
            interaction.channel_id,
            refuse,
            call,
        )

    def _prefix(
        self, message: discord.Message, call: RunAgent | None
    ) -> contextlib.AbstractAsyncContextManager[trace.Span]:
        async def refuse(text: str) -> None:
            await message.reply(text, allowed_mentions=NO_MENTIONS)

        guild = message.guild
        return self._command(
            PREFIX,
            names.DISCORD_TRIGGER_PREFIX,
            message.author,
            guild.id if guild is not None else None,
            message.channel.id,
            refuse,
            call,
        )

    @contextlib.asynccontextmanager
    async def _command(
        self,
        command: str,
        trigger: str,
        user: discord.abc.User,
        guild_id: int | None,
        channel_id: int | None,
        refuse: Callable[[str], Awaitable[None]],
        call: RunAgent | None,
    ) -> AsyncIterator[trace.Span]:
        """A root span for one command, with where it came from and who sent it.

        A `Refused` raised by the command's checks ends it here: its outcome is set on the
        span, a refused agent call is recorded in the history, and the user is told why.
        """
        attributes: dict[str, str] = {
            names.SEL_FRONTEND: FRONTEND,
            names.SEL_REQUEST: request_kind(_REQUESTS[command]),
            names.SEL_DISCORD_COMMAND: command,
            names.SEL_DISCORD_TRIGGER: trigger,
            names.SEL_USER_ID: str(user.id),
        }
        if guild_id is not None:
            attributes[names.SEL_DISCORD_GUILD_ID] = str(guild_id)
        if channel_id is not None:
            attributes[names.SEL_DISCORD_CHANNEL_ID] = str(channel_id)
        with self._tracer.start_as_current_span(
            f"{names.DISCORD_COMMAND} {command}",
            context=otel_context.Context(),  # a root span, whatever is current
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                try:
                    yield span
                except Refused as refusal:
                    span.set_attribute(names.SEL_DISCORD_OUTCOME, refusal.outcome)
                    if call is not None:
                        self.commands.record_refusal(
                            call.agent, call.query, str(user.id), FRONTEND, refusal.outcome, span
                        )
                    await refuse(str(refusal))
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__qualname__))
                span.record_exception(exc)
                span.set_attribute(names.ERROR_TYPE, type(exc).__qualname__)
                raise


def _set_outcome(span: trace.Span, reply: Reply) -> None:
    outcome = names.DISCORD_OUTCOME_OK if reply.ok else names.DISCORD_OUTCOME_ERROR
    span.set_attribute(names.SEL_DISCORD_OUTCOME, outcome)


# -- registration: each slash command hands over to the `SelBot` it came to ------------------


class _CommandTree(app_commands.CommandTree["SelBot"]):
    """The bot's command tree: what a command raises is logged, and the user told."""

    async def on_error(
        self, interaction: discord.Interaction[SelBot], error: app_commands.AppCommandError, /
    ) -> None:
        logger.error(
            "command %s failed",
            interaction.command.name if interaction.command else "?",
            exc_info=error,
        )
        text = "❌ Something went wrong answering this command; it has been logged."
        with contextlib.suppress(discord.HTTPException):
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)


async def _agent_names(
    interaction: discord.Interaction[SelBot], current: str
) -> list[app_commands.Choice[str]]:
    return interaction.client.agent_choices(current)


@app_commands.command(name="sel_agent", description="Run a SEL agent")
@app_commands.describe(agent="agent name", input="what the agent is asked")
@app_commands.autocomplete(agent=_agent_names)
async def _sel_agent(interaction: discord.Interaction[SelBot], agent: str, input: str = "") -> None:
    await interaction.client.run_agent(interaction, agent, input)


@app_commands.command(name="sel_agent_stats", description="Calls, cache hits, times and errors")
@app_commands.describe(
    agent="only this agent",
    scope="every instance merged (all), this one, or each instance's totals",
)
@app_commands.autocomplete(agent=_agent_names)
async def _sel_agent_stats(
    interaction: discord.Interaction[SelBot],
    agent: str | None = None,
    scope: Literal["all", "this", "per-instance"] = "all",
) -> None:
    await interaction.client.show_stats(interaction, agent, scope)


@app_commands.command(name="sel_agents", description="Agent names and descriptions")
async def _sel_agents(interaction: discord.Interaction[SelBot]) -> None:
    await interaction.client.list_agents(interaction)


@app_commands.command(name="sel_agent_reload", description="Re-read the agents directory (owners)")
async def _sel_agent_reload(interaction: discord.Interaction[SelBot]) -> None:
    await interaction.client.reload_agents(interaction)


@app_commands.command(name="sel_agent_history", description="Who ran what, when, with what result")
@app_commands.describe(
    agent="only this agent",
    user="only this user's calls (owners; others see their own)",
    outcome="only calls that ended so",
    limit=f"entries shown, newest first (1-{MAX_LIMIT})",
)
@app_commands.autocomplete(agent=_agent_names)
async def _sel_agent_history(
    interaction: discord.Interaction[SelBot],
    agent: str | None = None,
    user: discord.User | None = None,
    outcome: Literal["ok", "error", "refused"] | None = None,
    limit: app_commands.Range[int, 1, MAX_LIMIT] = DEFAULT_LIMIT,
) -> None:
    asked = str(user.id) if user else None
    await interaction.client.show_history(interaction, agent, asked, outcome, limit)


_SLASH_COMMANDS: tuple[app_commands.Command[Any, ..., None], ...] = (
    _sel_agent,
    _sel_agent_stats,
    _sel_agents,
    _sel_agent_reload,
    _sel_agent_history,
)


async def serve(bot: discord.Client, token: str, stop: asyncio.Event | None = None) -> None:
    """Run `bot` until `stop` is set, the task is cancelled (as `sel-otel bot` does on SIGTERM
    or SIGINT), or the connection fails.

    The client is closed on the way out. A rejected token or a missing privileged intent
    becomes a `ConfigError` saying what to fix; Discord out of reach, a `StartupError`.
    """
    stop = stop or asyncio.Event()
    try:
        async with bot:
            runner = asyncio.create_task(bot.start(token))
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
                ended_by_itself = runner.done()
                closing = asyncio.ensure_future(_close(bot, runner))
                try:
                    await asyncio.shield(closing)
                except asyncio.CancelledError:  # a second signal: the client closes all the same
                    await closing
                    raise
            if ended_by_itself:
                runner.result()  # its own failure, such as a rejected token
    except discord.LoginFailure as exc:
        raise ConfigError(f"DISCORD_TOKEN was rejected by Discord: {exc}") from exc
    except discord.PrivilegedIntentsRequired as exc:
        raise ConfigError(
            "The message content intent is not enabled for this application: enable it in the "
            "Developer Portal (Bot, Privileged Gateway Intents) or set "
            "SEL_DISCORD_MESSAGE_PREFIX=off"
        ) from exc
    except discord.Forbidden as exc:
        raise ConfigError(
            f"Discord refused the bot ({exc.text or exc.status}): invite it with the scopes "
            "`bot applications.commands`, and check SEL_DISCORD_GUILD_ID names a server it is in"
        ) from exc
    except (discord.HTTPException, discord.GatewayNotFound, OSError) as exc:
        raise StartupError(f"cannot reach Discord: {type(exc).__name__}: {exc}") from exc


async def _close(bot: discord.Client, runner: asyncio.Task[None]) -> None:
    """Close the client and wait for its connection task. Whatever either raises now is the
    consequence of stopping, not news: the caller has what decided the outcome, so it is
    logged at debug level alone."""
    try:
        await bot.close()
    except Exception:
        logger.debug("closing the Discord client failed", exc_info=True)
    try:
        await asyncio.wait_for(runner, timeout=5)
    except TimeoutError:
        logger.warning("the Discord connection did not stop within 5s")
    except (Exception, asyncio.CancelledError):
        logger.debug("the Discord connection ended with an error as it stopped", exc_info=True)


async def run_bot(settings: Settings, bot_settings: BotSettings, telemetry: Telemetry) -> None:
    """Run the SEL bot until stopped; the agents, cache and runtime close when it stops.

    Telemetry stays the caller's to shut down.
    """
    async with SelApp(settings, telemetry) as app:
        bot = SelBot(app.commands, bot_settings, tracer_provider=telemetry.tracer_provider)
        await serve(bot, bot_settings.token)
