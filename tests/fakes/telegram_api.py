"""Local fake of the Telegram Bot API server (real wire format) for driving python-telegram-bot in tests.

Point the real library at it with ``ApplicationBuilder().token(fake.token).base_url(fake.base_url)``
(and ``.base_file_url(fake.file_base_url)`` if files are downloaded). Requests arrive as
``POST /bot<TOKEN>/<method>`` with form, multipart or JSON bodies and are answered with
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N, "description": ...}``.

Deliberate deviations from the real server are documented where they happen; the notable one is
``strict_html``: a raw ``&`` that does not start a valid entity is rejected, which real Telegram
tolerates, so that missing escaping is caught in tests instead of mangling user text in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import itertools
import json
import math
import re
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import ClientSession, web

JSONDict = dict[str, Any]
CallPredicate = Callable[["Call"], bool]

DEFAULT_TOKEN = "123456:TEST-TOKEN"

MAX_MESSAGE_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_CALLBACK_DATA_BYTES = 64

# Parameters Telegram treats as plain strings. Everything else arrives JSON-encoded from
# python-telegram-bot (it sends `json.dumps(value)` for non-str values), so we decode it; without
# this list a message text such as "123" or "true" would be decoded into an int/bool.
_STRING_PARAMS = frozenset(
    {
        "action", "address", "animation", "audio", "bio", "business_connection_id", "callback_query_id",
        "caption", "currency", "custom_title", "data", "description", "document", "emoji", "error_message",
        "explanation", "file_id", "first_name", "inline_message_id", "inline_query_id", "invite_link",
        "ip_address", "language_code", "last_name", "message_effect_id", "name", "parse_mode", "payload",
        "phone_number", "photo", "pre_checkout_query_id", "provider_token", "query", "question",
        "secret_token", "shipping_query_id", "short_description", "start_parameter", "sticker",
        "switch_pm_text", "telegram_payment_charge_id", "text", "title", "url", "vcard", "video",
        "video_note", "voice",
    }
)

# Telegram does not deliver these unless allowed_updates asks for them explicitly.
_UPDATE_IDS = itertools.count(100_000_001)  # shared by every fake server in the process: see __init__
_OPT_IN_UPDATE_TYPES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

_CHAT_ACTIONS = frozenset(
    {
        "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
        "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
    }
)

_INLINE_BUTTON_ACTIONS = (
    "url", "callback_data", "web_app", "login_url", "switch_inline_query",
    "switch_inline_query_current_chat", "switch_inline_query_chosen_chat", "copy_text",
    "callback_game", "pay",
)

_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
}

_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
_CALLBACK_QUERY_INVALID = "Bad Request: query is too old and response timeout expired or query ID is invalid"


# ---------------------------------------------------------------------------------------------
# HTML parse mode, mirroring tdlib's parser (td/telegram/MessageEntity.cpp, parse_html)
# ---------------------------------------------------------------------------------------------

_SUPPORTED_TAGS = frozenset(
    {
        "a", "b", "strong", "i", "em", "s", "strike", "del", "u", "ins", "tg-spoiler", "tg-emoji",
        "span", "pre", "code", "blockquote",
    }
)
_SIMPLE_ENTITY_TYPES = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline", "ins": "underline",
    "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough", "tg-spoiler": "spoiler",
    "span": "spoiler", "code": "code", "pre": "pre",
}
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class EntityParseError(ValueError):
    """The text is not valid Telegram HTML; str(exc) is the part after "can't parse entities: "."""


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram uses for entity offsets and length limits."""
    return len(text.encode("utf-16-le")) // 2


def _byte_offset(text: str, index: int) -> int:
    # tdlib reports positions as byte offsets into the UTF-8 text.
    return len(text[:index].encode("utf-8"))


def _decode_entity(text: str, pos: int, *, strict: bool) -> tuple[str, int] | None:
    """Decode the character reference starting at text[pos] == "&"; None if it is not one.

    tdlib accepts only &lt; &gt; &amp; &quot; and numeric references, with the ";" optional. In
    strict mode the ";" is required, since a missing one almost always means unescaped user text.
    """
    n = len(text)
    end = pos + 1
    if end < n and text[end] == "#":
        end += 1
        base = 10
        if end < n and text[end] in "xX":
            base = 16
            end += 1
        start = end
        allowed = _HEX_DIGITS if base == 16 else frozenset("0123456789")
        while end < n and text[end] in allowed:
            end += 1
        digits = text[start:end]
        if not digits:
            return None
        code = int(digits, base)
        if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            return None
        char = chr(code)
    else:
        while end < n and text[end].isascii() and text[end].isalpha():
            end += 1
        char_or_none = _NAMED_ENTITIES.get(text[pos + 1 : end])
        if char_or_none is None:
            return None
        char = char_or_none
    if end < n and text[end] == ";":
        end += 1
    elif strict:
        return None
    return char, end


@dataclass
class _OpenTag:
    name: str
    argument: str
    offset: int  # UTF-16 offset in the parsed text
    byte_pos: int
    language_for_pre: str = ""


def parse_html(text: str, *, strict_ampersand: bool = True) -> tuple[str, list[JSONDict]]:
    """Parse Telegram-flavoured HTML into (plain text, entities) or raise EntityParseError.

    Error messages follow tdlib's wording, e.g. 'Unsupported start tag "br" at byte offset 5' or
    'Can't find end tag corresponding to start tag "b"'.
    """
    out: list[str] = []
    utf16 = 0
    stack: list[_OpenTag] = []
    entities: list[JSONDict] = []
    n = len(text)
    i = 0

    def unclosed_start(begin: int) -> EntityParseError:
        return EntityParseError(f"Unclosed start tag at byte offset {_byte_offset(text, begin)}")

    while i < n:
        c = text[i]
        if c == "&":
            decoded = _decode_entity(text, i, strict=strict_ampersand)
            if decoded is not None:
                char, i = decoded
                out.append(char)
                utf16 += utf16_len(char)
                continue
            if strict_ampersand:
                raise EntityParseError(
                    f"Character '&' at byte offset {_byte_offset(text, i)} does not start a valid entity; "
                    "escape it as &amp;"
                )
        if c != "<":
            out.append(c)
            utf16 += utf16_len(c)
            i += 1
            continue

        begin = i
        i += 1
        if i < n and text[i] == "/":
            if not stack:
                raise EntityParseError(f"Unexpected end tag at byte offset {_byte_offset(text, begin)}")
            i += 1
            while i < n and not text[i].isspace() and text[i] != ">":
                i += 1
            end_name = text[begin + 2 : i].lower()
            while i < n and text[i].isspace():
                i += 1
            if i >= n or text[i] != ">":
                raise EntityParseError(f"Unclosed end tag at byte offset {_byte_offset(text, begin)}")
            i += 1
            tag = stack.pop()
            if end_name and end_name != tag.name:
                raise EntityParseError(
                    f"Unmatched end tag at byte offset {_byte_offset(text, begin)}, "
                    f'expected "</{tag.name}>", found "</{end_name}>"'
                )
            _close_tag(tag, utf16, stack, entities)
            continue

        while i < n and not text[i].isspace() and text[i] != ">":
            i += 1
        if i >= n:
            raise unclosed_start(begin)
        name = text[begin + 1 : i].lower()
        if name not in _SUPPORTED_TAGS:
            raise EntityParseError(
                f'Unsupported start tag "{name}" at byte offset {_byte_offset(text, begin)}'
            )
        argument = ""
        while True:
            while i < n and text[i].isspace():
                i += 1
            if i >= n:
                raise unclosed_start(begin)
            if text[i] == ">":
                i += 1
                break
            attr_begin = i
            while i < n and not text[i].isspace() and text[i] not in "=>":
                i += 1
            attr_name = text[attr_begin:i].lower()
            if not attr_name:
                raise EntityParseError(
                    f'Empty attribute name in the tag "{name}" at byte offset {_byte_offset(text, begin)}'
                )
            while i < n and text[i].isspace():
                i += 1
            if i >= n:
                raise unclosed_start(begin)
            if text[i] != "=":
                # Value-less attributes are only meaningful for <blockquote expandable>.
                if name == "blockquote" and attr_name == "expandable":
                    argument = "expandable"
                continue
            i += 1
            while i < n and text[i].isspace():
                i += 1
            if i >= n:
                raise unclosed_start(begin)
            if text[i] in "'\"":
                quote = text[i]
                i += 1
                value_chars: list[str] = []
                while i < n and text[i] != quote:
                    if text[i] == "&":
                        decoded = _decode_entity(text, i, strict=strict_ampersand)
                        if decoded is not None:
                            value_chars.append(decoded[0])
                            i = decoded[1]
                            continue
                        if strict_ampersand:
                            raise EntityParseError(
                                f"Character '&' at byte offset {_byte_offset(text, i)} does not start a "
                                "valid entity; escape it as &amp;"
                            )
                    value_chars.append(text[i])
                    i += 1
                if i >= n:
                    raise unclosed_start(begin)
                i += 1
                value = "".join(value_chars)
            else:
                token_begin = i
                while i < n and (text[i].isascii() and text[i].isalnum() or text[i] in ".-"):
                    i += 1
                value = text[token_begin:i].lower()
                if i >= n:
                    raise unclosed_start(begin)
                if not text[i].isspace() and text[i] != ">":
                    raise EntityParseError(
                        f"Unexpected end of name token at byte offset {_byte_offset(text, token_begin)}"
                    )
            if name == "a" and attr_name == "href":
                argument = value
            elif name == "code" and attr_name == "class" and value.startswith("language-"):
                argument = value[len("language-") :]
            elif name == "span" and attr_name == "class" and value.startswith("tg-"):
                argument = value[len("tg-") :]
            elif name == "tg-emoji" and attr_name == "emoji-id":
                argument = value
            elif name == "blockquote" and attr_name == "expandable":
                argument = "expandable"
        if name == "span" and argument != "spoiler":
            raise EntityParseError(
                f'Tag "span" must have class "tg-spoiler" at byte offset {_byte_offset(text, begin)}'
            )
        if name == "tg-emoji" and not argument.isdigit():
            raise EntityParseError("Invalid custom emoji identifier specified")
        stack.append(_OpenTag(name, argument, utf16, _byte_offset(text, begin)))

    if stack:
        raise EntityParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1].name}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


def _close_tag(tag: _OpenTag, utf16_end: int, stack: list[_OpenTag], entities: list[JSONDict]) -> None:
    length = utf16_end - tag.offset
    parent = stack[-1] if stack else None
    # <pre><code class="language-x"> is one pre entity with a language, not pre + code.
    inside_pre = parent is not None and parent.name == "pre" and parent.offset == tag.offset
    if tag.name == "code" and tag.argument and inside_pre and parent is not None:
        parent.language_for_pre = tag.argument
        return
    if length <= 0:
        return
    entity: JSONDict = {"offset": tag.offset, "length": length}
    if tag.name == "a":
        match = re.fullmatch(r"tg://user\?id=(\d+)", tag.argument)
        if match:
            user = {"id": int(match.group(1)), "is_bot": False, "first_name": ""}
            entity.update(type="text_mention", user=user)
        else:
            entity.update(type="text_link", url=tag.argument)
    elif tag.name == "blockquote":
        entity["type"] = "expandable_blockquote" if tag.argument else "blockquote"
    elif tag.name == "tg-emoji":
        entity.update(type="custom_emoji", custom_emoji_id=tag.argument)
    else:
        entity["type"] = _SIMPLE_ENTITY_TYPES[tag.name]
        if tag.name == "pre" and tag.language_for_pre:
            entity["language"] = tag.language_for_pre
    entities.append(entity)


def _strip_text(text: str, entities: list[JSONDict]) -> tuple[str, list[JSONDict]]:
    """Trim surrounding whitespace like Telegram does, shifting/clipping entities to match."""
    stripped = text.strip()
    if stripped == text:
        return text, entities
    lead = utf16_len(text[: len(text) - len(text.lstrip())])
    total = utf16_len(stripped)
    result = []
    for entity in entities:
        start = max(entity["offset"] - lead, 0)
        end = min(entity["offset"] + entity["length"] - lead, total)
        if end > start:
            result.append({**entity, "offset": start, "length": end - start})
    return stripped, result


def command_entities(text: str) -> list[JSONDict]:
    """bot_command entities as Telegram attaches them to incoming messages (UTF-16 offsets)."""
    entities = []
    for match in re.finditer(r"(?<!\S)/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{1,64})?", text):
        entities.append(
            {
                "offset": utf16_len(text[: match.start()]),
                "length": utf16_len(match.group(0)),
                "type": "bot_command",
            }
        )
    return entities


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer; raised inside method handlers and turned into the wire format."""

    def __init__(self, status: int, description: str, parameters: JSONDict | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def payload(self) -> JSONDict:
        body: JSONDict = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def too_many_requests(retry_after: int, description: str | None = None) -> ApiError:
    return ApiError(
        429, description or f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
    )


@dataclass
class UploadedFile:
    """A multipart file part as received."""

    filename: str | None
    content: bytes
    content_type: str | None = None


@dataclass
class Call:
    """One request the fake answered (recorded when the answer is ready, with its arrival time)."""

    method: str
    params: JSONDict
    files: dict[str, UploadedFile] = field(default_factory=dict)
    at: float = 0.0  # time.monotonic() on arrival
    status: int = 0
    result: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def chat_id(self) -> Any:
        return self.params.get("chat_id")


@dataclass
class _Failure:
    status: int
    retry_after: int | None
    description: str | None
    methods: frozenset[str] | None  # lower-case names; None = every method except getUpdates
    remaining: int | None = None  # for fail_next
    until: float | None = None  # monotonic deadline for fail_for

    def matches(self, method: str) -> bool:
        if self.methods is None:
            return method.lower() != "getupdates"
        return method.lower() in self.methods


@dataclass
class _StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    content: bytes
    filename: str | None
    mime_type: str | None


def _decode_param(name: str, value: Any) -> Any:
    if not isinstance(value, str) or name in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value  # e.g. chat_id="@channel"


def _as_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _is_send_method(method: str) -> bool:
    lower = method.lower()
    if lower == "sendchataction":
        return False
    return lower.startswith(("send", "copymessage", "forwardmessage"))


# ---------------------------------------------------------------------------------------------
# Simulated users
# ---------------------------------------------------------------------------------------------


@dataclass
class FakeUser:
    """A Telegram user talking to the bot. Every method queues the update for getUpdates and returns it."""

    server: FakeTelegramServer
    id: int
    first_name: str = "Ann"
    username: str | None = None
    language_code: str | None = "en"
    last_name: str | None = None

    def as_dict(self) -> JSONDict:
        user: JSONDict = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        if self.last_name:
            user["last_name"] = self.last_name
        if self.username:
            user["username"] = self.username
        if self.language_code:
            user["language_code"] = self.language_code
        return user

    @property
    def chat(self) -> JSONDict:
        chat: JSONDict = {"id": self.id, "first_name": self.first_name}
        if self.last_name:
            chat["last_name"] = self.last_name
        if self.username:
            chat["username"] = self.username
        chat["type"] = "private"
        return chat

    def send(self, text: str, *, entities: list[JSONDict] | None = None) -> JSONDict:
        """A private-chat text message; /commands get bot_command entities."""
        return self._message_update(self.chat, text=text, entities=entities)

    def send_in_group(self, text: str, group_chat_id: int, *, title: str = "Test group") -> JSONDict:
        """A message in a group (ids starting with -100 are supergroups), e.g. "/help@botname"."""
        chat_type = "supergroup" if str(group_chat_id).startswith("-100") else "group"
        chat = {"id": group_chat_id, "title": title, "type": chat_type}
        return self._message_update(chat, text=text)

    def reply(self, to_message: JSONDict | int, text: str) -> JSONDict:
        """A message replying to one of the bot's messages (dict as recorded, or its id in this chat)."""
        original = self.server._current_message(to_message, default_chat=self.id)
        chat = self.server._chats.get(original["chat"]["id"], original["chat"])
        reply_to = copy.deepcopy(original)
        reply_to.pop("reply_to_message", None)  # Telegram never nests replies deeper than one level
        return self._message_update(chat, text=text, extra={"reply_to_message": reply_to})

    def press(self, message: JSONDict | int, callback_data: str, *, strict: bool = True) -> JSONDict:
        """A callback_query for an inline button of a bot message, as it looks *now* (after edits).

        With strict=True a ValueError is raised if the message has no button with that
        callback_data, because a real user could not press it.
        """
        current = self.server._current_message(message, default_chat=self.id)
        if strict:
            buttons = [
                button.get("callback_data")
                for row in (current.get("reply_markup") or {}).get("inline_keyboard", [])
                for button in row
            ]
            if callback_data not in buttons:
                raise ValueError(
                    f"message {current['message_id']} has no button with callback_data {callback_data!r}; "
                    f"available: {buttons}"
                )
        query_id = self.server._new_callback_query_id()
        chat_id = current["chat"]["id"]
        update = {
            "callback_query": {
                "id": query_id,
                "from": self.as_dict(),
                "message": copy.deepcopy(current),
                "chat_instance": str(abs(chat_id) * 7919 + 1_000_000_007),
                "data": callback_data,
            }
        }
        return self.server.queue_update(update)

    def reply_photo(
        self, to_message: JSONDict | int, content: bytes, *, caption: str | None = None
    ) -> JSONDict:
        """A photo (JPEG bytes, stored so getFile and the file path serve it) sent as a reply to a bot message."""
        original = self.server._current_message(to_message, default_chat=self.id)
        chat = self.server._chats.get(original["chat"]["id"], original["chat"])
        reply_to = copy.deepcopy(original)
        reply_to.pop("reply_to_message", None)
        stored = self.server._store_file("photo", UploadedFile("photo.jpg", content, "image/jpeg"), None)
        sizes = [
            {"file_id": f"{stored.file_id}-s", "file_unique_id": f"{stored.file_unique_id}s", "width": 90,
             "height": 90, "file_size": len(content) // 10},
            {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "width": 800, "height": 800,
             "file_size": len(content)},
        ]
        extra: JSONDict = {"reply_to_message": reply_to, "photo": sizes}
        if caption:
            extra["caption"] = caption
        return self._message_update(chat, extra=extra)

    def share_contact(self, phone_number: str) -> JSONDict:
        """The user's own contact, as sent by a KeyboardButton(request_contact=True)."""
        contact: JSONDict = {"phone_number": phone_number, "first_name": self.first_name, "user_id": self.id}
        if self.last_name:
            contact["last_name"] = self.last_name
        return self._message_update(self.chat, extra={"contact": contact})

    def pre_checkout(self, invoice_payload: str, total_amount: int, currency: str = "XTR") -> JSONDict:
        """The pre_checkout_query Telegram sends when the user confirms paying an invoice."""
        query_id = self.server._new_pre_checkout_id()
        update = {
            "pre_checkout_query": {
                "id": query_id,
                "from": self.as_dict(),
                "currency": currency,
                "total_amount": total_amount,
                "invoice_payload": invoice_payload,
            }
        }
        return self.server.queue_update(update)

    def successful_payment(
        self,
        invoice_payload: str,
        total_amount: int,
        currency: str = "XTR",
        charge_id: str | None = None,
        *,
        subscription_expiration_date: int | None = None,
        is_recurring: bool = False,
        is_first_recurring: bool = False,
    ) -> JSONDict:
        """The service message with successful_payment; the charge becomes refundable.

        A Stars subscription's payments carry `subscription_expiration_date` (unix time) and, for the first one
        and each renewal, `is_recurring` (`is_first_recurring` on the first); a renewal is delivered the same way."""
        charge_id = charge_id or self.server._new_charge_id(self.id)
        payment: JSONDict = {
            "currency": currency,
            "total_amount": total_amount,
            "invoice_payload": invoice_payload,
            "telegram_payment_charge_id": charge_id,
            "provider_payment_charge_id": "" if currency == "XTR" else f"provider-{charge_id}",
        }
        if subscription_expiration_date is not None:
            payment["subscription_expiration_date"] = subscription_expiration_date
        if is_recurring:
            payment["is_recurring"] = True
        if is_first_recurring:
            payment["is_first_recurring"] = True
        if subscription_expiration_date is not None or is_recurring:
            self.server.star_subscriptions.setdefault(charge_id, {"user_id": self.id, "canceled": False})
        self.server.charges[charge_id] = {
            "user_id": self.id,
            "total_amount": total_amount,
            "currency": currency,
            "invoice_payload": invoice_payload,
            "refunded": False,
        }
        return self._message_update(self.chat, extra={"successful_payment": payment})

    async def pay(
        self,
        invoice_payload: str,
        total_amount: int,
        currency: str = "XTR",
        charge_id: str | None = None,
        *,
        timeout: float = 5.0,
    ) -> tuple[JSONDict, JSONDict | None]:
        """Full payment flow: pre_checkout_query, wait for the bot's answer, then successful_payment.

        Returns (pre_checkout update, payment update or None if the bot declined), like Telegram,
        which only charges after answerPreCheckoutQuery(ok=True).
        """
        pre = self.pre_checkout(invoice_payload, total_amount, currency)
        query_id = pre["pre_checkout_query"]["id"]
        answer = await self.server.wait_for(
            lambda c: c.method == "answerPreCheckoutQuery"
            and c.ok
            and str(c.params.get("pre_checkout_query_id")) == query_id,
            timeout=timeout,
        )
        if answer.params.get("ok") is not True:
            return pre, None
        return pre, self.successful_payment(invoice_payload, total_amount, currency, charge_id)

    def _message_update(
        self,
        chat: JSONDict,
        *,
        text: str | None = None,
        entities: list[JSONDict] | None = None,
        extra: JSONDict | None = None,
    ) -> JSONDict:
        self.server._remember_chat(chat, authoritative=True)
        message: JSONDict = {
            "message_id": self.server._next_id_for(chat["id"]),
            "from": self.as_dict(),
            "chat": copy.deepcopy(chat),
            "date": int(time.time()),
        }
        if extra:
            message.update(copy.deepcopy(extra))
        if text is not None:
            message["text"] = text
            found = entities if entities is not None else command_entities(text)
            if found:
                message["entities"] = found
        self.server._store_message(message)
        return self.server.queue_update({"message": message})


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class FakeTelegramServer:
    """In-process fake Bot API server; see the module docstring and the method docstrings."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        bot_username: str = "cumapp_test_bot",
        bot_first_name: str = "CumApp Test Bot",
        enforce_limits: bool = False,
        global_rate: int = 30,
        per_chat_rate: float = 1.0,
        per_chat_burst: int = 3,
        group_rate_per_minute: int | None = 20,
        paid_rate: int = 1000,
        strict_html: bool = True,
        latency: float = 0.0,
    ) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_username = bot_username
        self.bot_first_name = bot_first_name
        self.enforce_limits = enforce_limits
        self.global_rate = global_rate
        self.per_chat_rate = per_chat_rate
        self.per_chat_burst = per_chat_burst
        self.group_rate_per_minute = group_rate_per_minute
        self.paid_rate = paid_rate
        self.strict_html = strict_html
        self.latency = latency

        self.calls: list[Call] = []
        self.too_many_requests = 0
        self.webhook: JSONDict | None = None
        self.commands: dict[tuple[str, str], list[JSONDict]] = {}
        self.menu_buttons: dict[int | None, JSONDict] = {}
        self.bot_names: dict[str, str] = {}
        self.bot_descriptions: dict[str, str] = {}
        self.bot_short_descriptions: dict[str, str] = {}
        self.invoices: list[JSONDict] = []
        self.charges: dict[str, JSONDict] = {}
        # Charge id of a Stars subscription payment -> {"user_id", "canceled"} (editUserStarSubscription).
        self.star_subscriptions: dict[str, JSONDict] = {}
        self.files: dict[str, _StoredFile] = {}
        self.blocked: dict[int | str, str] = {}

        self._updates: list[JSONDict] = []
        # One bot's update ids never repeat within days, across restarts: fakes made one after another continue
        # one sequence, as the bot's deduplication of redelivered update ids expects.
        self._update_ids = _UPDATE_IDS
        self._allowed_updates: frozenset[str] | None = None
        self._updates_changed = asyncio.Event()
        self._poll_generation = 0
        self._calls_changed = asyncio.Event()
        self._messages: dict[int, dict[int, JSONDict]] = {}
        self._sent: list[JSONDict] = []
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._chats: dict[int, JSONDict] = {}
        self._channel_ids: dict[str, int] = {}
        self._callback_queries: dict[str, bool] = {}  # id -> answered
        self._pre_checkouts: dict[str, bool] = {}
        self._seq = itertools.count(1)
        self._failures: list[_Failure] = []
        self._send_times: deque[float] = deque()
        self._chat_buckets: dict[int | str, tuple[float, float]] = {}
        self._group_windows: dict[int | str, deque[float]] = {}
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing = False

        self._handlers: dict[str, tuple[str, Callable[[Call], Any]]] = {}
        for name, handler in {
            "getMe": self._get_me,
            "logOut": self._true,
            "close": self._true,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "setMyName": self._setter(self.bot_names, "name"),
            "getMyName": self._getter(self.bot_names, "name", default=bot_first_name),
            "setMyDescription": self._setter(self.bot_descriptions, "description"),
            "getMyDescription": self._getter(self.bot_descriptions, "description"),
            "setMyShortDescription": self._setter(self.bot_short_descriptions, "short_description"),
            "getMyShortDescription": self._getter(self.bot_short_descriptions, "short_description"),
            "setChatMenuButton": self._set_chat_menu_button,
            "getChatMenuButton": self._get_chat_menu_button,
            "getChat": self._get_chat,
            "sendMessage": self._send_message,
            "sendPhoto": lambda call: self._send_media(call, "photo"),
            "sendDocument": lambda call: self._send_media(call, "document"),
            "sendMediaGroup": self._send_media_group,
            "sendAudio": lambda call: self._send_media(call, "audio"),
            "sendVoice": lambda call: self._send_media(call, "voice"),
            "sendInvoice": self._send_invoice,
            "createInvoiceLink": self._create_invoice_link,
            "sendChatAction": self._send_chat_action,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "deleteMessage": self._delete_message,
            "deleteMessages": self._delete_messages,
            "answerCallbackQuery": self._answer_callback_query,
            "answerPreCheckoutQuery": self._answer_pre_checkout_query,
            "refundStarPayment": self._refund_star_payment,
            "editUserStarSubscription": self._edit_user_star_subscription,
            "getFile": self._get_file,
        }.items():
            self._handlers[name.lower()] = (name, handler)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> FakeTelegramServer:
        # Telegram accepts uploads up to 50 MB; aiohttp's default body limit is 1 MiB.
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        # Binding the socket ourselves gives a free port without a race or private attributes.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        self._closing = False
        # A short shutdown_timeout matters: a client that gave up on a long poll leaves its
        # handler running, and cleanup would otherwise wait for it.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        self._closing = True
        self._wake("_updates_changed")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegramServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeTelegramServer is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        """For ApplicationBuilder.base_url(); python-telegram-bot appends the token."""
        return f"{self.url}/bot"

    @property
    def file_base_url(self) -> str:
        """For ApplicationBuilder.base_file_url(), so File.download_* fetch from the fake."""
        return f"{self.url}/file/bot"

    @property
    def bot_user(self) -> JSONDict:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.bot_first_name,
            "username": self.bot_username,
        }

    # -- test-facing helpers --------------------------------------------------------------------

    def user(
        self,
        user_id: int,
        first_name: str = "Ann",
        username: str | None = None,
        language_code: str | None = "en",
        last_name: str | None = None,
    ) -> FakeUser:
        user = FakeUser(self, user_id, first_name, username, language_code, last_name)
        self._remember_chat(user.chat, authoritative=True)
        return user

    def queue_update(self, update: JSONDict) -> JSONDict:
        """Queue a raw update for getUpdates (update_id assigned if missing); returns a copy."""
        update = copy.deepcopy(update)
        if "update_id" not in update:
            update = {"update_id": next(self._update_ids), **update}
        self._updates.append(update)
        self._wake("_updates_changed")
        return copy.deepcopy(update)

    @property
    def pending_updates(self) -> list[JSONDict]:
        """Updates not yet confirmed by a getUpdates offset (or webhook delivery)."""
        return copy.deepcopy(self._updates)

    def calls_of(self, method: str) -> list[Call]:
        lower = method.lower()
        return [call for call in self.calls if call.method.lower() == lower]

    def clear_calls(self) -> None:
        self.calls.clear()

    def sent_messages(self, chat_id: int | None = None) -> list[JSONDict]:
        """Messages the bot sent (send* results as returned, not later edits), in order."""
        return [
            copy.deepcopy(message)
            for message in self._sent
            if chat_id is None or message["chat"]["id"] == chat_id
        ]

    def last_message(self, chat_id: int) -> JSONDict:
        """The bot's most recent message in the chat, in its current state (after edits)."""
        sent = self.sent_messages(chat_id)
        if not sent:
            raise AssertionError(f"the bot sent nothing to chat {chat_id}; calls: {self._summary()}")
        current = self._messages.get(chat_id, {}).get(sent[-1]["message_id"])
        return copy.deepcopy(current) if current is not None else sent[-1]

    def messages_by_id(self, chat_id: int) -> dict[int, JSONDict]:
        """The bot's not-deleted messages in the chat, by message_id, as they look now."""
        return {
            message_id: copy.deepcopy(message)
            for message_id, message in self._messages.get(chat_id, {}).items()
            if message.get("from", {}).get("id") == self.bot_id
        }

    async def wait_for(
        self,
        predicate: CallPredicate | str,
        timeout: float = 5.0,
        *,
        since: int = 0,
    ) -> Call:
        """First recorded call (at index >= since) matching predicate or method name, waiting for it.

        Raises AssertionError listing the calls seen if none arrives within timeout.
        """
        if isinstance(predicate, str):
            name = predicate.lower()

            def check(call: Call) -> bool:
                return call.method.lower() == name
        else:
            check = predicate
        deadline = asyncio.get_running_loop().time() + timeout
        checked = since
        while True:
            while checked < len(self.calls):
                call = self.calls[checked]
                checked += 1
                if check(call):
                    return call
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no matching call within {timeout}s; calls: {self._summary()}")
            event = self._calls_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def fail_next(
        self,
        method: str,
        status: int = 429,
        count: int = 1,
        retry_after: int = 1,
        description: str | None = None,
    ) -> None:
        """Answer the next `count` calls of `method` ("*" = any but getUpdates) with an error."""
        methods = None if method == "*" else frozenset({method.lower()})
        self._failures.append(_Failure(status, retry_after, description, methods, remaining=count))

    def fail_for(
        self,
        seconds: float,
        status: int = 429,
        methods: list[str] | tuple[str, ...] | None = None,
        retry_after: int | None = 1,
        description: str | None = None,
    ) -> None:
        """Fail every matching call (default: all but getUpdates) for the next `seconds`.

        retry_after=None advertises the remaining window length, like a real flood wait.
        """
        names = frozenset(m.lower() for m in methods) if methods is not None else None
        until = time.monotonic() + seconds
        self._failures.append(_Failure(status, retry_after, description, names, until=until))

    def block(self, chat_id: int | str, description: str | None = None) -> None:
        """Make sends/edits to the chat answer 403, as when the user blocked the bot."""
        if description is None:
            if isinstance(chat_id, int) and chat_id > 0:
                description = "Forbidden: bot was blocked by the user"
            elif str(chat_id).startswith("-100"):
                description = "Forbidden: bot was kicked from the supergroup chat"
            else:
                description = "Forbidden: bot was kicked from the group chat"
        self.blocked[chat_id] = description

    def unblock(self, chat_id: int | str) -> None:
        self.blocked.pop(chat_id, None)

    def commands_for(self, scope: JSONDict | None = None, language_code: str = "") -> list[JSONDict]:
        """Commands set via setMyCommands for a scope (default scope if None) and language."""
        return copy.deepcopy(self.commands.get(self._scope_key(scope, language_code), []))

    async def deliver_webhook(self, update: JSONDict | None = None) -> list[int]:
        """POST `update` (or every pending update) to the URL set via setWebhook, like Telegram.

        Sends X-Telegram-Bot-Api-Secret-Token when a secret_token was set; 2xx answers confirm
        pending updates. Returns the HTTP statuses.
        """
        if not self.webhook:
            raise RuntimeError("no webhook is set")
        headers = {}
        if self.webhook.get("secret_token"):
            headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook["secret_token"]
        updates = [update] if update is not None else list(self._updates)
        statuses = []
        async with ClientSession() as session:
            for item in updates:
                async with session.post(self.webhook["url"], json=item, headers=headers) as response:
                    statuses.append(response.status)
                    if 200 <= response.status < 300:
                        self._updates = [u for u in self._updates if u["update_id"] != item.get("update_id")]
        return statuses

    # -- HTTP plumbing --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        raw_method = request.match_info["method"]
        canonical, handler = self._handlers.get(raw_method.lower(), (raw_method, None))
        try:
            params, files = await self._read_params(request)
        except ValueError:
            bad = Call(method=canonical, params={}, at=arrived)
            return self._error(bad, ApiError(400, "Bad Request: can't parse request JSON object"))
        call = Call(method=canonical, params=params, files=files, at=arrived)
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        try:
            if request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            self._check_injected_failures(canonical)
            self._check_blocked(canonical, params)
            self._check_limits(canonical, params)
            if handler is None:
                result = self._unknown_method(call)
            else:
                result = handler(call)
                if inspect.isawaitable(result):
                    result = await result
            self._commit_limits(canonical, params)
        except ApiError as exc:
            return self._error(call, exc)
        except Exception as exc:  # a bug in the fake or a malformed request: surface it, don't hang
            return self._error(call, ApiError(500, f"Internal Server Error: fake crashed: {exc!r}"))
        call.status, call.result = 200, copy.deepcopy(result)
        self._record(call)
        return web.json_response({"ok": True, "result": result})

    def _error(self, call: Call, exc: ApiError) -> web.Response:
        if exc.status == 429:
            self.too_many_requests += 1
        call.status, call.error = exc.status, exc.description
        self._record(call)
        return web.json_response(exc.payload(), status=exc.status)

    async def _read_params(self, request: web.Request) -> tuple[JSONDict, dict[str, UploadedFile]]:
        raw: JSONDict = dict(request.query)
        files: dict[str, UploadedFile] = {}
        if request.can_read_body:
            if request.content_type == "application/json":
                body = await request.json()
                if isinstance(body, dict):
                    raw.update(body)
            else:
                form = await request.post()
                for key, value in form.items():
                    if isinstance(value, web.FileField):
                        files[key] = UploadedFile(value.filename, value.file.read(), value.content_type)
                    else:
                        raw[key] = value
        params = {key: _decode_param(key, value) for key, value in raw.items()}
        for key, upload in files.items():
            params[key] = upload.content
        return params, files

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(ApiError(401, "Unauthorized").payload(), status=401)
        path = request.match_info["path"]
        for stored in self.files.values():
            if stored.file_path == path:
                content_type = stored.mime_type or "application/octet-stream"
                return web.Response(body=stored.content, content_type=content_type)
        return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._wake("_calls_changed")

    def _wake(self, attr: str) -> None:
        # Replace-then-set: current waiters wake, later waiters get a fresh un-set event.
        event = getattr(self, attr)
        setattr(self, attr, asyncio.Event())
        event.set()

    def _summary(self) -> str:
        return ", ".join(_described(c) for c in self.calls if c.method != "getUpdates") or "none"

    # -- failure injection, blocking, flood limits ----------------------------------------------

    def _check_injected_failures(self, method: str) -> None:
        now = time.monotonic()
        self._failures = [
            f
            for f in self._failures
            if (f.remaining is None or f.remaining > 0) and (f.until is None or f.until > now)
        ]
        for failure in self._failures:
            if not failure.matches(method):
                continue
            if failure.remaining is not None:
                failure.remaining -= 1
            if failure.status == 429:
                retry_after = failure.retry_after
                if retry_after is None:
                    retry_after = max(1, math.ceil((failure.until or now) - now))
                raise too_many_requests(retry_after, failure.description)
            description = failure.description or _DEFAULT_DESCRIPTIONS.get(failure.status, "Injected failure")
            raise ApiError(failure.status, description)

    def _check_blocked(self, method: str, params: JSONDict) -> None:
        if not self.blocked or not method.lower().startswith(("send", "copy", "forward", "edit")):
            return
        description = self.blocked.get(params.get("chat_id"))  # type: ignore[arg-type]
        if description is not None:
            raise ApiError(403, description)

    def _check_limits(self, method: str, params: JSONDict) -> None:
        if not self.enforce_limits or not _is_send_method(method):
            return
        now = time.monotonic()
        window = self._send_times
        while window and window[0] <= now - 1.0:
            window.popleft()
        paid = params.get("allow_paid_broadcast") is True
        cap = self.paid_rate if paid else self.global_rate
        if len(window) >= cap:
            raise too_many_requests(max(1, math.ceil(window[0] + 1.0 - now)))
        chat = params.get("chat_id")
        if chat is None:
            return
        tokens, last = self._chat_buckets.get(chat, (float(self.per_chat_burst), now))
        tokens = min(float(self.per_chat_burst), tokens + (now - last) * self.per_chat_rate)
        self._chat_buckets[chat] = (tokens, now)
        if tokens < 1.0:
            raise too_many_requests(max(1, math.ceil((1.0 - tokens) / self.per_chat_rate)))
        if self.group_rate_per_minute and self._is_group(chat):
            group_window = self._group_windows.setdefault(chat, deque())
            while group_window and group_window[0] <= now - 60.0:
                group_window.popleft()
            if len(group_window) >= self.group_rate_per_minute:
                raise too_many_requests(max(1, math.ceil(group_window[0] + 60.0 - now)))

    def _commit_limits(self, method: str, params: JSONDict) -> None:
        # Only accepted sends count against the limits, so rejected retries don't extend the ban.
        if not self.enforce_limits or not _is_send_method(method):
            return
        now = time.monotonic()
        self._send_times.append(now)
        chat = params.get("chat_id")
        if chat is None:
            return
        tokens, _ = self._chat_buckets.get(chat, (float(self.per_chat_burst), now))
        self._chat_buckets[chat] = (tokens - 1.0, now)
        if self.group_rate_per_minute and self._is_group(chat):
            self._group_windows.setdefault(chat, deque()).append(now)

    @staticmethod
    def _is_group(chat: Any) -> bool:
        return isinstance(chat, str) or (isinstance(chat, int) and chat < 0)

    # -- shared state helpers -------------------------------------------------------------------

    def _next_id_for(self, chat_id: int) -> int:
        # Private chats share one message_id sequence between the user and the bot.
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    def _remember_chat(self, chat: JSONDict, *, authoritative: bool = False) -> None:
        # Chats seen in user updates replace placeholders invented for sends to unknown ids.
        if authoritative or chat["id"] not in self._chats:
            self._chats[chat["id"]] = copy.deepcopy(chat)

    def _store_message(self, message: JSONDict) -> None:
        self._messages.setdefault(message["chat"]["id"], {})[message["message_id"]] = message

    def _resolve_chat(self, chat_id: Any) -> JSONDict:
        if chat_id is None or chat_id == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        if isinstance(chat_id, str):
            if not chat_id.startswith("@"):
                raise ApiError(400, "Bad Request: chat not found")
            username = chat_id[1:]
            if username not in self._channel_ids:
                self._channel_ids[username] = -1_001_000_000_000 - len(self._channel_ids)
            numeric = self._channel_ids[username]
            self._remember_chat({"id": numeric, "title": username, "username": username, "type": "channel"})
            return self._chats[numeric]
        if not isinstance(chat_id, int):
            raise ApiError(400, "Bad Request: chat not found")
        if chat_id not in self._chats:
            if chat_id > 0:
                chat = {"id": chat_id, "first_name": f"User {chat_id}", "type": "private"}
            elif str(chat_id).startswith("-100"):
                chat = {"id": chat_id, "title": f"Chat {chat_id}", "type": "supergroup"}
            else:
                chat = {"id": chat_id, "title": f"Chat {chat_id}", "type": "group"}
            self._remember_chat(chat)
        return self._chats[chat_id]

    def _current_message(self, message: JSONDict | int, *, default_chat: int) -> JSONDict:
        if isinstance(message, int):
            chat_id, message_id = default_chat, message
        else:
            chat_id, message_id = message["chat"]["id"], message["message_id"]
        current = self._messages.get(chat_id, {}).get(message_id)
        if current is not None:
            return current
        if isinstance(message, dict):
            return message
        raise LookupError(f"no message {message_id} in chat {chat_id}")

    def _new_callback_query_id(self) -> str:
        query_id = str(4_000_000_000_000_000_000 + next(self._seq))
        self._callback_queries[query_id] = False
        return query_id

    def _new_pre_checkout_id(self) -> str:
        query_id = str(5_000_000_000_000_000_000 + next(self._seq))
        self._pre_checkouts[query_id] = False
        return query_id

    def _new_charge_id(self, user_id: int) -> str:
        return f"stxFAKE{user_id}_{next(self._seq)}"

    @staticmethod
    def _scope_key(scope: Any, language_code: Any) -> tuple[str, str]:
        return json.dumps(scope or {"type": "default"}, sort_keys=True), str(language_code or "")

    def _format(
        self, text: str, parse_mode: Any, entities: Any, *, limit: int, too_long: str, empty: str
    ) -> tuple[str, list[JSONDict]]:
        mode = str(parse_mode or "").lower()
        if mode == "html":
            try:
                plain, found = parse_html(text, strict_ampersand=self.strict_html)
            except EntityParseError as exc:
                raise ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
        elif mode in ("", "markdown", "markdownv2"):
            # Markdown is passed through unparsed; only HTML is validated by this fake.
            plain = text
            found = list(entities) if isinstance(entities, list) and not mode else []
        else:
            raise ApiError(400, "Bad Request: unsupported parse_mode")
        plain, found = _strip_text(plain, found)
        if empty and not plain:
            raise ApiError(400, empty)
        if utf16_len(plain) > limit:
            raise ApiError(400, too_long)
        return plain, found

    @staticmethod
    def _inline_markup(markup: Any) -> JSONDict | None:
        """Validate an inline keyboard the way Telegram does; other markups are not echoed back."""
        if not isinstance(markup, dict) or "inline_keyboard" not in markup:
            return None
        for row in markup["inline_keyboard"]:
            for button in row:
                if not button.get("text"):
                    raise ApiError(400, "Bad Request: can't parse inline keyboard button: text is empty")
                if not any(key in button for key in _INLINE_BUTTON_ACTIONS):
                    raise ApiError(
                        400,
                        "Bad Request: can't parse inline keyboard button: Text buttons are unallowed in the "
                        "inline keyboard",
                    )
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode("utf-8")) <= MAX_CALLBACK_DATA_BYTES:
                    raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
        return copy.deepcopy(markup)

    def _reply_target(self, chat_id: int, params: JSONDict) -> JSONDict | None:
        reply = params.get("reply_parameters")
        if not isinstance(reply, dict):
            legacy = params.get("reply_to_message_id")
            if legacy is None:
                return None
            reply = {"message_id": legacy}
        target_chat = reply.get("chat_id", chat_id)
        target = self._messages.get(target_chat, {}).get(_as_int(reply.get("message_id")))
        if target is None:
            if reply.get("allow_sending_without_reply"):
                return None
            raise ApiError(400, "Bad Request: message to be replied not found")
        quoted = copy.deepcopy(target)
        quoted.pop("reply_to_message", None)
        return quoted

    def _bot_message(self, chat: JSONDict, params: JSONDict, content: JSONDict) -> JSONDict:
        chat_id = chat["id"]
        # Validate before taking a message_id, so a rejected send leaves no gap in the sequence.
        reply_to = self._reply_target(chat_id, params)
        markup = self._inline_markup(params.get("reply_markup"))
        message: JSONDict = {
            "message_id": self._next_id_for(chat_id),
            "from": self.bot_user,
            "chat": copy.deepcopy(chat),
            "date": int(time.time()),
        }
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        message.update(content)
        if markup is not None:
            message["reply_markup"] = markup
        self._store_message(message)
        self._sent.append(copy.deepcopy(message))
        return copy.deepcopy(message)

    def _editable(self, params: JSONDict) -> JSONDict:
        chat = self._resolve_chat(params.get("chat_id"))
        message = self._messages.get(chat["id"], {}).get(_as_int(params.get("message_id")))
        if message is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        if message.get("from", {}).get("id") != self.bot_id:
            raise ApiError(400, "Bad Request: message can't be edited")
        return message

    # -- method handlers ------------------------------------------------------------------------

    @staticmethod
    def _true(call: Call) -> bool:
        return True

    def _unknown_method(self, call: Call) -> Any:
        # A bare Message keeps python-telegram-bot's Message.de_json happy for unimplemented send*s.
        if _is_send_method(call.method) and "chat_id" in call.params:
            chat = self._resolve_chat(call.params["chat_id"])
            return self._bot_message(chat, call.params, {})
        return True

    def _get_me(self, call: Call) -> JSONDict:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, call: Call) -> list[JSONDict]:
        if self.webhook:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
                "the webhook first",
            )
        params = call.params
        offset = _as_int(params.get("offset"))
        limit = min(max(_as_int(params.get("limit"), 100), 1), 100)
        try:
            timeout = max(0.0, float(params.get("timeout") or 0))
        except (TypeError, ValueError):
            timeout = 0.0
        allowed = params.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = frozenset(allowed) if allowed else None
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]
        # A newer getUpdates terminates an older long poll, exactly like Telegram's 409 Conflict;
        # in practice the older one belongs to a client that already gave up (cancelled poll).
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake("_updates_changed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if generation != self._poll_generation:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one bot instance "
                    "is running",
                )
            ready = self._deliverable(limit)
            if ready or self._closing:
                return ready
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            event = self._updates_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def _deliverable(self, limit: int) -> list[JSONDict]:
        def allowed(update: JSONDict) -> bool:
            kind = next((key for key in update if key != "update_id"), "")
            if self._allowed_updates is None:
                return kind not in _OPT_IN_UPDATE_TYPES
            return kind in self._allowed_updates

        # Telegram drops updates of types the bot did not ask for rather than keeping them.
        self._updates = [u for u in self._updates if allowed(u)]
        return copy.deepcopy(self._updates[:limit])

    def _set_webhook(self, call: Call) -> bool:
        params = call.params
        url = str(params.get("url") or "")
        if not url:
            self.webhook = None
            return True
        match = re.match(r"^(https?)://([^/:]+)(?::(\d+))?", url)
        if not match:
            raise ApiError(400, "Bad Request: bad webhook: Failed to resolve host: Name or service not known")
        scheme, host, port = match.group(1), match.group(2), match.group(3)
        # Local receivers are allowed over plain HTTP so webhook-mode tests can run without TLS.
        if host not in ("127.0.0.1", "localhost"):
            if scheme != "https":
                raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
            if port and port not in ("80", "88", "443", "8443"):
                raise ApiError(
                    400, "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"
                )
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        if params.get("drop_pending_updates") is True:
            self._updates.clear()
        self.webhook = {
            "url": url,
            "secret_token": secret,
            "max_connections": _as_int(params.get("max_connections"), 40),
            "allowed_updates": params.get("allowed_updates"),
        }
        self._wake("_updates_changed")
        return True

    def _delete_webhook(self, call: Call) -> bool:
        self.webhook = None
        if call.params.get("drop_pending_updates") is True:
            self._updates.clear()
        return True

    def _get_webhook_info(self, call: Call) -> JSONDict:
        info: JSONDict = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook:
            info["max_connections"] = self.webhook["max_connections"]
            if self.webhook.get("allowed_updates"):
                info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    def _set_my_commands(self, call: Call) -> bool:
        commands = call.params.get("commands")
        if not isinstance(commands, list):
            raise ApiError(400, "Bad Request: parameter \"commands\" is required")
        for command in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(command.get("command", ""))):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise ApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        key = self._scope_key(call.params.get("scope"), call.params.get("language_code"))
        self.commands[key] = copy.deepcopy(commands)
        return True

    def _get_my_commands(self, call: Call) -> list[JSONDict]:
        key = self._scope_key(call.params.get("scope"), call.params.get("language_code"))
        return copy.deepcopy(self.commands.get(key, []))

    def _delete_my_commands(self, call: Call) -> bool:
        key = self._scope_key(call.params.get("scope"), call.params.get("language_code"))
        self.commands.pop(key, None)
        return True

    @staticmethod
    def _setter(store: dict[str, str], param: str) -> Callable[[Call], bool]:
        def handler(call: Call) -> bool:
            language = str(call.params.get("language_code") or "")
            value = call.params.get(param)
            if value:
                store[language] = str(value)
            else:
                store.pop(language, None)
            return True

        return handler

    @staticmethod
    def _getter(store: dict[str, str], key: str, default: str = "") -> Callable[[Call], JSONDict]:
        def handler(call: Call) -> JSONDict:
            language = str(call.params.get("language_code") or "")
            return {key: store.get(language, store.get("", default))}

        return handler

    def _set_chat_menu_button(self, call: Call) -> bool:
        chat_id = call.params.get("chat_id")
        button = call.params.get("menu_button") or {"type": "default"}
        self.menu_buttons[chat_id if isinstance(chat_id, int) else None] = copy.deepcopy(button)
        return True

    def _get_chat_menu_button(self, call: Call) -> JSONDict:
        chat_id = call.params.get("chat_id")
        button = self.menu_buttons.get(chat_id) if isinstance(chat_id, int) else None
        button = button or self.menu_buttons.get(None) or {"type": "commands"}
        if button.get("type") == "default":
            button = {"type": "commands"}
        return copy.deepcopy(button)

    def _get_chat(self, call: Call) -> JSONDict:
        chat_id = call.params.get("chat_id")
        if isinstance(chat_id, str) and chat_id.startswith("@"):
            chat_id = self._channel_ids.get(chat_id[1:])
        chat = self._chats.get(chat_id) if isinstance(chat_id, int) else None
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        return {
            **copy.deepcopy(chat),
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": True,
                "limited_gifts": True,
                "unique_gifts": True,
                "premium_subscription": True,
                "gifts_from_channels": True,
            },
        }

    def _send_message(self, call: Call) -> JSONDict:
        params = call.params
        chat = self._resolve_chat(params.get("chat_id"))
        text = params.get("text")
        if text is None or text == "":
            raise ApiError(400, "Bad Request: message text is empty")
        plain, entities = self._format(
            str(text),
            params.get("parse_mode"),
            params.get("entities"),
            limit=MAX_MESSAGE_LENGTH,
            too_long="Bad Request: message is too long",
            empty="Bad Request: message text is empty",
        )
        content: JSONDict = {"text": plain}
        if entities:
            content["entities"] = entities
        return self._bot_message(chat, params, content)

    def _caption_content(self, params: JSONDict) -> JSONDict:
        caption = params.get("caption")
        if not caption:
            return {}
        plain, entities = self._format(
            str(caption),
            params.get("parse_mode"),
            params.get("caption_entities"),
            limit=MAX_CAPTION_LENGTH,
            too_long="Bad Request: message caption is too long",
            empty="",
        )
        content: JSONDict = {"caption": plain} if plain else {}
        if entities:
            content["caption_entities"] = entities
        return content

    def _store_file(self, kind: str, upload: UploadedFile | None, reference: Any) -> _StoredFile:
        if upload is None:
            if isinstance(reference, str) and reference in self.files:
                return self.files[reference]  # re-sending by file_id
            if not isinstance(reference, str) or not reference:
                raise ApiError(400, f"Bad Request: there is no {kind} in the request")
            upload = UploadedFile(reference.rsplit("/", 1)[-1] or None, b"", None)  # sent by URL
        elif not upload.content:
            raise ApiError(400, "Bad Request: file must be non-empty")
        number = next(self._seq)
        extension = (upload.filename or "").rsplit(".", 1)[-1] if "." in (upload.filename or "") else "bin"
        stored = _StoredFile(
            file_id=f"FAKE-{kind.upper()}-{number}",
            file_unique_id=f"fakeuniq{number}",
            file_path=f"{kind}s/file_{number}.{extension}",
            content=upload.content,
            filename=upload.filename,
            mime_type=upload.content_type,
        )
        self.files[stored.file_id] = stored
        if kind == "photo":
            self.files[f"{stored.file_id}-s"] = stored  # the thumbnail size in the PhotoSize list
        return stored

    def _send_media(self, call: Call, kind: str) -> JSONDict:
        params = call.params
        chat = self._resolve_chat(params.get("chat_id"))
        reference = params.get(kind)
        upload = call.files.get(kind)
        if isinstance(reference, str) and reference.startswith("attach://"):
            upload = call.files.get(reference[len("attach://") :])
        stored = self._store_file(kind, upload, reference)
        content: JSONDict = {}
        if kind == "photo":
            content["photo"] = [
                {
                    "file_id": f"{stored.file_id}-s",
                    "file_unique_id": f"{stored.file_unique_id}s",
                    "width": 90,
                    "height": 90,
                    "file_size": len(stored.content) // 10,
                },
                {
                    "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id,
                    "width": 800,
                    "height": 800,
                    "file_size": len(stored.content),
                },
            ]
        else:
            document: JSONDict = {
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "file_size": len(stored.content),
            }
            if stored.filename:
                document["file_name"] = stored.filename
            if stored.mime_type:
                document["mime_type"] = stored.mime_type
            if kind in ("audio", "voice"):  # sendAudio/sendVoice: the file plus what a player shows
                document["duration"] = _as_int(params.get("duration") or 0)
                for field_name in ("title", "performer") if kind == "audio" else ():
                    if params.get(field_name):
                        document[field_name] = str(params[field_name])
            content[kind if kind in ("audio", "voice") else "document"] = document
        content.update(self._caption_content(params))
        return self._bot_message(chat, params, content)

    def _send_media_group(self, call: Call) -> list[JSONDict]:
        """An album: 2-10 photos or documents (uploaded as attach://<name> parts), one message each."""
        media = call.params.get("media")
        if not isinstance(media, list) or not 2 <= len(media) <= 10:
            raise ApiError(400, "Bad Request: wrong number of messages to send, must be 2-10")
        chat = self._resolve_chat(call.params.get("chat_id"))
        sent = []
        for item in media:
            kind = str(item.get("type") or "")
            if kind not in ("photo", "document"):
                raise ApiError(400, f"Bad Request: unsupported media type {kind!r}")
            reference = item.get("media")
            upload = None
            if isinstance(reference, str) and reference.startswith("attach://"):
                upload = call.files.get(reference[len("attach://"):])
            item_call = Call(call.method, {"chat_id": call.params.get("chat_id"), kind: reference,
                                           "caption": item.get("caption"), "parse_mode": item.get("parse_mode")},
                             files={kind: upload} if upload is not None else {})
            message = self._send_media(item_call, kind)
            message["media_group_id"] = f"group{chat['id']}{call.params.get('chat_id')}{len(self.calls)}"
            sent.append(message)
        return sent

    def _validate_invoice(self, params: JSONDict) -> int:
        prices = params.get("prices")
        if not isinstance(prices, list) or not prices:
            raise ApiError(400, "Bad Request: prices must be non-empty")
        currency = str(params.get("currency") or "")
        if currency == "XTR":
            # Star invoices take exactly one price and no payment provider.
            if len(prices) != 1:
                raise ApiError(400, "Bad Request: STARS_INVOICE_INVALID")
            if params.get("provider_token"):
                raise ApiError(400, "Bad Request: PAYMENT_PROVIDER_INVALID")
        elif not params.get("provider_token"):
            raise ApiError(400, "Bad Request: PAYMENT_PROVIDER_INVALID")
        payload = str(params.get("payload") or "")
        if not 1 <= len(payload.encode("utf-8")) <= 128:
            raise ApiError(400, "Bad Request: INVOICE_PAYLOAD_INVALID")
        if not params.get("title"):
            raise ApiError(400, "Bad Request: TITLE_INVALID")
        if not params.get("description"):
            raise ApiError(400, "Bad Request: DESCRIPTION_INVALID")
        return sum(_as_int(price.get("amount")) for price in prices)

    def _send_invoice(self, call: Call) -> JSONDict:
        params = call.params
        chat = self._resolve_chat(params.get("chat_id"))
        total = self._validate_invoice(params)
        invoice = {
            "title": str(params["title"]),
            "description": str(params["description"]),
            "start_parameter": str(params.get("start_parameter") or ""),
            "currency": str(params["currency"]),
            "total_amount": total,
        }
        message = self._bot_message(chat, params, {"invoice": invoice})
        record = {**copy.deepcopy(params), "message_id": message["message_id"], "chat_id": chat["id"]}
        self.invoices.append(record)
        return message

    def _create_invoice_link(self, call: Call) -> str:
        total = self._validate_invoice(call.params)
        period = call.params.get("subscription_period")
        if period is not None:
            # Subscriptions: Stars only, exactly 30 days, at most 10000 Stars a period.
            if str(call.params.get("currency")) != "XTR" or _as_int(period) != 2592000:
                raise ApiError(400, "Bad Request: SUBSCRIPTION_PERIOD_INVALID")
            if total > 10000:
                raise ApiError(400, "Bad Request: STARS_INVOICE_INVALID")
        self.invoices.append(copy.deepcopy(call.params))
        return f"https://t.me/$FakeInvoice{next(self._seq)}"

    def _send_chat_action(self, call: Call) -> bool:
        self._resolve_chat(call.params.get("chat_id"))
        if call.params.get("action") not in _CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    def _edit_message_text(self, call: Call) -> JSONDict | bool:
        params = call.params
        if params.get("inline_message_id"):
            self._format(
                str(params.get("text") or ""), params.get("parse_mode"), params.get("entities"),
                limit=MAX_MESSAGE_LENGTH, too_long="Bad Request: MESSAGE_TOO_LONG",
                empty="Bad Request: message text is empty",
            )
            return True
        message = self._editable(params)
        if "text" not in message:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        plain, entities = self._format(
            str(params.get("text") or ""),
            params.get("parse_mode"),
            params.get("entities"),
            limit=MAX_MESSAGE_LENGTH,
            too_long="Bad Request: MESSAGE_TOO_LONG",
            empty="Bad Request: message text is empty",
        )
        # Telegram drops the inline keyboard when an edit does not repeat it.
        markup = self._inline_markup(params.get("reply_markup"))
        before = (message["text"], message.get("entities", []), message.get("reply_markup"))
        if (plain, entities, markup) == before:
            raise ApiError(400, _NOT_MODIFIED)
        message["text"] = plain
        self._set_optional(message, "entities", entities)
        self._set_optional(message, "reply_markup", markup)
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    def _edit_message_caption(self, call: Call) -> JSONDict | bool:
        params = call.params
        if params.get("inline_message_id"):
            return True
        message = self._editable(params)
        if "text" in message:
            raise ApiError(400, "Bad Request: there is no caption in the message to edit")
        content = self._caption_content(params)
        markup = self._inline_markup(params.get("reply_markup"))
        before = (message.get("caption"), message.get("caption_entities"), message.get("reply_markup"))
        if (content.get("caption"), content.get("caption_entities"), markup) == before:
            raise ApiError(400, _NOT_MODIFIED)
        self._set_optional(message, "caption", content.get("caption"))
        self._set_optional(message, "caption_entities", content.get("caption_entities"))
        self._set_optional(message, "reply_markup", markup)
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    def _edit_message_reply_markup(self, call: Call) -> JSONDict | bool:
        params = call.params
        if params.get("inline_message_id"):
            return True
        message = self._editable(params)
        markup = self._inline_markup(params.get("reply_markup"))
        if markup == message.get("reply_markup"):
            raise ApiError(400, _NOT_MODIFIED)
        self._set_optional(message, "reply_markup", markup)
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    @staticmethod
    def _set_optional(message: JSONDict, key: str, value: Any) -> None:
        if value:
            message[key] = value
        else:
            message.pop(key, None)

    def _delete_message(self, call: Call) -> bool:
        chat = self._resolve_chat(call.params.get("chat_id"))
        messages = self._messages.get(chat["id"], {})
        if messages.pop(_as_int(call.params.get("message_id")), None) is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        return True

    def _delete_messages(self, call: Call) -> bool:
        chat = self._resolve_chat(call.params.get("chat_id"))
        messages = self._messages.get(chat["id"], {})
        for message_id in call.params.get("message_ids") or []:
            messages.pop(_as_int(message_id), None)
        return True

    def _answer_callback_query(self, call: Call) -> bool:
        query_id = str(call.params.get("callback_query_id") or "")
        if self._callback_queries.get(query_id, True):  # unknown or already answered
            raise ApiError(400, _CALLBACK_QUERY_INVALID)
        self._callback_queries[query_id] = True
        return True

    def _answer_pre_checkout_query(self, call: Call) -> bool:
        query_id = str(call.params.get("pre_checkout_query_id") or "")
        if self._pre_checkouts.get(query_id, True):
            raise ApiError(400, "Bad Request: QUERY_ID_INVALID")
        if call.params.get("ok") is not True and not call.params.get("error_message"):
            raise ApiError(400, "Bad Request: ERROR_MESSAGE_EMPTY")
        self._pre_checkouts[query_id] = True
        return True

    def _refund_star_payment(self, call: Call) -> bool:
        charge = self.charges.get(str(call.params.get("telegram_payment_charge_id") or ""))
        if charge is None or charge["user_id"] != call.params.get("user_id"):
            raise ApiError(400, "Bad Request: CHARGE_NOT_FOUND")
        if charge["refunded"]:
            raise ApiError(400, "Bad Request: CHARGE_ALREADY_REFUNDED")
        charge["refunded"] = True
        return True

    def _edit_user_star_subscription(self, call: Call) -> bool:
        subscription = self.star_subscriptions.get(str(call.params.get("telegram_payment_charge_id") or ""))
        if subscription is None or subscription["user_id"] != call.params.get("user_id"):
            raise ApiError(400, "Bad Request: CHARGE_ID_INVALID")
        if not isinstance(call.params.get("is_canceled"), bool):
            raise ApiError(400, "Bad Request: is_canceled is required")
        subscription["canceled"] = call.params["is_canceled"]
        return True

    def _get_file(self, call: Call) -> JSONDict:
        stored = self.files.get(str(call.params.get("file_id") or ""))
        if stored is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.content),
            "file_path": stored.file_path,
        }


__all__ = [
    "DEFAULT_TOKEN",
    "ApiError",
    "Call",
    "EntityParseError",
    "FakeTelegramServer",
    "FakeUser",
    "UploadedFile",
    "command_entities",
    "parse_html",
    "utf16_len",
]


def _described(call: Call) -> str:
    """`method(status)`, with the message ids and the start of the text of a message sent or edited: a failed wait
    then shows which message was which."""
    if call.method not in ("sendMessage", "editMessageText"):
        return f"{call.method}({call.status})"
    edited = call.params.get("message_id")
    sent = call.result.get("message_id") if isinstance(call.result, dict) else None
    text = str(call.params.get("text", ""))[:40].replace("\n", " ")
    return f"{call.method}({call.status}{f' #{edited}' if edited else ''}{f' -> #{sent}' if sent else ''} {text!r})"
