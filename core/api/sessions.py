"""Mini App sign-in: short-lived sessions and single-use sign-in links, stored only as SHA-256 in key_values so
every instance knows them, and swept as new ones are made."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete, select

from core.models import KeyValue, User
from core.platform.clock import utcnow
from core.platform.db import Database

SESSION_TTL = timedelta(hours=1)
LINK_TTL = timedelta(minutes=10)
SESSION_PREFIX = "miniapp:session:"
LINK_PREFIX = "miniapp:link:"
TOKEN_MAX = 128


def _key(prefix: str, token: str) -> str:
    return prefix + hashlib.sha256(token.encode()).hexdigest()


async def _issue(db: Database, prefix: str, user_id: int, ttl: timedelta) -> str:
    token = secrets.token_urlsafe(32)
    now = utcnow()
    async with db.transaction() as session:
        await session.execute(
            delete(KeyValue).where(KeyValue.key.like(f"{prefix}%"), KeyValue.expires_at < now)
            .execution_options(synchronize_session=False)
        )
        session.add(KeyValue(key=_key(prefix, token), value={"user_id": user_id}, expires_at=now + ttl))
    return token


async def create_session(db: Database, user_id: int) -> str:
    """A new session token for the account (valid SESSION_TTL)."""
    return await _issue(db, SESSION_PREFIX, user_id, SESSION_TTL)


async def create_signin_link(db: Database, user_id: int) -> str:
    """A single-use sign-in token (valid LINK_TTL), for a link sent in the chat."""
    return await _issue(db, LINK_PREFIX, user_id, LINK_TTL)


async def _active(db: Database, user_id: int) -> bool:
    async with db.read() as session:
        status = await session.scalar(select(User.status).where(User.id == user_id))
    return status == "active"


async def session_owner(db: Database, token: str) -> int | None:
    """The account of a live session of an active account, else None."""
    if not token or len(token) > TOKEN_MAX:
        return None
    async with db.read() as session:
        value = await session.scalar(
            select(KeyValue.value).where(KeyValue.key == _key(SESSION_PREFIX, token), KeyValue.expires_at > utcnow())
        )
        if not isinstance(value, dict) or not isinstance(value.get("user_id"), int):
            return None
        status = await session.scalar(select(User.status).where(User.id == value["user_id"]))
    return value["user_id"] if status == "active" else None


async def redeem_signin_link(db: Database, token: str) -> int | None:
    """The link's account, once: the row is deleted by the one redemption that wins, expired or not."""
    if not token or len(token) > TOKEN_MAX:
        return None
    key, now = _key(LINK_PREFIX, token), utcnow()
    async with db.transaction() as session:
        value = await session.scalar(select(KeyValue.value).where(KeyValue.key == key, KeyValue.expires_at > now))
        deleted = await session.execute(
            delete(KeyValue).where(KeyValue.key == key).execution_options(synchronize_session=False)
        )
    if deleted.rowcount != 1 or not isinstance(value, dict) or not isinstance(value.get("user_id"), int):  # type: ignore[attr-defined]
        return None
    return value["user_id"] if await _active(db, value["user_id"]) else None
