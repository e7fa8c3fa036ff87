"""Discord's size limits, our timings, and the marks of our own component ids: shared by the whole front end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bot.render import plain_text

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
# An interaction whose answer may be a text box (which only a first response can open) runs before it is
# acknowledged; after this long it is deferred: Discord drops it unanswered at 3 s. Every other one is
# deferred at once.
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

Editor = Callable[..., Awaitable[Any]]


def short(text: str, limit: int) -> str:
    text = " ".join(plain_text(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
