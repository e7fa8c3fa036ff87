"""Telegram Mini App `initData`, checked exactly as Telegram documents it: the data-check string of every field but
`hash` (sorted `key=value` lines), HMAC-SHA256 with the key HMAC-SHA256("WebAppData", bot token), compared in
constant time, and `auth_date` at most 24 hours old."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

MAX_AGE = timedelta(hours=24)
# A client clock a little ahead of ours is not an attack; a date far in the future is.
FUTURE_SKEW = timedelta(minutes=5)
INIT_DATA_MAX = 4096


@dataclass(frozen=True)
class TelegramUser:
    """Who opened the Mini App, as Telegram signed it."""

    id: int
    username: str | None
    display_name: str | None
    language_code: str | None


def secret_key(bot_token: str) -> bytes:
    return hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()


def data_check_string(fields: dict[str, str]) -> str:
    return "\n".join(f"{key}={fields[key]}" for key in sorted(fields) if key != "hash")


def sign(fields: dict[str, str], bot_token: str) -> str:
    """The `hash` Telegram would put on these fields (tests and the sandbox make initData with it)."""
    return hmac.new(secret_key(bot_token), data_check_string(fields).encode(), hashlib.sha256).hexdigest()


def check(init_data: str, bot_token: str, *, now: datetime | None = None) -> TelegramUser | None:
    """The signed user, or None for anything forged, stale, repeated or malformed."""
    if not init_data or len(init_data) > INIT_DATA_MAX:
        return None
    try:
        pairs = parse_qsl(init_data, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return None
    fields = dict(pairs)
    if len(fields) != len(pairs):
        return None  # a field given twice: which one was signed is ambiguous
    given = fields.get("hash", "")
    if not hmac.compare_digest(sign(fields, bot_token).encode(), given.encode()):
        return None
    try:
        signed_at = datetime.fromtimestamp(int(fields.get("auth_date", "")), tz=UTC)
        user = json.loads(fields.get("user", ""))
        user_id = int(user["id"])
    except (ValueError, TypeError, KeyError, OverflowError, OSError):
        return None
    now = now or datetime.now(UTC)
    if not now - MAX_AGE <= signed_at <= now + FUTURE_SKEW:
        return None
    names = " ".join(str(user.get(part) or "") for part in ("first_name", "last_name")).strip()
    return TelegramUser(
        id=user_id, username=user.get("username") or None, display_name=names or None,
        language_code=user.get("language_code") or None,
    )
