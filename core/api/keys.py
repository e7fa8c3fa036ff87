"""API keys: made with 256 random bits behind a visible prefix, stored only as SHA-256, shown once, revoked."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ApiKey, User
from core.platform.clock import utcnow
from core.platform.db import Database

# What every key starts with, so a leaked one is recognised (secret scanners, logs) as CumApp's.
KEY_PREFIX = "cum_"
# Characters of the key kept in clear to tell keys apart in lists: "cum_" and 8 of the random part.
SHOWN_CHARS = 12
MAX_KEYS_PER_ACCOUNT = 10
NAME_MAX = 64
# last_used_at is written at most this often per key, so a busy key does not write on every request.
TOUCH_EVERY_SECONDS = 60.0


class KeyLimitReached(Exception):
    """An account already has MAX_KEYS_PER_ACCOUNT live keys."""


@dataclass(frozen=True)
class NewKey:
    """A key just made: `secret` is the whole key, shown this once and never stored."""

    id: int
    name: str
    prefix: str
    secret: str


@dataclass(frozen=True)
class KeyOwner:
    """Who a presented key belongs to."""

    key_id: int
    user_id: int
    prefix: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate() -> str:
    """`cum_` and 43 URL-safe characters: 256 bits from the operating system's CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create(session: AsyncSession, user_id: int, name: str | None = None) -> NewKey:
    """A new key for the account, in the caller's transaction."""
    live = await session.scalars(
        select(ApiKey.id).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
    )
    if len(live.all()) >= MAX_KEYS_PER_ACCOUNT:
        raise KeyLimitReached()
    secret = generate()
    clean = " ".join((name or "").split())[:NAME_MAX] or f"key {utcnow():%Y-%m-%d %H:%M}"
    key = ApiKey(user_id=user_id, name=clean, prefix=secret[:SHOWN_CHARS], key_hash=hash_key(secret),
                 created_at=utcnow())
    session.add(key)
    await session.flush()
    return NewKey(id=key.id, name=key.name, prefix=key.prefix, secret=secret)


async def list_keys(session: AsyncSession, user_id: int, *, include_revoked: bool = False) -> list[ApiKey]:
    query = select(ApiKey).where(ApiKey.user_id == user_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list((await session.scalars(query.order_by(ApiKey.id))).all())


async def revoke(session: AsyncSession, key_id: int, *, user_id: int | None = None) -> ApiKey | None:
    """Revoke a live key (of `user_id` when given; an admin passes None); None when there is no such live key."""
    query = update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    return await session.scalar(
        query.values(revoked_at=utcnow()).returning(ApiKey),
        execution_options={"populate_existing": True, "synchronize_session": False},
    )


class KeyChecker:
    """Turns an `Authorization: Bearer` value into its owner: one indexed read per request, by hash."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._touched: dict[int, float] = {}

    async def owner(self, secret: str) -> KeyOwner | None:
        """The live key's owner, or None for a missing, unknown or revoked key or a banned account."""
        if not secret.startswith(KEY_PREFIX) or len(secret) > 128:
            return None
        digest = hash_key(secret)
        async with self.db.read() as session:
            row = (
                await session.execute(
                    select(ApiKey.id, ApiKey.user_id, ApiKey.prefix, ApiKey.revoked_at, User.status)
                    .join(User, User.id == ApiKey.user_id)
                    .where(ApiKey.key_hash == digest)
                )
            ).first()
        if row is None or row.revoked_at is not None or row.status != "active":
            return None
        await self._touch(row.id)
        return KeyOwner(key_id=row.id, user_id=row.user_id, prefix=row.prefix)

    async def _touch(self, key_id: int) -> None:
        now = time.monotonic()
        if now - self._touched.get(key_id, -TOUCH_EVERY_SECONDS) < TOUCH_EVERY_SECONDS:
            return
        self._touched[key_id] = now
        async with self.db.transaction() as session:
            await session.execute(
                update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow())
                .execution_options(synchronize_session=False)
            )
