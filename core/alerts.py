"""Alerts to admins in their chats, deduplicated and rate-limited per kind and key (one message per outage)."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import outbox
from core.clock import utcnow
from core.i18n import Html, escape
from core.models import AlertState, ChatIdentity, User
from core.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_QUIET = timedelta(minutes=30)


async def admin_identities(session: AsyncSession, settings: Settings) -> list[ChatIdentity]:
    """Chats of admins: listed in settings or with the admin role, reachable."""
    rows = (
        await session.execute(
            select(ChatIdentity, User.role)
            .join(User, User.id == ChatIdentity.user_id)
            .where(ChatIdentity.chat_id.is_not(None), ChatIdentity.unreachable_at.is_(None))
        )
    ).all()
    listed = {("telegram", str(i)) for i in settings.admin_telegram_ids} | {
        ("discord", str(i)) for i in settings.admin_discord_ids
    }
    return [
        identity for identity, role in rows
        if role == "admin" or (identity.platform, identity.platform_user_id) in listed
    ]


async def alert_admins(
    session: AsyncSession, settings: Settings, *, kind: str, key: str, text: str,
    quiet: timedelta = DEFAULT_QUIET,
) -> bool:
    """Queue `text` (HTML) to every admin unless the same kind and key was alerted within `quiet`.

    Returns True when the alert was queued; repeats inside the quiet period are counted, not sent."""
    now = utcnow()
    state = await session.get(AlertState, (kind, key), with_for_update=True)
    if state is not None and state.last_sent_at > now - quiet:
        state.suppressed += 1
        return False
    suppressed = state.suppressed if state is not None else 0
    if state is None:
        session.add(AlertState(kind=kind, key=key, last_sent_at=now, suppressed=0))
    else:
        state.last_sent_at, state.suppressed = now, 0
    body = Html(f"🚨 <b>{escape(kind)}</b>\n{text}")
    if suppressed:
        body = Html(f"{body}\n<i>(+{suppressed} similar since the last alert)</i>")
    log.warning("admin alert %s/%s", kind, key)
    for identity in await admin_identities(session, settings):
        await outbox.enqueue(
            session, platform=identity.platform, chat_id=identity.chat_id or "", kind="alert",
            message=outbox.OutgoingMessage(text=body), user_id=identity.user_id, priority=5,
            dedupe_key=f"alert:{kind}:{key}:{now.isoformat()}:{identity.id}",
        )
    return True
