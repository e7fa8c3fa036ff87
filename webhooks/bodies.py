"""Bounded webhook bodies: JSON and forms read within limits, so that no body, however malformed, causes a 5xx.

Every webhook reads its body through here. The size and depth of JSON are checked on the raw bytes before
`json.loads` runs (a body nested 100,000 deep would otherwise raise RecursionError), and forms are decoded strictly
(aiohttp's `request.post()` raises UnicodeDecodeError on a form that is not UTF-8). Text that a database cannot
store (NUL characters, lone surrogates) is refused here too. A refusal is a `BadBody` with the status to answer:
400 for what is malformed, 413 for what is too large.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import MultiDict, MultiDictProxy

# Provider webhooks are small (a TextVerified event or a Vonage receipt is well under 4 KiB).
MAX_JSON_BYTES = 64 * 1024
# Deep enough for any provider's event (and for a Telegram update, about 8); far below the recursion limit.
MAX_JSON_DEPTH = 32
# Twilio's inbound SMS has about 40 fields with ten pictures; a body of 1,600 characters is Twilio's maximum.
MAX_FORM_FIELDS = 200
MAX_FIELD_CHARS = 16 * 1024

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


class BadBody(Exception):
    """A body refused before it reached a parser or the database: `status` is 400 or 413, `reason` is short."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.reason)


def _malformed(reason: str) -> NoReturn:
    raise BadBody(400, reason)


# A JSON string (escapes included) or one bracket; anything else between them is skipped by finditer.
_JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset(b"[{")


def json_depth_exceeds(raw: bytes, max_depth: int) -> bool:
    """True as soon as brackets outside strings nest deeper than `max_depth` (stops there: linear, no recursion)."""
    depth = 0
    for match in _JSON_TOKENS.finditer(raw):
        first = match.group()[0]
        if first in _OPENERS:
            depth += 1
            if depth > max_depth:
                return True
        elif first != 0x22:  # a closing bracket; strings leave the depth alone
            depth -= 1
    return False


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def check_text(values: Iterable[Any]) -> None:
    """Refuse strings that no database stores: NUL characters and lone surrogates (from "\\ud800" in JSON)."""
    for value in values:
        if isinstance(value, str) and ("\x00" in value or not value.isascii() and _has_surrogate(value)):
            _malformed("text with a NUL character or a lone surrogate")


def _has_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _strings(value: Any) -> Iterable[Any]:
    """Every key and scalar in a parsed JSON value, without recursion (its depth is already bounded)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield from item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            yield item


def parse_json(raw: bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of `raw`, within `max_bytes` (413 beyond) and `max_depth` (400 beyond).

    Only UTF-8, as RFC 8259 requires; NaN and Infinity, which are not JSON, are refused."""
    # Depth first, so that a nesting bomb is named as one (400) whatever its size; over the size, only the part
    # within it is scanned (a bomb shows itself at once), which keeps the scan bounded.
    if json_depth_exceeds(raw[:max_bytes], max_depth):
        _malformed(f"JSON nested deeper than {max_depth}")
    if len(raw) > max_bytes:
        raise BadBody(413, f"JSON body over {max_bytes} bytes")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError cannot happen below the depth bound; caught all the same so that nothing here is a 500.
        _malformed("malformed JSON")
    check_text(_strings(value))
    return value


def parse_form(raw: bytes, charset: str | None = None) -> MultiDictProxy[str]:
    """An application/x-www-form-urlencoded body, decoded strictly in `charset` (UTF-8 when none is given).

    Parsed as aiohttp's `request.post()` parses it (trailing whitespace dropped, blank values kept), so provider
    signatures computed over the fields come out the same."""
    if raw.count(b"&") >= MAX_FORM_FIELDS:
        raise BadBody(413, f"form with more than {MAX_FORM_FIELDS} fields")
    encoding = charset or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        _malformed("form in an unknown charset")
    try:
        pairs = _form_pairs(raw.rstrip().decode(encoding), encoding)
    except (UnicodeError, ValueError):
        _malformed(f"form that is not {encoding}")
    check_text(item for pair in pairs for item in pair)
    return MultiDictProxy(MultiDict(pairs))


def _form_pairs(text: str, encoding: str) -> list[tuple[str, str]]:
    """What `urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict")` returns, in half its time: a
    part with no `+` or `%` (most of a webhook's) is taken as it is rather than unquoted (tests/webhooks/
    test_bodies.py compares the two)."""
    pairs = []
    for field in text.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if "+" in name or "%" in name:
            name = unquote(name.replace("+", " "), encoding, "strict")
        if "+" in value or "%" in value:
            value = unquote(value.replace("+", " "), encoding, "strict")
        if len(name) > MAX_FIELD_CHARS or len(value) > MAX_FIELD_CHARS:
            raise BadBody(413, f"form field over {MAX_FIELD_CHARS} characters")
        pairs.append((name, value))
    return pairs


async def read_body(request: web.Request) -> bytes:
    """The raw body, or BadBody: 413 over HTTP_MAX_BODY_BYTES (declared or sent), 400 when it cannot be read."""
    limit = request.client_max_size
    if limit and request.content_length is not None and request.content_length > limit:
        raise BadBody(413, "body too large")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadBody(413, "body too large") from None
    except (RequestPayloadError, HttpProcessingError):
        _malformed("unreadable body")


async def read_form(request: web.Request) -> MultiDictProxy[str]:
    """The form of a POST: empty without a body, else it must be application/x-www-form-urlencoded."""
    raw = await read_body(request)
    if not raw:
        return MultiDictProxy(MultiDict())
    if request.content_type != FORM:
        _malformed(f"expected {FORM}")
    return parse_form(raw, request.charset)


def check_params(params: Mapping[str, Any]) -> None:
    """Query parameters go through the same text checks as bodies."""
    check_text(params.keys())
    check_text(params.values())
