"""Screens as Discord messages: markdown content or an embed, buttons and select menus in a view, files.

Discord has tighter limits than Telegram (five rows of five buttons, no copy button, 2000 characters of content),
so a long list of like buttons becomes a select menu and a text to copy is shown as code.
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import discord
from sqlalchemy import select

from bot.discord.components import ActionButton, ActionSelect, TimedView, WriteButton
from bot.discord.limits import (
    MARK,
    MAX_CONTENT,
    MAX_EMBED_DESCRIPTION,
    MAX_EMBED_TITLE,
    MAX_LABEL,
    MAX_OPTIONS,
    MAX_PER_ROW,
    MAX_ROWS,
    PLATFORM,
    WRITE_PREFIX,
)
from bot.discord.tracking import InFlight, ShownMessages
from bot.handlers.screens import Button, Screen
from bot.render import escape_markdown, plain_text, split_markdown, to_markdown
from core.models import ChatIdentity, User
from core.platform.i18n import DEFAULT_LANGUAGE, LANGUAGES, t
from core.services import Services

log = logging.getLogger(__name__)

LOCALE_SECONDS = 600.0
LOCALE_CACHE_SIZE = 10_000


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



class ScreenRenderer:
    """Renders Screens for one user at a time, in their language; an interactive answer's menu times out."""

    def __init__(self, services: Services, shown: ShownMessages, tasks: InFlight, *, view_timeout: float) -> None:
        self.services = services
        self.shown = shown
        self.tasks = tasks
        self.view_timeout = view_timeout
        self._locales: dict[str, tuple[float, str]] = {}

    async def locale_for(self, platform_user_id: str) -> str:
        """The account's language, for the few words the adapter adds itself (a Reply button, a text box).

        Remembered for a while: a Reply button opens its text box as the interaction's first response, which
        should not wait for the database. Every interaction of the user forgets it (`forget_locale`), so a
        language changed here shows at once; one changed on another platform shows within LOCALE_SECONDS."""
        now = time.monotonic()
        known = self._locales.get(platform_user_id)
        if known is not None and known[0] > now:
            return known[1]
        async with self.services.db.read() as session:
            locale = await session.scalar(
                select(User.locale).join(ChatIdentity, ChatIdentity.user_id == User.id).where(
                    ChatIdentity.platform == PLATFORM, ChatIdentity.platform_user_id == platform_user_id
                )
            )
        locale = locale if locale in LANGUAGES else DEFAULT_LANGUAGE
        if len(self._locales) >= LOCALE_CACHE_SIZE:
            self._locales.clear()  # rare (thousands of users within minutes): start afresh rather than track age
        self._locales[platform_user_id] = (now + LOCALE_SECONDS, locale)
        return locale

    def forget_locale(self, platform_user_id: str) -> None:
        self._locales.pop(platform_user_id, None)

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
        view.tasks = self.tasks
        view.shown = self.shown
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
