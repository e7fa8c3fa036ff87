"""The Discord front end: slash commands, buttons and modals into handler calls, Screens rendered as messages.

Parse and render only: every rule lives in bot/handlers (the router) and core, exactly as for Telegram.

How it runs. `start()` logs in over HTTP (`GET /users/@me`, `GET /oauth2/applications/@me`), builds one slash
command per command of the router's registry, syncs them (to each of `DISCORD_GUILD_IDS` at once, otherwise
globally) and, in production, opens the gateway websocket in a background task (`Client.connect`); interactions
then arrive as gateway events and discord.py hands them to the command tree, to the persistent components below
(`discord.ui.DynamicItem`, so buttons keep working after a restart) and to open modals. Tests pass
`gateway=False` and feed interaction payloads straight into the client's connection state.

`DISCORD_API_BASE_URL`. discord.py builds every REST URL, bot and interaction webhook alike, from one class
attribute, `discord.http.Route.BASE` (its own `_set_api_version` changes it the same way), and a plain `Client`
connects to the class default gateway `DiscordWebSocket.DEFAULT_GATEWAY`. With a base URL set, `start()` sets
`Route.BASE` before logging in, asks that server's `GET /gateway/bot` for the gateway address and sets it as the
default gateway; `stop()` puts both back. They are process-wide, as is a process's one Discord bot.

Chat ids. A Discord user's chat id is their user id: the only id an interaction always carries (guild
interactions do not name the DM channel), and what `DiscordSender` opens (and caches) a DM channel for.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Optional

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.app_commands import Choice, locale_str
from discord.gateway import DiscordWebSocket
from discord.http import Route
from sqlalchemy import select

from bot.handlers import router
from bot.handlers.registry import load_flows
from bot.handlers.screens import Button, Screen, SentRef, screen_from_outgoing
from bot.render import escape_markdown, plain_text, split_markdown, to_markdown
from core.admin.stats import PERIODS as STATS_PERIODS
from core.models import ChatIdentity, User
from core.money.accounts import Contact
from core.platform.i18n import DEFAULT_LANGUAGE, LANGUAGES, t
from core.platform.outbox import DeliveryError, OutgoingMessage
from core.platform.settings import TIER_NAMES
from core.services import Services

log = logging.getLogger(__name__)

PLATFORM = "discord"
MAX_CONTENT = 2000
MAX_EMBED_TITLE = 256
MAX_EMBED_DESCRIPTION = 4096
MAX_ROWS = 5
MAX_PER_ROW = 5
MAX_OPTIONS = 25
MAX_LABEL = 80
MAX_DESCRIPTION = 100
MAX_MODAL_TITLE = 45
MAX_ANSWER = 4000
# After this long without an answer the interaction is deferred: Discord drops it unanswered at 3 s.
SLOW_SECONDS = 1.0
AUTOCOMPLETE_SECONDS = 2.0
# A menu's buttons are disabled this long after it was shown; it must end inside the 15 minutes an
# interaction's token can edit the message (the token is the only way to edit an ephemeral message).
VIEW_TIMEOUT = 600.0
MODAL_TIMEOUT = 900.0
TOKEN_LIFETIME = 14 * 60.0
# Our own component ids start with this character, which no router action id uses.
MARK = "§"
WRITE_PREFIX = f"{MARK}write:"
PICK_PREFIX = f"{MARK}pick:"
_DUPLICATE_SUFFIX = re.compile(rf"{MARK}\d+$")
_DISCORD_LANGUAGES = {discord.Locale.spain_spanish: "es", discord.Locale.latin_american_spanish: "es"}

Editor = Callable[..., Awaitable[Any]]


# --- slash command options ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One typed option of a slash command; the router gets the options' values joined with spaces, in order."""

    name: str
    help_key: str
    kind: type = str
    required: bool = True
    choices: tuple[str, ...] = ()
    autocomplete: str | None = None  # a source in DiscordFrontEnd._sources


_USER = Option("user", "dc_opt_user")
# The arguments each command takes (CONTRACT.md, and the flows for the rest); a command not listed here (a flow
# added later) gets FREE_TEXT, so nothing it could take is lost.
OPTIONS: dict[str, tuple[Option, ...]] = {
    **{name: () for name in (
        "start", "help", "numbers", "inbox", "balance", "topup", "history", "settings", "cancel", "suggest",
        "templates", "health",
    )},
    "stats": (Option("period", "dc_opt_period", required=False, choices=tuple(STATS_PERIODS)),),
    "verify": (Option("service", "dc_opt_service", required=False, autocomplete="services"),),
    # Slash options hold one line: given only the number, the flow asks for the text in a text box.
    "sms": (Option("to", "dc_opt_to"), Option("text", "dc_opt_text", required=False)),
    "link": (Option("code", "dc_opt_code", required=False),),
    "analyze": (Option("text", "dc_opt_text", required=False),),  # without it: a text box keeps a paste's lines
    "broadcast": (Option("text", "dc_opt_text", required=False),),
    "grant": (_USER, Option("amount", "dc_opt_amount", kind=float), Option("reason", "dc_opt_reason", required=False)),
    "ban": (_USER,),
    "unban": (_USER,),
    "tier": (_USER, Option("tier", "dc_opt_tier", choices=TIER_NAMES)),
    "user": (_USER,),
    "audit": (Option("user", "dc_opt_user", required=False),),
    "refund": (Option("payment", "dc_opt_payment", kind=int),),
}
FREE_TEXT = (Option("text", "dc_opt_text", required=False),)


def command_text(options: tuple[Option, ...], values: dict[str, Any]) -> str:
    """The argument text the router parses, e.g. `@bob 2.50 welcome gift` for /grant."""
    words = []
    for option in options:
        value = values.get(option.name)
        if value is None:
            continue
        if isinstance(value, float):
            # 2.5 → "2.50"; an amount with more than cents stays as typed, for the router to refuse.
            value = f"{value:.2f}" if abs(value * 100 - round(value * 100)) < 1e-6 else repr(value)
        words.append(str(value).strip())
    return " ".join(word for word in words if word)


def _short(text: str, limit: int) -> str:
    text = " ".join(plain_text(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _english(key: str) -> locale_str:
    """A catalog text as discord.py's translatable string; the translator reads the key back."""
    return locale_str(_short(t(DEFAULT_LANGUAGE, key), MAX_DESCRIPTION), key=key)


class CatalogTranslator(app_commands.Translator):
    """Command and option descriptions in each catalog language, so Discord shows them in the user's own."""

    async def translate(
        self, string: locale_str, locale: discord.Locale, context: app_commands.TranslationContextTypes
    ) -> str | None:
        key = string.extras.get("key")
        language = _DISCORD_LANGUAGES.get(locale)
        if key is None or language is None:
            return None
        return _short(t(language, key), MAX_DESCRIPTION)


# --- who and where -----------------------------------------------------------------------------------------------


def contact_of(interaction: discord.Interaction[Any]) -> Contact:
    user = interaction.user
    return Contact(
        platform=PLATFORM,
        platform_user_id=str(user.id),
        chat_id=str(user.id),
        username=user.name,
        display_name=user.display_name,
        language_code=str(interaction.locale),
    )


def _in_bot_dm(interaction: discord.Interaction[Any]) -> bool:
    """In the user's own DM with the bot, where nobody else reads along (not a guild, not a DM between people)."""
    channel = interaction.channel
    in_dm = channel is not None and getattr(channel, "type", None) == discord.ChannelType.private
    return interaction.guild_id is None and in_dm and not interaction.context.private_channel


def _ephemeral_source(interaction: discord.Interaction[Any]) -> bool:
    message = interaction.message
    return message is not None and message.flags.ephemeral


def _ref(user_id: str, message_id: int | str) -> SentRef:
    return SentRef(PLATFORM, user_id, str(message_id))


# --- components ----------------------------------------------------------------------------------------------


def _front(interaction: discord.Interaction[Any]) -> DiscordFrontEnd:
    return interaction.client.front  # type: ignore[attr-defined, no-any-return]


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
        await _front(interaction).on_action(interaction, _action_of(self.custom_id))


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
            await _front(interaction).on_action(interaction, _action_of(values[0]))


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
        await _front(interaction).open_text_box(interaction, self.kind)


class TimedView(discord.ui.View):
    """A menu shown in answer to an interaction: after its timeout the buttons are disabled in the message."""

    def __init__(self, timeout: float | None) -> None:
        super().__init__(timeout=timeout)
        self.editor: Editor | None = None
        self.front: DiscordFrontEnd | None = None

    async def on_timeout(self) -> None:
        front = self.front
        task = asyncio.current_task()
        if front is not None and task is not None:
            front.track(task)
            front.forget_view(self)
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
    """Asks for one text; the submitted text goes to router.handle_text, answering `reply_to` when given."""

    def __init__(self, front: DiscordFrontEnd, *, title: str, label: str, question: str | None,
                 placeholder: str | None, reply_to: SentRef | None) -> None:
        super().__init__(title=_short(title, MAX_MODAL_TITLE) or "CumApp", timeout=MODAL_TIMEOUT)
        self.front = front
        self.reply_to = reply_to
        if question:
            self.add_item(discord.ui.TextDisplay(question[:MAX_ANSWER]))
        self.answer: discord.ui.TextInput[Any] = discord.ui.TextInput(
            style=discord.TextStyle.paragraph, max_length=MAX_ANSWER,
            placeholder=_short(placeholder, 100) if placeholder else None,
        )
        self.add_item(discord.ui.Label(text=_short(label, 45), component=self.answer))

    async def on_submit(self, interaction: discord.Interaction[Any], /) -> None:
        await self.front.on_text(interaction, self.answer.value or "", self.reply_to)

    async def on_error(self, interaction: discord.Interaction[Any], error: Exception, /) -> None:
        await self.front.report_error(interaction, error)

    async def on_timeout(self) -> None:
        self.front.forget_view(self)

    def stop(self) -> None:
        super().stop()
        self.front.forget_view(self)


# --- rendering -----------------------------------------------------------------------------------------------------


@dataclass
class Rendered:
    """One Screen as Discord message parts; `before` holds earlier pieces of a text too long for one message."""

    content: str | None = None
    embed: discord.Embed | None = None
    view: discord.ui.View | None = None
    files: list[discord.File] = field(default_factory=list)
    before: list[str] = field(default_factory=list)

    def send_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.content:
            kwargs["content"] = self.content
        if self.embed is not None:
            kwargs["embed"] = self.embed
        if self.view is not None:
            kwargs["view"] = self.view
        if self.files:
            kwargs["files"] = self.files
        return kwargs

    def edit_kwargs(self) -> dict[str, Any]:
        """Everything the new screen does not have is removed from the message."""
        return {"content": self.content or None, "embed": self.embed, "view": self.view}


def _text_parts(
    text: str, extra: str, *, previews: bool, embeds: bool
) -> tuple[str | None, discord.Embed | None, list[str]]:
    """Content, an embed where one reads better, and earlier pieces of an overlong text."""
    first, newline, rest = text.partition("\n")
    title = escape_markdown(plain_text(first).strip())
    if embeds and "<b>" in first and rest.strip() and 0 < len(title) <= MAX_EMBED_TITLE:
        # A heading line over a block of lines (a balance, a card, a list) reads best as an embed.
        body = (to_markdown(rest, previews=previews) + extra).strip()
        if 0 < len(body) <= MAX_EMBED_DESCRIPTION:
            return None, discord.Embed(title=title, description=body), []
    markdown = (to_markdown(text, previews=previews) + extra).strip()
    if len(markdown) <= MAX_CONTENT:
        return markdown or None, None, []
    if len(markdown) <= MAX_EMBED_DESCRIPTION:
        return None, discord.Embed(description=markdown), []
    pieces = split_markdown(markdown, MAX_CONTENT)
    return pieces[-1], None, pieces[:-1]


def _copy_blocks(markdown_text: str, rows: list[list[Button]]) -> str:
    """Discord has no copy button: the text to copy is shown as code, unless the message shows it as code already."""
    blocks = []
    for row in rows:
        for button in row:
            copy = button.copy_text
            if copy and f"`{copy}`" not in markdown_text and f"```\n{copy}\n```" not in markdown_text:
                blocks.append(f"\n```\n{copy.replace('```', '`​``')}\n```")
    return "".join(blocks)


def _kind(button: Button) -> str | None:
    """What a button picks: the prefix of its action id (`vfp` for every service of a service list)."""
    if not button.action or button.action.startswith(MARK):
        return None
    return button.action.split(":", 1)[0]


def _fit(rows: list[list[Button]]) -> tuple[list[list[Button]], list[Button]]:
    """At most five rows of at most five buttons; a list too long for that becomes select-menu options."""
    rows = [row[i : i + MAX_PER_ROW] for row in rows for i in range(0, len(row), MAX_PER_ROW) if row]
    listed: list[Button] = []

    def fits() -> bool:
        return len(rows) + math.ceil(len(listed) / MAX_OPTIONS) <= MAX_ROWS

    if not fits():
        # The list is the leading run of like buttons (one action prefix); the rows after it stay buttons.
        kind = _kind(rows[0][0])
        while rows and kind is not None and all(_kind(b) == kind for b in rows[0]):
            listed.extend(rows.pop(0))
    while not fits() and rows and all(_kind(b) is not None for b in rows[0]):
        listed.extend(rows.pop(0))
    room = MAX_ROWS - math.ceil(len(listed) / MAX_OPTIONS)
    if len(rows) > room:
        log.warning("discord: %d button rows do not fit in a message; the last ones are left out", len(rows) - room)
        rows = rows[:room] if room > 0 else []
    return rows, listed


def _unique(custom_id: str, taken: set[str]) -> str:
    """Discord refuses two components with one custom id; Telegram allows it (two page buttons doing nothing)."""
    candidate, n = custom_id, 1
    while candidate in taken:
        n += 1
        candidate = f"{custom_id}{MARK}{n}"
    taken.add(candidate)
    return candidate


def _same_label(a: str, b: str) -> bool:
    def letters(text: str) -> str:
        return "".join(ch for ch in text.casefold() if ch.isalnum())

    return letters(a) == letters(b) != ""


# --- one interaction's answer ------------------------------------------------------------------------------------


class Answer:
    """Answers one interaction: its one response (a message, an edit, a text box or a deferral), then follow-ups."""

    def __init__(self, front: DiscordFrontEnd, interaction: discord.Interaction[Any], *, ephemeral: bool) -> None:
        self.front = front
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.user_id = str(interaction.user.id)

    async def run(self, work: Coroutine[Any, Any, list[Screen]]) -> None:
        """Runs the flow; if it is slow, the interaction is deferred in time and answered by follow-up."""
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.front.slow_seconds)
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
        if response.is_done():
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
        if not self.interaction.response.is_done():
            # A press answered with nothing to show (a page-number button): acknowledged, nothing changes.
            await self.interaction.response.defer()

    def _can_open_text_box(self, screen: Screen) -> bool:
        return (
            not self.interaction.response.is_done()
            and self.interaction.type is not discord.InteractionType.modal_submit
            and not screen.buttons and screen.on_sent is None
        )

    async def _open_prompt(self, screen: Screen) -> None:
        """A flow's question opens a text box at once; its answer comes back as the text answering it."""
        reply_to = None
        if screen.reply_context is not None:
            reply_to = _ref(self.user_id, f"box{self.interaction.id}")
            await router.remember_reply_context(self.front.services, reply_to, screen.reply_context)
        locale = await self.front.locale_for(self.user_id)
        box = self.front.text_box(locale, "answer", question=to_markdown(screen.text), placeholder=screen.prompt,
                                  reply_to=reply_to)
        await self.interaction.response.send_modal(box)

    async def _show(self, screen: Screen) -> None:
        rendered = await self.front.render(screen, self.user_id, interactive=True)
        message = self.interaction.message
        if screen.edit and message is not None and not rendered.files and not rendered.before:
            await self._edit(rendered, message.id)
            message_id = message.id
        else:
            message_id = await self._send(rendered, ephemeral=self.ephemeral)
        await self.front.after_sent(screen, _ref(self.user_id, message_id))

    async def _edit(self, rendered: Rendered, message_id: int) -> None:
        interaction = self.interaction
        kwargs = rendered.edit_kwargs()
        if not interaction.response.is_done():
            await interaction.response.edit_message(**kwargs)
        else:
            await interaction.edit_original_response(**kwargs)
        self.front.shown(message_id, rendered.view, interaction.edit_original_response)

    async def _send(self, rendered: Rendered, *, ephemeral: bool) -> int:
        interaction = self.interaction
        for piece in rendered.before:
            await self._send(Rendered(content=piece), ephemeral=ephemeral)
        kwargs = rendered.send_kwargs()
        if not interaction.response.is_done():
            callback = await interaction.response.send_message(ephemeral=ephemeral, **kwargs)
            message_id = callback.message_id
            if message_id is None:
                message_id = (await interaction.original_response()).id
            editor: Editor = interaction.edit_original_response
        else:
            sent = await interaction.followup.send(wait=True, ephemeral=ephemeral, **kwargs)
            message_id = sent.id
            editor = _followup_editor(interaction, sent.id)
        self.front.shown(message_id, rendered.view, editor)
        return message_id


def _followup_editor(interaction: discord.Interaction[Any], message_id: int) -> Editor:
    async def edit(**kwargs: Any) -> Any:
        return await interaction.followup.edit_message(message_id, **kwargs)

    return edit


# --- the outbox's way into Discord ---------------------------------------------------------------------------------


class DiscordSender:
    """Relayed SMS, codes and alerts as DMs; discord.py waits out short rate limits itself, longer ones come back
    as `DeliveryError(retry_after=…)`, a user who cannot be messaged as `blocked`."""

    platform = PLATFORM

    def __init__(self, front: DiscordFrontEnd) -> None:
        self.front = front
        self._dm_channels: dict[str, int] = {}

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        try:
            return await self._send(chat_id, message)
        except discord.RateLimited as error:
            wait = error.retry_after
            raise DeliveryError(f"rate limited: retry after {wait:.1f}s", retry_after=wait) from None
        except discord.Forbidden as error:
            raise DeliveryError(f"forbidden: {error.text or error.status}", blocked=True) from None
        except discord.NotFound as error:
            raise DeliveryError(f"not found: {error.text or error.status}", blocked=True) from None
        except discord.HTTPException as error:
            if error.status == 429:
                raise DeliveryError("rate limited", retry_after=_retry_after(error)) from None
            if error.status >= 500:
                raise DeliveryError(f"discord server error {error.status}") from None
            raise DeliveryError(f"refused: {error.status} {error.code} {error.text}", permanent=True) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise DeliveryError(f"network: {error!r}") from None
        except discord.ClientException as error:
            raise DeliveryError(f"not connected: {error}") from None

    async def _send(self, chat_id: str, message: OutgoingMessage) -> str:
        if not chat_id.isdigit():
            raise DeliveryError(f"not a Discord user id: {chat_id!r}", permanent=True)
        rendered = await self.front.render(
            screen_from_outgoing(message), chat_id, interactive=False, previews=not message.disable_preview,
            photo_url=message.photo_url,
        )
        edit_id = getattr(message, "edit_message_id", None)
        if edit_id and await self._edit(chat_id, str(edit_id), rendered):
            return str(edit_id)
        channel = await self._channel(chat_id)
        for piece in rendered.before:
            await channel.send(content=piece)
        sent = await channel.send(**rendered.send_kwargs())
        return str(sent.id)

    async def _edit(self, chat_id: str, message_id: str, rendered: Rendered) -> bool:
        """Edits in place where Discord still allows it; False sends the update as a new DM instead."""
        if rendered.before or not message_id.isdigit():
            return False
        self.front.forget_view_of(int(message_id))
        editor = self.front.editor_of(int(message_id))
        if editor is not None:
            # An answer to an interaction (ephemeral ones above all) is edited with that interaction's token.
            try:
                await editor(**rendered.edit_kwargs())
                return True
            except discord.HTTPException as error:
                if error.status not in (401, 403, 404):
                    raise
        channel = await self._channel(chat_id)
        try:
            await channel.get_partial_message(int(message_id)).edit(**rendered.edit_kwargs())
        except discord.NotFound:
            return False
        except discord.HTTPException as error:
            if error.status in (400, 403) and error.code in (50005, 50001, 50021, 50083):
                return False  # not ours to edit (any more): the news goes out as a new message
            raise
        return True

    async def _channel(self, user_id: str) -> discord.PartialMessageable:
        client = self.front.client
        channel_id = self._dm_channels.get(user_id)
        if channel_id is None:
            data = await client.http.start_private_message(int(user_id))
            channel_id = self._dm_channels[user_id] = int(data["id"])
        return client.get_partial_messageable(channel_id, type=discord.ChannelType.private)


def _retry_after(error: discord.HTTPException) -> float:
    headers = getattr(error.response, "headers", {}) or {}
    for value in (headers.get("Retry-After"), headers.get("X-RateLimit-Reset-After")):
        with contextlib.suppress(TypeError, ValueError):
            return max(0.0, float(value))  # type: ignore[arg-type]
    return 5.0


# --- the front end ---------------------------------------------------------------------------------------------------


class _Client(discord.Client):
    """discord.py's client, knowing the front end so that components and modals can reach it."""

    def __init__(self, front: DiscordFrontEnd, **options: Any) -> None:
        super().__init__(**options)
        self.front = front


class _Tree(app_commands.CommandTree[_Client]):
    async def on_error(self, interaction: discord.Interaction[_Client], error: app_commands.AppCommandError, /) -> None:
        front = interaction.client.front
        if isinstance(error, app_commands.CommandNotFound | app_commands.CommandSignatureMismatch
                      | app_commands.TransformerError):
            # A command Discord still shows from an older sync: the router answers it by name.
            await front.on_stale_command(interaction)
            return
        await front.report_error(interaction, getattr(error, "original", error))


class DiscordFrontEnd:
    """discord.py's client and command tree over the router; `sender` delivers the outbox's messages by DM."""

    name = "discord"

    def __init__(
        self, services: Services, *, gateway: bool = True, view_timeout: float = VIEW_TIMEOUT,
        slow_seconds: float = SLOW_SECONDS,
    ) -> None:
        if not 0 < view_timeout <= TOKEN_LIFETIME:
            raise ValueError("view_timeout must end while the interaction token can still edit the message")
        load_flows()
        self.services = services
        settings = services.settings
        assert settings.discord_bot_token is not None
        self.gateway = gateway
        self.view_timeout = view_timeout
        self.slow_seconds = slow_seconds
        # No voice here: discord.py's start-up warnings about voice libraries would only be noise in our logs.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        # Interactions need no intent; guilds keeps discord.py's guild cache (and its warnings) sane.
        self.client = _Client(
            self, intents=discord.Intents(guilds=True), allowed_mentions=discord.AllowedMentions.none(),
            max_ratelimit_timeout=30.0, chunk_guilds_at_startup=False, max_messages=None,
        )
        self.tree = _Tree(self.client)
        self.sender = DiscordSender(self)
        self._sources: dict[str, Callable[[discord.Interaction[Any], str], Awaitable[list[Choice[str]]]]] = {
            "services": self._services_choices,
        }
        self._views: dict[int, discord.ui.View] = {}
        self._boxes: set[TextBox] = set()
        self._editors: dict[int, tuple[float, Editor]] = {}
        self._inflight: set[asyncio.Task[Any]] = set()
        self._gateway_task: asyncio.Task[None] | None = None
        self._saved_base: tuple[str, yarl.URL] | None = None

    # --- life ----------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.services.settings
        assert settings.discord_bot_token is not None
        base = settings.discord_api_base_url
        if base:
            self._saved_base = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
            Route.BASE = base
        try:
            await self.client.login(settings.discord_bot_token.get_secret_value())
            self.client.add_dynamic_items(ActionButton, ActionSelect, WriteButton)
            self._register_commands()
            await self.tree.set_translator(CatalogTranslator())
            await self._sync_commands()
            if self.gateway:
                if base:
                    _, url, _ = await self.client.http.get_bot_gateway()
                    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
                self._gateway_task = asyncio.create_task(self._run_gateway(), name="discord-gateway")
        except BaseException:
            await self.stop()
            raise

    async def _run_gateway(self) -> None:
        try:
            await self.client.connect(reconnect=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Discord unreachable for good (or a token revoked): loud, but not a defect of ours.
            log.warning("the Discord gateway connection ended; Discord commands stop working", exc_info=True)

    async def stop(self) -> None:
        for view in [*self._views.values(), *self._boxes]:
            view.stop()
        self._views.clear()
        self._boxes.clear()
        await self.idle(5.0)
        for task in list(self._inflight):
            task.cancel()
        if not self.client.is_closed():
            await self.client.close()
        # discord.py leaves its "wait for guilds, then dispatch ready" task running after close().
        ready = getattr(self.client._connection, "_ready_task", None)
        if ready is not None and not ready.done():
            ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
        if self._gateway_task is not None:
            try:
                await asyncio.wait_for(self._gateway_task, timeout=5.0)
            except (TimeoutError, asyncio.CancelledError):
                pass
            self._gateway_task = None
        if self._saved_base is not None:
            Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved_base
            self._saved_base = None

    async def idle(self, seconds: float = 5.0) -> None:
        """Waits (at most `seconds`) until every interaction being handled now has been answered."""
        deadline = time.monotonic() + seconds
        while self._inflight and time.monotonic() < deadline:
            await asyncio.wait(set(self._inflight), timeout=max(0.0, deadline - time.monotonic()))

    def track(self, task: asyncio.Task[Any]) -> None:
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    # --- commands ---------------------------------------------------------------------------------------------------

    def _register_commands(self) -> None:
        """One slash command per command of the router's registry, so the two platforms cannot drift apart."""
        self.tree.clear_commands(guild=None)
        for spec in router.COMMANDS.values():
            self.tree.add_command(self._slash_command(spec))

    def _slash_command(self, spec: router.CommandSpec) -> app_commands.Command[Any, ..., None]:
        options = OPTIONS.get(spec.name, FREE_TEXT)

        async def run(interaction: discord.Interaction[Any], **values: Any) -> None:
            text = command_text(options, values)
            await self.on_command(interaction, spec.name, text, private=spec.private or spec.admin)

        parameters = [inspect.Parameter("interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        annotation=discord.Interaction)]
        for option in options:
            parameters.append(inspect.Parameter(
                option.name, inspect.Parameter.KEYWORD_ONLY,
                annotation=option.kind if option.required else Optional[option.kind],  # noqa: UP045 - discord.py reads it
                default=inspect.Parameter.empty if option.required else None,
            ))
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        callback: Any = run
        if options:
            callback = app_commands.describe(**{o.name: _english(o.help_key) for o in options})(callback)
        choices = {o.name: [Choice(name=c, value=c) for c in o.choices] for o in options if o.choices}
        if choices:
            callback = app_commands.choices(**choices)(callback)
        completes = {o.name: self._completer(o.autocomplete) for o in options if o.autocomplete}
        if completes:
            callback = app_commands.autocomplete(**completes)(callback)
        command = app_commands.Command(name=spec.name, description=_english(spec.help_key), callback=callback)
        if spec.admin:
            # Hidden from members without Administrator; the router refuses non-admins all the same.
            command.default_permissions = discord.Permissions(administrator=True)
        return command

    async def _sync_commands(self) -> None:
        guild_ids = self.services.settings.discord_guild_ids
        targets = [discord.Object(id=guild_id) for guild_id in guild_ids] or [None]
        for guild in targets:
            try:
                if guild is not None:
                    self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("discord: %d slash commands synced %s", len(synced),
                         f"to guild {guild.id}" if guild is not None else "globally")
            except discord.HTTPException as error:
                log.warning("discord: syncing the slash commands %s failed: %s",
                            f"to guild {guild.id}" if guild is not None else "globally", error)

    def _completer(self, source: str) -> Callable[[discord.Interaction[Any], str], Awaitable[list[Choice[str]]]]:
        fetch = self._sources[source]

        async def complete(interaction: discord.Interaction[Any], current: str) -> list[Choice[str]]:
            try:
                async with asyncio.timeout(AUTOCOMPLETE_SECONDS):
                    return (await fetch(interaction, current))[:MAX_OPTIONS]
            except Exception as error:
                log.warning("discord: autocomplete %s failed: %r", source, error)
                return []

        return complete

    async def _services_choices(self, interaction: discord.Interaction[Any], current: str) -> list[Choice[str]]:
        """Services as the user types (the verification service's own search), popular ones before that."""
        verification = self.services.verification
        search = getattr(verification, "search_services", None)
        popular = getattr(verification, "popular_services", None)
        if current.strip() and search is not None:
            found = await search(current.strip())
        elif popular is not None:
            found = await popular()
        else:
            return []
        return [Choice(name=_short(info.name, 100) or info.code, value=str(info.code)[:100]) for info in found
                if len(str(info.code)) <= 100]

    # --- interactions -------------------------------------------------------------------------------------------

    async def on_command(self, interaction: discord.Interaction[Any], name: str, text: str, *, private: bool) -> None:
        """A slash command: answered privately when it shows private data or anyone but the user could see it."""
        answer = Answer(self, interaction, ephemeral=private or not _in_bot_dm(interaction))
        await self._answer(answer, router.handle_command(self.services, contact_of(interaction), name, text))

    async def on_stale_command(self, interaction: discord.Interaction[Any]) -> None:
        data: dict[str, Any] = dict(interaction.data or {})
        text = " ".join(str(option.get("value", "")) for option in data.get("options", []) if "value" in option)
        name = str(data.get("name", ""))
        spec = router.COMMANDS.get(name)
        await self.on_command(interaction, name, text, private=spec is None or spec.private or spec.admin)

    async def on_action(self, interaction: discord.Interaction[Any], action: str) -> None:
        """A button or a menu choice: the router's action id, on the message it was pressed on."""
        message = interaction.message
        ref = _ref(str(interaction.user.id), message.id) if message is not None else None
        answer = Answer(self, interaction, ephemeral=_ephemeral_source(interaction) or not _in_bot_dm(interaction))
        await self._answer(answer, router.handle_action(self.services, contact_of(interaction), action, ref))

    async def on_text(self, interaction: discord.Interaction[Any], text: str, reply_to: SentRef | None) -> None:
        """A submitted text box: a reply to a message, or the answer to a flow's question."""
        answer = Answer(self, interaction, ephemeral=_ephemeral_source(interaction) or not _in_bot_dm(interaction))
        await self._answer(answer, router.handle_text(self.services, contact_of(interaction), text, reply_to=reply_to))

    async def open_text_box(self, interaction: discord.Interaction[Any], kind: str) -> None:
        """The Reply (or Answer) button: a text box whose text answers the message the button is on."""
        task = asyncio.current_task()
        if task is not None:
            self.track(task)
        message = interaction.message
        user_id = str(interaction.user.id)
        reply_to = _ref(user_id, message.id) if message is not None else None
        try:
            locale = await self.locale_for(user_id)
            await interaction.response.send_modal(self.text_box(locale, kind, question=None, placeholder=None,
                                                                reply_to=reply_to))
        except Exception as error:
            await self.report_error(interaction, error)

    def text_box(self, locale: str, kind: str, *, question: str | None, placeholder: str | None,
                 reply_to: SentRef | None) -> TextBox:
        box = TextBox(
            self, title=t(locale, f"dc_modal_{kind}_title"), label=t(locale, "dc_modal_label"), question=question,
            placeholder=placeholder, reply_to=reply_to,
        )
        self._boxes.add(box)
        return box

    async def _answer(self, answer: Answer, work: Coroutine[Any, Any, list[Screen]]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.track(task)
        try:
            await answer.run(work)
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

    # --- rendering --------------------------------------------------------------------------------------------------

    async def locale_for(self, platform_user_id: str) -> str:
        """The account's language, for the few words the adapter adds itself (a Reply button, a text box)."""
        async with self.services.db.read() as session:
            locale = await session.scalar(
                select(User.locale).join(ChatIdentity, ChatIdentity.user_id == User.id).where(
                    ChatIdentity.platform == PLATFORM, ChatIdentity.platform_user_id == platform_user_id
                )
            )
        return locale if locale in LANGUAGES else DEFAULT_LANGUAGE

    async def render(self, screen: Screen, user_id: str, *, interactive: bool, previews: bool = False,
                     photo_url: str | None = None) -> Rendered:
        """A Screen as message parts: markdown text or an embed, buttons and menus in a view, files.

        `interactive`: an answer the user is looking at, whose menu times out. A DM from the outbox keeps its
        buttons and its text in the content, which is what the push notification shows (a relayed code)."""
        text = screen.text
        rows = [list(row) for row in screen.buttons]
        needs_words = screen.invoice is not None or screen.reply_context is not None or screen.prompt is not None
        locale = await self.locale_for(user_id) if needs_words else DEFAULT_LANGUAGE
        if screen.invoice is not None and not text:
            text = t(locale, "topup_only_telegram")
        if screen.prompt is not None:
            # Its text box answers the message, so a reply context (if any) routes it: one button does both.
            rows.append([Button(t(locale, "dc_btn_answer"), action=f"{WRITE_PREFIX}answer")])
        elif screen.reply_context is not None:
            rows = self._with_reply_button(rows, locale)
        markdown = to_markdown(text, previews=previews)
        content, embed, before = _text_parts(text, _copy_blocks(markdown, rows), previews=previews, embeds=interactive)
        files = []
        for data, name in ((screen.photo, screen.photo_name), (screen.document, screen.document_name)):
            if data is not None:
                files.append(discord.File(io.BytesIO(data), filename=name))
        if screen.photo is not None and embed is not None:
            embed.set_image(url=f"attachment://{screen.photo_name}")
        if photo_url:
            embed = embed or discord.Embed()
            embed.set_image(url=photo_url)
        view = self._view(rows, timeout=self.view_timeout if interactive else None)
        return Rendered(content=content, embed=embed, view=view, files=files, before=before)

    def _with_reply_button(self, rows: list[list[Button]], locale: str) -> list[list[Button]]:
        """The chat's reply function as a button; a flow's own Reply button becomes it rather than a second one."""
        label = t(locale, "dc_btn_reply")
        write = f"{WRITE_PREFIX}reply"
        merged = [[Button(b.label, action=write) if b.action and _same_label(b.label, label) else b for b in row]
                  for row in rows]
        if any(b.action == write for row in merged for b in row):
            return merged
        return [*merged, [Button(f"↩️ {label}", action=write)]]

    def _view(self, rows: list[list[Button]], *, timeout: float | None) -> discord.ui.View | None:
        rows, listed = _fit(rows)
        view = TimedView(timeout=timeout)
        view.front = self
        taken: set[str] = set()
        line = 0
        for start in range(0, len(listed), MAX_OPTIONS):
            group = listed[start : start + MAX_OPTIONS]
            options = [(b.label, _unique(b.action or "noop", taken)) for b in group]
            select = ActionSelect(start // MAX_OPTIONS, options)
            select.row = line
            view.add_item(select)
            line += 1
        for row in rows:
            for button in row:
                item: discord.ui.Item[Any]
                if button.url:
                    item = discord.ui.Button(label=button.label[:MAX_LABEL] or "·", url=button.url)
                elif button.action and button.action.startswith(WRITE_PREFIX):
                    item = WriteButton(button.label, button.action[len(WRITE_PREFIX):])
                elif button.action:
                    item = ActionButton(button.label, _unique(button.action, taken))
                else:
                    continue  # a copy button: its text is in the message
                item.row = line
                view.add_item(item)
            line += 1
        return view if view.children else None

    def shown(self, message_id: int, view: discord.ui.View | None, editor: Editor) -> None:
        """A message we answered with: its menu's timeout can now edit it, and the outbox may edit it later."""
        now = time.monotonic()
        # Every token lives as long, so insertion order is expiry order: expired ones are at the front.
        self._editors.pop(message_id, None)
        self._editors[message_id] = (now + TOKEN_LIFETIME, editor)
        while next(iter(self._editors.values()))[0] <= now:  # stops at the latest entry at the latest
            del self._editors[next(iter(self._editors))]
        old = self._views.pop(message_id, None)
        if old is not None and old is not view:
            old.stop()
        if isinstance(view, TimedView) and view.timeout is not None and not view.is_finished():
            view.editor = editor
            self._views[message_id] = view

    def editor_of(self, message_id: int) -> Editor | None:
        entry = self._editors.get(message_id)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def forget_view_of(self, message_id: int) -> None:
        view = self._views.pop(message_id, None)
        if view is not None:
            view.stop()

    def forget_view(self, view: discord.ui.View) -> None:
        if isinstance(view, TextBox):
            self._boxes.discard(view)
            return
        for message_id, known in list(self._views.items()):
            if known is view:
                del self._views[message_id]

    async def after_sent(self, screen: Screen, ref: SentRef) -> None:
        if screen.reply_context is not None:
            await router.remember_reply_context(self.services, ref, screen.reply_context)
        if screen.on_sent is not None:
            await screen.on_sent(ref)
