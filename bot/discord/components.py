"""Buttons, select menus, timed menus and text boxes: the Discord components an answer is made of.

Our buttons and menus are `discord.ui.DynamicItem`s, routed by their custom id's pattern, so they keep working
after a restart; discord.py builds them itself and they reach the interaction handler through the client.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from bot.discord.limits import (
    MARK,
    MAX_ANSWER,
    MAX_LABEL,
    MAX_MODAL_TITLE,
    MODAL_TIMEOUT,
    PICK_PREFIX,
    WRITE_PREFIX,
    Editor,
    short,
)
from bot.handlers.screens import SentRef

if TYPE_CHECKING:
    from bot.discord.interactions import InteractionHandler
    from bot.discord.tracking import InFlight, ShownMessages

log = logging.getLogger(__name__)

_DUPLICATE_SUFFIX = re.compile(rf"{MARK}\d+$")


def _handler(interaction: discord.Interaction[Any]) -> InteractionHandler:
    return interaction.client.interactions  # type: ignore[attr-defined, no-any-return]


def _action_of(custom_id: str) -> str:
    return _DUPLICATE_SUFFIX.sub("", custom_id)


_ACTION_TEMPLATE = rf"(?P<action>[^{MARK}][^{MARK}]*)(?:{MARK}\d+)?"  # an action id, maybe made unique by a suffix


class ActionButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=_ACTION_TEMPLATE):
    """A button whose custom id is the router's action id; routed by pattern, so it outlives views and restarts."""

    def __init__(self, label: str, custom_id: str) -> None:
        super().__init__(discord.ui.Button(label=label[:MAX_LABEL] or "·", custom_id=custom_id))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ActionButton:
        return cls(getattr(item, "label", None) or "·", match.group(0))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _handler(interaction).on_action(interaction, _action_of(self.custom_id))


class ActionSelect(discord.ui.DynamicItem[discord.ui.Select[Any]], template=rf"{PICK_PREFIX}(?P<index>\d+)"):
    """A long list of action buttons as one select menu; each option's value is an action id."""

    def __init__(self, index: int, options: list[tuple[str, str]]) -> None:
        choices = [discord.SelectOption(label=label[:100] or "·", value=value) for label, value in options]
        super().__init__(discord.ui.Select(custom_id=f"{PICK_PREFIX}{index}", options=choices))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ActionSelect:
        options = [(option.label, option.value) for option in getattr(item, "options", [])]
        return cls(int(match.group("index")), options or [("·", "noop")])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        values = self.item.values
        if values:
            await _handler(interaction).on_action(interaction, _action_of(values[0]))


class WriteButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"{WRITE_PREFIX}(?P<kind>reply|answer)"):
    """Opens a text box whose text answers the message the button is on: a reply, or a flow's question."""

    def __init__(self, label: str, kind: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=label[:MAX_LABEL], custom_id=f"{WRITE_PREFIX}{kind}", style=discord.ButtonStyle.primary
            )
        )
        self.kind = kind

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> WriteButton:
        return cls(getattr(item, "label", None) or "·", match.group("kind"))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _handler(interaction).open_text_box(interaction, self.kind)


class TimedView(discord.ui.View):
    """A menu shown in answer to an interaction: after its timeout the buttons are disabled in the message."""

    def __init__(self, timeout: float | None) -> None:
        super().__init__(timeout=timeout)
        self.editor: Editor | None = None
        # Set by the renderer: the timeout's edit is waited for on shutdown, and the menu is forgotten.
        self.tasks: InFlight | None = None
        self.shown: ShownMessages | None = None

    async def on_timeout(self) -> None:
        tasks, shown = self.tasks, self.shown
        task = asyncio.current_task()
        if tasks is not None and shown is not None and task is not None:
            tasks.track(task)
            shown.forget_view(self)
        if not self.is_dispatchable():
            return  # only links: nothing stops working, nothing to disable
        for child in self.children:
            target = child.item if isinstance(child, discord.ui.DynamicItem) else child
            if hasattr(target, "disabled"):
                target.disabled = True
        if self.editor is not None:
            try:
                await self.editor(view=self)
            except (discord.HTTPException, aiohttp.ClientError) as error:
                log.info("discord: could not disable the buttons of a timed-out menu: %s", error)


class TextBox(discord.ui.Modal):
    """Asks for one text; the submitted text goes to router.handle_text, answering `reply_to` when given.

    With `picture_label` (a reply box) it also takes one optional file, Discord's modal file upload (discord.py
    2.7): a picture sent in reply, the text its caption. The text is then optional too, as a photo's caption is."""

    def __init__(self, handler: InteractionHandler, shown: ShownMessages, *, title: str, label: str,
                 question: str | None, placeholder: str | None, reply_to: SentRef | None,
                 picture_label: str | None = None) -> None:
        super().__init__(title=short(title, MAX_MODAL_TITLE) or "CumApp", timeout=MODAL_TIMEOUT)
        self.handler = handler
        self.shown = shown
        self.reply_to = reply_to
        if question:
            self.add_item(discord.ui.TextDisplay(question[:MAX_ANSWER]))
        self.answer: discord.ui.TextInput[Any] = discord.ui.TextInput(
            style=discord.TextStyle.paragraph, max_length=MAX_ANSWER,
            placeholder=short(placeholder, 100) if placeholder else None, required=picture_label is None,
        )
        self.add_item(discord.ui.Label(text=short(label, 45), component=self.answer))
        self.picture: discord.ui.FileUpload[Any] | None = None
        if picture_label is not None:
            self.picture = discord.ui.FileUpload(required=False, min_values=0, max_values=1)
            self.add_item(discord.ui.Label(text=short(picture_label, 45), component=self.picture))

    async def on_submit(self, interaction: discord.Interaction[Any], /) -> None:
        files = self.picture.values if self.picture is not None else []
        await self.handler.on_text(interaction, self.answer.value or "", self.reply_to,
                                   attachment=files[0] if files else None)

    async def on_error(self, interaction: discord.Interaction[Any], error: Exception, /) -> None:
        await self.handler.report_error(interaction, error)

    async def on_timeout(self) -> None:
        self.shown.forget_view(self)

    def stop(self) -> None:
        super().stop()
        self.shown.forget_view(self)
