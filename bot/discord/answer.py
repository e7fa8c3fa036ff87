"""One interaction's answer: its one response (a message, an edit, a text box or a deferral), then follow-ups."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import discord

from bot.discord.context import sent_ref
from bot.discord.limits import Editor
from bot.discord.rendering import Rendered
from bot.handlers import router
from bot.handlers.screens import Screen
from bot.render import escape_markdown, plain_text, to_markdown

if TYPE_CHECKING:
    from bot.discord.interactions import InteractionHandler

ACKNOWLEDGED = 40060  # "Interaction has already been acknowledged."


class Answer:
    """Answers one interaction: its one response (a message, an edit, a text box or a deferral), then follow-ups."""

    def __init__(self, handler: InteractionHandler, interaction: discord.Interaction[Any], *, ephemeral: bool) -> None:
        self.handler = handler
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.user_id = str(interaction.user.id)
        # Another instance, which got the same gateway event, acknowledged it first: we answer by follow-up.
        self.acknowledged_elsewhere = False

    def responded(self) -> bool:
        return self.acknowledged_elsewhere or self.interaction.response.is_done()

    async def acknowledge(self) -> bool:
        """Defers at once; False when Discord says the interaction was acknowledged already (by another
        instance that got the same gateway event: whichever instance claims it in the database answers it)."""
        try:
            await self.defer()
        except discord.HTTPException as error:
            if already_acknowledged(error):
                self.acknowledged_elsewhere = True
                return False
            raise
        return True

    async def run(self, work: Coroutine[Any, Any, list[Screen]], slow_seconds: float) -> None:
        """Runs the flow and answers at once; if it is slow, the interaction is deferred in time and answered by
        follow-up. Only for flows that may ask a question: a text box must be the first response."""
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=slow_seconds)
            if not done:
                await self.defer()
        except asyncio.CancelledError:
            task.cancel()
            raise
        except BaseException:
            # Discord could not be told to wait (an expired interaction): the flow's own work still completes.
            await asyncio.wait({task})
            raise
        await self.show(await task)

    async def defer(self) -> None:
        """Tells Discord the answer is coming: a "thinking…" message for a command, nothing visible for a press."""
        response = self.interaction.response
        if self.responded():
            return
        if self.interaction.type is discord.InteractionType.application_command or self.interaction.message is None:
            await response.defer(ephemeral=self.ephemeral, thinking=True)
        else:
            await response.defer()  # the pressed message stays; the answer edits it or follows it

    async def show(self, screens: list[Screen]) -> None:
        visible = [s for s in screens if s.text or s.photo or s.document or s.invoice or s.prompt is not None]
        for index, screen in enumerate(visible):
            if index == 0 and screen.prompt is not None and self._can_open_text_box(screen):
                await self._open_prompt(screen)
            else:
                await self._show(screen)
        notes = [s for s in screens if s.toast and (s.alert or not visible)]
        for note in notes:
            await self._send(Rendered(content=escape_markdown(plain_text(note.toast or ""))), ephemeral=True)
        if not self.responded():
            # A press answered with nothing to show (a page-number button): acknowledged, nothing changes.
            await self.interaction.response.defer()

    def _can_open_text_box(self, screen: Screen) -> bool:
        return (
            not self.responded()
            and self.interaction.type is not discord.InteractionType.modal_submit
            and not screen.buttons and screen.on_sent is None
        )

    async def _open_prompt(self, screen: Screen) -> None:
        """A flow's question opens a text box at once; its answer comes back as the text answering it."""
        reply_to = None
        if screen.reply_context is not None:
            reply_to = sent_ref(self.user_id, f"box{self.interaction.id}")
            await router.remember_reply_context(self.handler.services, reply_to, screen.reply_context)
        locale = await self.handler.renderer.locale_for(self.user_id)
        box = self.handler.text_box(locale, "answer", question=to_markdown(screen.text), placeholder=screen.prompt,
                                    reply_to=reply_to)
        await self.interaction.response.send_modal(box)

    async def _show(self, screen: Screen) -> None:
        rendered = await self.handler.renderer.render(screen, self.user_id, interactive=True)
        message = self.interaction.message
        if screen.edit and message is not None and not rendered.files and not rendered.before:
            await self._edit(rendered, message.id)
            message_id = message.id
        else:
            message_id = await self._send(rendered, ephemeral=self.ephemeral)
        await self.handler.after_sent(screen, sent_ref(self.user_id, message_id))

    async def _edit(self, rendered: Rendered, message_id: int) -> None:
        interaction = self.interaction
        kwargs = rendered.edit_kwargs()
        if not self.responded():
            await interaction.response.edit_message(**kwargs)
        else:
            await interaction.edit_original_response(**kwargs)
        self.handler.shown.record(message_id, rendered.view, interaction.edit_original_response)

    async def _send(self, rendered: Rendered, *, ephemeral: bool) -> int:
        interaction = self.interaction
        for piece in rendered.before:
            await self._send(Rendered(content=piece), ephemeral=ephemeral)
        kwargs = rendered.send_kwargs()
        if not self.responded():
            callback = await interaction.response.send_message(ephemeral=ephemeral, **kwargs)
            message_id = callback.message_id
            if message_id is None:
                message_id = (await interaction.original_response()).id
            editor: Editor = interaction.edit_original_response
        else:
            sent = await interaction.followup.send(wait=True, ephemeral=ephemeral, **kwargs)
            message_id = sent.id
            editor = _followup_editor(interaction, sent.id)
        self.handler.shown.record(message_id, rendered.view, editor)
        return message_id


def already_acknowledged(error: BaseException) -> bool:
    """Discord's 40060: the interaction has a response already, given by another instance."""
    return isinstance(error, discord.HTTPException) and error.code == ACKNOWLEDGED


def _followup_editor(interaction: discord.Interaction[Any], message_id: int) -> Editor:
    async def edit(**kwargs: Any) -> Any:
        return await interaction.followup.edit_message(message_id, **kwargs)

    return edit
