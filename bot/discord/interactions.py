"""Interactions into router calls: a slash command, a button or menu choice, a submitted text box, and errors.

Every rule lives in bot/handlers (the router) and core, exactly as for Telegram; this only decides who may see
the answer (privately, unless the user is in their own DM with the bot), when Discord is told it is coming, and
reports what went wrong.

Acknowledge first, then work. Discord waits 3 s for an interaction's first response, but a person feels 100 ms:
so an interaction is deferred before anything is read or written ("thinking…" for a command, nothing visible for
a press), then the flow runs and its answer replaces the placeholder or edits the pressed message. The one
exception is an interaction whose answer may be a question (`asks`): a text box can only be the first response,
so those run first and answer at once when ready, deferred only after `slow_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import discord

from bot.discord.answer import Answer, already_acknowledged
from bot.discord.commands import may_ask
from bot.discord.components import TextBox
from bot.discord.context import contact_of, ephemeral_source, in_bot_dm, sent_ref
from bot.discord.limits import PLATFORM
from bot.discord.rendering import ScreenRenderer
from bot.discord.tracking import InFlight, SeenInteractions, ShownMessages
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
        self.seen = SeenInteractions()

    async def on_command(self, interaction: discord.Interaction[Any], name: str, text: str, *, private: bool,
                         asks: bool = False) -> None:
        """A slash command: answered privately when it shows private data or anyone but the user could see it.
        `asks`: its flow may answer with a question (free text it takes was not given)."""
        answer = Answer(self, interaction, ephemeral=private or not in_bot_dm(interaction))
        await self._answer(answer, lambda: router.handle_command(self.services, contact_of(interaction), name, text),
                           asks=asks)

    async def on_stale_command(self, interaction: discord.Interaction[Any]) -> None:
        data: dict[str, Any] = dict(interaction.data or {})
        text = " ".join(str(option.get("value", "")) for option in data.get("options", []) if "value" in option)
        name = str(data.get("name", ""))
        spec = router.COMMANDS.get(name)
        await self.on_command(interaction, name, text, private=spec is None or spec.private or spec.admin,
                              asks=not text and may_ask(name))

    async def on_action(self, interaction: discord.Interaction[Any], action: str) -> None:
        """A button or a menu choice: the router's action id, on the message it was pressed on."""
        message = interaction.message
        ref = sent_ref(str(interaction.user.id), message.id) if message is not None else None
        answer = Answer(self, interaction, ephemeral=ephemeral_source(interaction) or not in_bot_dm(interaction))
        await self._answer(answer, lambda: router.handle_action(self.services, contact_of(interaction), action, ref),
                           asks=_action_asks(action))

    async def on_text(self, interaction: discord.Interaction[Any], text: str, reply_to: SentRef | None, *,
                      attachment: discord.Attachment | None = None) -> None:
        """A submitted text box: a reply to a message, or the answer to a flow's question; with an `attachment`
        (a reply box's file upload) a picture whose caption is the text, as a Telegram photo reply."""

        async def work() -> list[Screen]:
            file = None
            if attachment is not None:
                file = await incoming_file(interaction, attachment, self.services.settings.media_max_bytes)
            return await router.handle_text(self.services, contact_of(interaction), text, reply_to=reply_to,
                                            file=file)

        answer = Answer(self, interaction, ephemeral=ephemeral_source(interaction) or not in_bot_dm(interaction))
        # A text box's answer cannot be another text box: acknowledged first (and so before a picture downloads).
        await self._answer(answer, work, asks=False)

    async def open_text_box(self, interaction: discord.Interaction[Any], kind: str) -> None:
        """The Reply (or Answer) button: a text box whose text answers the message the button is on."""
        self.tasks.track_current()
        message = interaction.message
        user_id = str(interaction.user.id)
        reply_to = sent_ref(user_id, message.id) if message is not None else None
        try:
            # The text box is this interaction's first response, so nothing is claimed in the database before it:
            # opening a box changes nothing, and another instance's copy of the press fails to open a second one.
            if not self.seen.first(interaction.id):
                return
            locale = await self.renderer.locale_for(user_id)  # remembered: usually no database read at all
            await interaction.response.send_modal(self.text_box(locale, kind, question=None, placeholder=None,
                                                                reply_to=reply_to, picture=kind == "reply"))
        except Exception as error:
            await self.report_error(interaction, error)

    def text_box(self, locale: str, kind: str, *, question: str | None, placeholder: str | None,
                 reply_to: SentRef | None, picture: bool = False) -> TextBox:
        """`picture`: a reply box, which also takes a picture (a reply to a relayed SMS goes out as an MMS)."""
        box = TextBox(
            self, self.shown, title=t(locale, f"dc_modal_{kind}_title"), label=t(locale, "dc_modal_label"),
            question=question, placeholder=placeholder, reply_to=reply_to,
            picture_label=t(locale, "dc_modal_picture_label") if picture else None,
        )
        self.shown.add_box(box)
        return box

    async def after_sent(self, screen: Screen, ref: SentRef) -> None:
        if screen.reply_context is not None:
            await router.remember_reply_context(self.services, ref, screen.reply_context)
        if screen.on_sent is not None:
            await screen.on_sent(ref)

    async def _first(self, interaction: discord.Interaction[Any]) -> bool:
        """True the first time this interaction id arrives at any instance: the one that claims it runs the flow
        and answers (another instance that got the same gateway event may have sent the acknowledgement)."""
        return await updates.claim(self.services.db, PLATFORM, interaction.id)

    async def _answer(self, answer: Answer, work: Callable[[], Coroutine[Any, Any, list[Screen]]], *,
                      asks: bool) -> None:
        self.tasks.track_current()
        interaction = answer.interaction
        try:
            if not self.seen.first(interaction.id):
                return  # this process has it already: a replayed gateway event
            if asks:
                # Its answer may be a text box, which only a first response can open: run, answer when ready.
                if await self._first(interaction):
                    await answer.run(work(), self.slow_seconds)
                return
            # The acknowledgement goes out first; the claim and the flow run while it travels, and the answer
            # follows once Discord has it (a follow-up or an edit needs an acknowledged interaction).
            acknowledged = asyncio.ensure_future(answer.acknowledge())
            try:
                await asyncio.sleep(0)
                screens = await work() if await self._first(interaction) else None
            except BaseException:
                await asyncio.wait({acknowledged})
                if not acknowledged.cancelled():
                    acknowledged.exception()  # seen; the flow's error is the one reported
                raise
            await acknowledged  # an expired interaction raises here: the flow has run, nothing can be shown
            if screens is not None:  # None: another instance claimed it and answers (our deferral included)
                await answer.show(screens)
        except Exception as error:
            await self.report_error(interaction, error)
        finally:
            # Whatever the flow did may have changed the account's language.
            self.renderer.forget_locale(str(interaction.user.id))

    async def report_error(self, interaction: discord.Interaction[Any], error: BaseException) -> None:
        """The one error handler: an apology with an id for the user, the trace with the same id in the log."""
        if already_acknowledged(error):
            log.info("discord: interaction %s was acknowledged by another instance", interaction.id)
            return
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


async def incoming_file(
    interaction: discord.Interaction[Any], attachment: discord.Attachment, max_bytes: int
) -> router.IncomingFile:
    """An uploaded file, downloaded from its CDN URL, as the router takes a picture. Its key is the attachment's
    id (a snowflake, unique to that upload): the same upload submitted again sends and charges once. A file over
    `max_bytes` is not downloaded (paid Discord accounts upload up to 500 MB): the router says it is too large."""
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if not content_type:
        content_type = mimetypes.guess_type(attachment.filename)[0] or "application/octet-stream"
    key = f"{interaction.user.id}:{attachment.id}"
    if attachment.size > max_bytes:
        return router.IncomingFile(b"", content_type, key, declared_size=attachment.size)
    return router.IncomingFile(await attachment.read(), content_type, key)


# Buttons whose flow answers with a question (and so may open a text box at once): the service search of /verify,
# composing (New SMS) and replying to an SMS, a command's arguments (the admin menu). Any other button is
# acknowledged before its flow runs.
ASKING_ACTIONS = frozenset({"vfq", "sms_compose", "sms_reply", "num_sms", "ask"})


def _action_asks(action: str) -> bool:
    prefix, _, rest = action.partition(":")
    if prefix == "cmd":  # a menu button runs a command without arguments
        return may_ask(rest.partition(":")[0])
    return prefix in ASKING_ACTIONS
