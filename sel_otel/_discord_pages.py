"""`Pager`: previous and next buttons under a reply too long for one embed."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import discord

#: Seconds the buttons work after the last turn; then they are disabled.
PAGE_TIMEOUT = 600.0


class Pager(discord.ui.View):
    """Turns the embeds `pages` of one message; only the user `owner` (who asked) may.

    Set `message` to the message sent with the view, so that its buttons are disabled when
    they stop working.
    """

    def __init__(
        self, pages: Sequence[discord.Embed], owner: int, *, timeout: float = PAGE_TIMEOUT
    ) -> None:
        super().__init__(timeout=timeout)
        self.pages = list(pages)
        self.owner = owner
        self.index = 0
        self.message: discord.InteractionMessage | None = None
        self._update()

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        if interaction.user.id == self.owner:
            return True
        await interaction.response.send_message(
            "These pages turn for whoever asked: run /sel_agent_stats to get your own.",
            ephemeral=True,
        )
        return False

    @discord.ui.button(label="◀ Previous", style=discord.ButtonStyle.secondary)
    async def previous(
        self, interaction: discord.Interaction[Any], button: discord.ui.Button[Pager]
    ) -> None:
        await self.show(interaction, self.index - 1)

    @discord.ui.button(label="Next ▶", style=discord.ButtonStyle.secondary)
    async def next(
        self, interaction: discord.Interaction[Any], button: discord.ui.Button[Pager]
    ) -> None:
        await self.show(interaction, self.index + 1)

    async def show(self, interaction: discord.Interaction[Any], index: int) -> None:
        """Replace the message's embed by page `index` (kept within the pages)."""
        self.index = max(0, min(index, len(self.pages) - 1))
        self._update()
        await interaction.response.edit_message(embed=self.pages[self.index], view=self)

    async def on_timeout(self) -> None:
        self.previous.disabled = self.next.disabled = True
        if self.message is not None:
            with contextlib.suppress(discord.HTTPException):
                await self.message.edit(view=self)

    def _update(self) -> None:
        self.previous.disabled = self.index == 0
        self.next.disabled = self.index == len(self.pages) - 1
