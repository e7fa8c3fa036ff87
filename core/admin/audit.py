"""The audit log: every admin action with who, what, when and the values before and after."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import AuditLog
from core.platform.clock import utcnow


async def record(
    session: AsyncSession,
    *,
    actor_user_id: int | None,
    action: str,
    target_user_id: int | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str | None = None,
) -> AuditLog:
    entry = AuditLog(
        actor_user_id=actor_user_id, action=action, target_user_id=target_user_id, before=before or {},
        after=after or {}, reason=reason, created_at=utcnow(),
    )
    session.add(entry)
    await session.flush()
    return entry


async def page(
    session: AsyncSession, *, target_user_id: int | None = None, offset: int = 0, limit: int = 10
) -> list[AuditLog]:
    query = select(AuditLog).order_by(AuditLog.id.desc()).offset(offset).limit(limit)
    if target_user_id is not None:
        query = query.where(AuditLog.target_user_id == target_user_id)
    return list((await session.scalars(query)).all())
