"""Interactions into router calls: a slash command, a button or menu choice, a submitted text box, and errors.

Every rule lives in bot/handlers (the router) and core, exactly as for Telegram; this only decides who may see
the answer (privately, unless the user is in their own DM with the bot) and reports what went wrong.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import discord

from bot.discord.answer import Answer
from bot.discord.components import TextBox
from bot.discord.context import contact_of, ephemeral_source, in_bot_dm, sent_ref
from bot.discord.limits import PLATFORM
from bot.discord.rendering import ScreenRenderer
from bot.discord.tracking import InFlight, ShownMessages
from bot.handlers import router
from bot.handlers.screens import Screen, SentRef
from bot.render import to_markdown
from core.platform import updates
from core.platform.i18n import DEFAULT_LANGUAGE, t
from core.services import Services

log = logging.getLogger(__name__)


class InteractionHandler:
    """Hands each interaction to the router and its Screens to an `Answer`; the one error handler."""

    def __init__(self, services: Services, renderer: ScreenRenderer, shown: ShownMessages, tasks: InFlight, *,
                 slow_seconds: float) -> None:
        self.services = services
        self.renderer = renderer
        self.shown = shown
        self.tasks = tasks
        self.slow_seconds = slow_seconds

    async def on_command(self, interaction: discord.Interaction[Any], name: str, text: str, *, private: bool) -> None:
        """A slash command: answered privately when it shows private data or anyone but the user could see it."""
        answer = Answer(self, interaction, ephemeral=private or not in_bot_dm(interaction))
        await self._answer(answer, lambda: router.handle_command(self.services, contact_of(interaction), name, text))

    async def on_stale_command(self, interaction: discord.Interaction[Any]) -> None:
        data: dict[str, Any] = dict(interaction.data or {})
        text = " ".join(str(option.get("value", "")) for option in data.get("options", []) if "value" in option)
        name = str(data.get("name", ""))
        spec = router.COMMANDS.get(name)
        await self.on_command(interaction, name, text, private=spec is None or spec.private or spec.admin)

    async def on_action(self, interaction: discord.Interaction[Any], action: str) -> None:
        """A button or a menu choice: the router's action id, on the message it was pressed on."""
        message = interaction.message
        ref = sent_ref(str(interaction.user.id), message.id) if message is not None else None
        answer = Answer(self, interaction, ephemeral=ephemeral_source(interaction) or not in_bot_dm(interaction))
        await self._answer(answer, lambda: router.handle_action(self.services, contact_of(interaction), action, ref))

    async def on_text(self, interaction: discord.Interaction[Any], text: str, reply_to: SentRef | None) -> None:
        """A submitted text box: a reply to a message, or the answer to a flow's question."""
        answer = Answer(self, interaction, ephemeral=ephemeral_source(interaction) or not in_bot_dm(interaction))
        await self._answer(
            answer, lambda: router.handle_text(self.services, contact_of(interaction), text, reply_to=reply_to)
        )

    async def open_text_box(self, interaction: discord.Interaction[Any], kind: str) -> None:
        """The Reply (or Answer) button: a text box whose text answers the message the button is on."""
        self.tasks.track_current()
        message = interaction.message
        user_id = str(interaction.user.id)
        reply_to = sent_ref(user_id, message.id) if message is not None else None
        try:
            if not await self._first(interaction):
                return
            locale = await self.renderer.locale_for(user_id)
            await interaction.response.send_modal(self.text_box(locale, kind, question=None, placeholder=None,
                                                                reply_to=reply_to))
        except Exception as error:
            await self.report_error(interaction, error)

    def text_box(self, locale: str, kind: str, *, question: str | None, placeholder: str | None,
                 reply_to: SentRef | None) -> TextBox:
        box = TextBox(
            self, self.shown, title=t(locale, f"dc_modal_{kind}_title"), label=t(locale, "dc_modal_label"),
            question=question, placeholder=placeholder, reply_to=reply_to,
        )
        self.shown.add_box(box)
        return box

    async def after_sent(self, screen: Screen, ref: SentRef) -> None:
        if screen.reply_context is not None:
            await router.remember_reply_context(self.services, ref, screen.reply_context)
        if screen.on_sent is not None:
            await screen.on_sent(ref)

    async def _first(self, interaction: discord.Interaction[Any]) -> bool:
        """True the first time this interaction id arrives at any instance; a repeat is dropped unanswered (its
        one response was already given, so it could only fail, after doing the work a second time)."""
        return await updates.claim(self.services.db, PLATFORM, interaction.id)

    async def _answer(self, answer: Answer, work: Callable[[], Coroutine[Any, Any, list[Screen]]]) -> None:
        self.tasks.track_current()
        try:
            if not await self._first(answer.interaction):
                return
            await answer.run(work())
        except Exception as error:
            await self.report_error(answer.interaction, error)

    async def report_error(self, interaction: discord.Interaction[Any], error: BaseException) -> None:
        """The one error handler: an apology with an id for the user, the trace with the same id in the log."""
        if isinstance(error, discord.NotFound | discord.Forbidden | discord.RateLimited | aiohttp.ClientError
                      | TimeoutError) or (isinstance(error, discord.HTTPException) and error.status >= 500):
            # An interaction that expired, a user who left, Discord having a bad minute: not our defect.
            log.warning("discord: answering an interaction failed: %r", error)
            return
        error_id = uuid.uuid4().hex[:8]
        log.error("error %s while handling a Discord interaction", error_id, exc_info=error)
        self.services.metrics.handler_errors.inc()
        language = "es" if str(interaction.locale).startswith("es") else DEFAULT_LANGUAGE
        content = to_markdown(t(language, "error_unexpected", error_id=error_id))
        with contextlib.suppress(discord.HTTPException, aiohttp.ClientError):
            if interaction.response.is_done():
                await interaction.followup.send(content, ephemeral=True)
            else:
                await interaction.response.send_message(content, ephemeral=True)
