"""Checking what the admin typed: the broadcast text as Telegram HTML, link buttons and a photo URL."""

from __future__ import annotations

import html
import re
from typing import Any

MAX_TEXT = 4000
MAX_BUTTONS = 8
MAX_LABEL = 64
MAX_URL = 512

_ALLOWED_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre", "tg-spoiler", "blockquote",
     "span"}
)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)(\s[^<>]*)?>")
_BARE_AMPERSAND = re.compile(r"&(?!(?:#\d{1,7}|#x[0-9a-fA-F]{1,6}|lt|gt|amp|quot);)")
_ATTRIBUTES = {
    "a": re.compile(r"""\s+href\s*=\s*(["'])(https?://|tg://)[^"'<>\s]+\1\s*"""),
    "span": re.compile(r"""\s+class\s*=\s*(["'])tg-spoiler\1\s*"""),
    "code": re.compile(r"""\s+class\s*=\s*(["'])language-[a-zA-Z0-9+#-]+\1\s*"""),
    "blockquote": re.compile(r"\s+expandable\s*"),
}
_BUTTON_LINE = re.compile(r"^(?P<label>.+?)\s+[-–—|]\s+(?P<url>https?://\S+)$")
_URL = re.compile(r"https?://[^\s<>\"']+")


class DraftError(ValueError):
    """What the admin typed cannot be used; `key` names the catalog text that says why."""

    def __init__(self, key: str, **details: Any) -> None:
        super().__init__(key)
        self.key = key
        self.details = details


def broadcast_html(raw: str) -> tuple[str, bool]:
    """The admin's text as Telegram HTML and whether their markup was kept.

    Tags are kept when they form valid Telegram HTML (b, i, u, s, a href, code, pre, spoiler, blockquote),
    otherwise the whole text is escaped and sent as typed; a stray `&` is escaped either way. The preview shows
    the result, so the admin sees which it was before confirming."""
    text = raw.strip()
    if not text:
        raise DraftError("bc_error_empty")
    if len(text) > MAX_TEXT:
        raise DraftError("bc_error_too_long", limit=MAX_TEXT)
    plain = html.escape(text, quote=False)
    candidate = _BARE_AMPERSAND.sub("&amp;", text)
    stack: list[str] = []
    position = 0
    for match in _TAG.finditer(candidate):
        if "<" in candidate[position : match.start()]:
            return plain, False
        closing, name, attributes = match.group(1), match.group(2).lower(), match.group(3) or ""
        if name not in _ALLOWED_TAGS:
            return plain, False
        if closing:
            if attributes.strip() or not stack or stack.pop() != name:
                return plain, False
        else:
            pattern = _ATTRIBUTES.get(name)
            if attributes.strip() and (pattern is None or not pattern.fullmatch(attributes)):
                return plain, False
            if name == "a" and not attributes.strip():
                return plain, False
            if name == "span" and not attributes.strip():
                return plain, False
            stack.append(name)
        position = match.end()
    if stack or "<" in candidate[position:]:
        return plain, False
    return candidate, True


def parse_link_buttons(text: str) -> list[dict[str, str]]:
    """`Label - https://…` lines → link buttons; DraftError naming the first bad line."""
    buttons: list[dict[str, str]] = []
    for number, line in enumerate((line.strip() for line in text.strip().splitlines()), start=1):
        if not line:
            continue
        match = _BUTTON_LINE.match(line)
        if match is None or len(match["url"]) > MAX_URL:
            raise DraftError("bc_error_button_line", line=number)
        label = match["label"].strip()
        if len(label) > MAX_LABEL:
            raise DraftError("bc_error_button_label", line=number, limit=MAX_LABEL)
        buttons.append({"label": label, "url": match["url"]})
    if not buttons:
        raise DraftError("bc_error_button_line", line=1)
    if len(buttons) > MAX_BUTTONS:
        raise DraftError("bc_error_too_many_buttons", limit=MAX_BUTTONS)
    return buttons


def parse_photo_url(text: str) -> str:
    url = text.strip()
    if len(url) > MAX_URL or not _URL.fullmatch(url):
        raise DraftError("bc_error_photo_url")
    return url
