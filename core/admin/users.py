"""Admins acting on accounts: bans that can never lock the admins themselves out."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ChatIdentity, User
from core.money import accounts
from core.money.accounts import AccountError
from core.platform.settings import Settings


async def active_admin_ids(session: AsyncSession, settings: Settings) -> set[int]:
    """Accounts that are admins (by role or by ADMIN_*_IDS) and not banned."""
    by_role = set((await session.scalars(
        select(User.id).where(User.role == "admin", User.status == "active")
    )).all())
    rows = (await session.execute(
        select(ChatIdentity.user_id, ChatIdentity.platform, ChatIdentity.platform_user_id)
        .join(User, User.id == ChatIdentity.user_id)
        .where(User.status == "active", ChatIdentity.platform.in_(("telegram", "discord", "console")))
    )).all()
    listed = {row.user_id for row in rows if accounts.is_listed_admin(settings, row.platform, row.platform_user_id)}
    return by_role | listed


async def check_ban(session: AsyncSession, settings: Settings, actor: User, target: User) -> None:
    """Refuse a ban that would lock someone out of /unban: one's own account, or the last admin standing."""
    if target.id == actor.id:
        raise AccountError("ban_self")
    if await accounts.is_admin(session, settings, target):
        if not (await active_admin_ids(session, settings)) - {target.id}:
            raise AccountError("ban_last_admin", user=target.id)


async def set_status(
    session: AsyncSession, settings: Settings, actor: User, target: User, status: str, reason: str | None = None
) -> bool:
    """Ban or unban (audited); False when the account was already in that state."""
    if status == "banned" and target.status != "banned":
        await check_ban(session, settings, actor, target)
    return await accounts.set_status(session, actor, target, status, reason)
