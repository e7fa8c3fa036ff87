"""Single-use offers behind purchase screens: a Confirm or Buy works once, never after Cancel, never after expiry."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete

from core.models import KeyValue
from core.money.ledger import InsufficientFunds
from core.money.limits import LimitReached
from core.platform.clock import utcnow
from core.platform.db import Database

# Refusals that come before anything is bought and that the user can put right (top up, wait for the limit): the
# offer stays valid, so the same Confirm works once they have.
_KEEPS_OFFER = (InsufficientFunds, LimitReached)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,32}")


class OfferGone(Exception):
    """The offer was cancelled, already used or has expired, or it was never made to this account."""


def _key(kind: str, user_id: int, token: str) -> str:
    # The account is part of the key: a token pressed by anyone else finds nothing, and cannot use it up.
    return f"{kind}:{user_id}:{token}"


async def make(db: Database, kind: str, user_id: int, data: dict[str, Any], ttl: timedelta) -> str:
    """A new offer of `kind` to `user_id`, valid for `ttl`; returns the token its buttons carry."""
    token = secrets.token_urlsafe(9)
    now = utcnow()
    async with db.transaction() as session:
        # This account's expired offers go here rather than in a job: one row per price screen shown.
        await session.execute(
            delete(KeyValue).where(KeyValue.key.like(f"{kind}:{user_id}:%"), KeyValue.expires_at < now)
        )
        session.add(KeyValue(key=_key(kind, user_id, token), value=dict(data), expires_at=now + ttl))
    return token


async def peek(db: Database, kind: str, user_id: int, token: str) -> dict[str, Any] | None:
    """The offer's data while it is open; None when it is gone."""
    if not _TOKEN.fullmatch(token):
        return None
    async with db.read() as session:
        row = await session.get(KeyValue, _key(kind, user_id, token))
        if row is None or (row.expires_at is not None and row.expires_at < utcnow()):
            return None
        return dict(row.value)


async def _take(db: Database, key: str) -> tuple[dict[str, Any], datetime | None] | None:
    """Remove the offer; its data when this call removed it while still open, else None."""
    async with db.transaction() as session:
        row = await session.get(KeyValue, key)
        if row is None:
            return None
        value, expires_at = dict(row.value), row.expires_at
        # Of two presses at once only one deletes the row (the other waits on its lock, then finds none).
        deleted = await session.execute(delete(KeyValue).where(KeyValue.key == key))
        if deleted.rowcount != 1 or (expires_at is not None and expires_at < utcnow()):
            return None
        return value, expires_at


async def withdraw(db: Database, kind: str, user_id: int, token: str) -> bool:
    """Cancel: the offer's buttons do nothing from now on. False when it was already used, cancelled or expired."""
    if not _TOKEN.fullmatch(token):
        return False
    return await _take(db, _key(kind, user_id, token)) is not None


@asynccontextmanager
async def redeem(db: Database, kind: str, user_id: int, token: str) -> AsyncIterator[dict[str, Any]]:
    """Use the offer up for one purchase, made inside the block; raises OfferGone when it is not open.

    When the purchase is refused for want of money or by a limit, nothing was bought and the offer is open again."""
    if not _TOKEN.fullmatch(token):
        raise OfferGone()
    key = _key(kind, user_id, token)
    taken = await _take(db, key)
    if taken is None:
        raise OfferGone()
    data, expires_at = taken
    try:
        yield data
    except _KEEPS_OFFER:
        async with db.transaction() as session:
            session.add(KeyValue(key=key, value=data, expires_at=expires_at))
        raise
