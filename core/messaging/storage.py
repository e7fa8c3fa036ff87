"""Database helpers the messaging parts share: dialect-aware INSERT, short-lived key-value notes, advisory locks,
and the thread between two numbers created on first contact."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Conversation, KeyValue
from core.platform.clock import utcnow
from core.platform.db import dialect_insert

# Key prefixes of notes that simply expire; "smsparts" notes are swept by the inbound side instead.
EXPIRING_PREFIXES = ("numoffer", "numquote", "smsref", "smsstatus")


def short_key(prefix: str, *parts: str) -> str:
    """A KeyValue key within its 160 characters, whatever the provider ids look like."""
    raw = ":".join(parts)
    key = f"{prefix}:{raw}"
    return key if len(key) <= 160 else f"{prefix}:#{hashlib.sha256(raw.encode()).hexdigest()}"


async def serialise(session: AsyncSession, key: str) -> None:
    """Take a transaction-scoped lock on `key` (PostgreSQL; SQLite already has a single writer)."""
    if session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


async def kv_put(session: AsyncSession, key: str, value: dict[str, Any], expires_at: datetime | None) -> None:
    statement = dialect_insert(session.bind.dialect.name)(KeyValue).values(key=key, value=value, expires_at=expires_at)
    await session.execute(
        statement.on_conflict_do_update(index_elements=["key"], set_={"value": value, "expires_at": expires_at})
    )


async def kv_get(session: AsyncSession, key: str) -> dict[str, Any] | None:
    row = (await session.execute(select(KeyValue.value, KeyValue.expires_at).where(KeyValue.key == key))).first()
    if row is None or (row.expires_at is not None and row.expires_at < utcnow()):
        return None
    return dict(row.value)


async def kv_delete_expired(session: AsyncSession, now: datetime) -> None:
    """Expired offers, quotes and status notes."""
    await session.execute(
        delete(KeyValue).where(
            KeyValue.expires_at < now,
            or_(*(KeyValue.key.like(f"{prefix}:%") for prefix in EXPIRING_PREFIXES)),
        )
    )


async def conversation_between(
    session: AsyncSession, user_id: int, number_id: int, remote_e164: str
) -> Conversation:
    """The thread between one own number and one outside number, created on first contact."""
    query = select(Conversation).where(
        Conversation.phone_number_id == number_id, Conversation.remote_e164 == remote_e164
    )
    conversation = await session.scalar(query)
    if conversation is None:
        now = utcnow()
        await session.execute(
            dialect_insert(session.bind.dialect.name)(Conversation)
            .values(user_id=user_id, phone_number_id=number_id, remote_e164=remote_e164, unread_count=0,
                    opted_out=False, blocked=False, last_message_at=now, created_at=now)
            .on_conflict_do_nothing(index_elements=["phone_number_id", "remote_e164"])
        )
        conversation = await session.scalar(query)
        assert conversation is not None
    return conversation
