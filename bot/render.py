"""Screen text (the HTML subset of bot/handlers/screens.py) as plain text or chat markdown, and split to a size."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import quote

# Tags of the subset and the markdown that stands for them (Discord's flavour, which most chat apps share).
_WRAPS = {
    "b": "**", "strong": "**", "i": "*", "em": "*", "u": "__", "ins": "__", "s": "~~", "strike": "~~", "del": "~~",
    "tg-spoiler": "||",
}
_TAG = re.compile(r"<[^>]+>")
_URL = re.compile(r"https?://[^\s<>]+[^\s<>.,:;\"')\]]")
# Characters that start or end markdown anywhere in a line.
_INLINE = re.compile(r"([\\*_~`|\[\]])")
# Markers that mean something only at the start of a line: headings, quotes, lists, subtext.
_LINE_START = re.compile(r"^([ \t]*)(#|>|-|\+|\d+(?=\.))(?=[ \t#>.]|$)", re.MULTILINE)
_FENCE = "```"


def plain_text(text: str) -> str:
    """The words of a Screen text without tags or entities: toasts, descriptions, placeholders."""
    return html.unescape(_TAG.sub("", text))


def escape_markdown(text: str, *, at_line_start: bool = True, previews: bool = False) -> str:
    """User text shown literally in markdown; bare links stay clickable (wrapped in <> to stop previews)."""
    out: list[str] = []
    position = 0
    for match in _URL.finditer(text):
        out.append(_escape_words(text[position : match.start()], at_line_start and position == 0))
        url = match.group(0)
        out.append(url if previews else f"<{url}>")
        position = match.end()
    out.append(_escape_words(text[position:], at_line_start and position == 0))
    return "".join(out)


def _escape_words(text: str, at_line_start: bool) -> str:
    text = _INLINE.sub(r"\\\1", text)
    if not at_line_start and "\n" not in text:
        return text
    head, newline, rest = text.partition("\n")
    if at_line_start:
        head = _LINE_START.sub(_escape_marker, head)
    if newline:
        rest = _LINE_START.sub(_escape_marker, rest)
    return head + newline + rest


def _escape_marker(match: re.Match[str]) -> str:
    indent, marker = match.group(1), match.group(2)
    # "1." is escaped at its dot: a backslash before the digit would not stop the list.
    return f"{indent}{marker}\\" if marker[0].isdigit() else f"{indent}\\{marker}"


@dataclass
class _Frame:
    tag: str
    href: str | None = None
    parts: list[str] = field(default_factory=list)


class _MarkdownWriter(HTMLParser):
    """Builds markdown bottom-up, so an empty tag writes nothing and code is measured before it is fenced."""

    def __init__(self, previews: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.previews = previews
        self.stack = [_Frame("")]
        self.at_line_start = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "span" and "tg-spoiler" in (values.get("class") or ""):
            tag = "tg-spoiler"
        if tag == "br":
            self.handle_data("\n")
            return
        self.stack.append(_Frame(tag, href=values.get("href")))
        if tag in _WRAPS or tag == "a":
            self.at_line_start = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and not any(frame.tag == "span" for frame in self.stack[1:]):
            tag = "tg-spoiler"
        if not any(frame.tag == tag for frame in self.stack[1:]):
            return  # a stray closing tag: the text around it still shows
        while len(self.stack) > 1:
            frame = self.stack.pop()
            self.stack[-1].parts.append(self._close(frame))
            if frame.tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if any(frame.tag in ("code", "pre") for frame in self.stack):
            self.stack[-1].parts.append(data)
        else:
            self.stack[-1].parts.append(escape_markdown(data, at_line_start=self.at_line_start, previews=self.previews))
        if data:
            self.at_line_start = data.endswith("\n")

    def result(self) -> str:
        self.close()
        while len(self.stack) > 1:
            frame = self.stack.pop()
            self.stack[-1].parts.append(self._close(frame))
        return "".join(self.stack[0].parts)

    def _close(self, frame: _Frame) -> str:
        inner = "".join(frame.parts)
        if frame.tag in _WRAPS:
            core = inner.strip()
            if not core:
                return inner
            # Markdown markers must touch the words they wrap: keep the spaces outside.
            lead, trail = inner[: len(inner) - len(inner.lstrip())], inner[len(inner.rstrip()) :]
            mark = _WRAPS[frame.tag]
            return f"{lead}{mark}{core}{mark}{trail}"
        if frame.tag == "code" and not any(f.tag == "pre" for f in self.stack):
            return _inline_code(inner)
        if frame.tag == "pre":
            body = inner.strip("\n").replace(_FENCE, "`\u200b``")
            return f"\n{_FENCE}\n{body}\n{_FENCE}\n"
        if frame.tag == "a":
            return _link(inner, frame.href, self.previews)
        if frame.tag == "blockquote":
            lines = inner.strip("\n").split("\n")
            return "\n" + "\n".join(f"> {line}" for line in lines) + "\n"
        return inner


def _inline_code(text: str) -> str:
    if not text:
        return ""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _link(text: str, href: str | None, previews: bool) -> str:
    if not href:
        return text
    if not href.startswith(("http://", "https://")):
        return f"{text} ({escape_markdown(href)})" if text else escape_markdown(href)
    target = quote(href, safe=":/?#[]@!$&'*+,;=%~-._")
    shown = target if previews else f"<{target}>"
    if not text or plain_text(text) == href:
        return shown
    return f"[{text}]({shown})"


def to_markdown(text: str, *, previews: bool = False) -> str:
    """A Screen's HTML as markdown: b → **, i → *, code → `, pre → ```, a → [text](url); user text escaped."""
    writer = _MarkdownWriter(previews)
    writer.feed(text)
    markdown = writer.result()
    return re.sub(r"\n{3,}", "\n\n", markdown).strip("\n")


def split_markdown(text: str, limit: int) -> list[str]:
    """Pieces of at most `limit` characters cut at line breaks; a code block cut in two is closed and reopened."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    current = ""
    in_fence = False
    room = limit - len(_FENCE) - 2  # space to close a fence that is still open
    for line in text.split("\n"):
        while len(line) > room:
            if current:
                pieces.append(_closed(current, in_fence))
                current = f"{_FENCE}\n" if in_fence else ""
            cut = room - len(current)
            pieces.append(_closed(current + line[:cut], in_fence))
            current, line = (f"{_FENCE}\n" if in_fence else ""), line[cut:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > room and current:
            pieces.append(_closed(current, in_fence))
            candidate = f"{_FENCE}\n{line}" if in_fence else line
        current = candidate
        if line.count(_FENCE) % 2:
            in_fence = not in_fence
    if current.strip():
        pieces.append(current)
    return pieces


def _closed(piece: str, in_fence: bool) -> str:
    return f"{piece}\n{_FENCE}" if in_fence else piece
