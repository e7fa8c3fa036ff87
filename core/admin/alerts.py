"""Alerts to admins in their chats, deduplicated and rate-limited per kind and key (one message per outage).

Two limits apply, both kept in `alert_state`:
* per (kind, key): after an alert, the same kind and key stays quiet for `quiet` (30 minutes); repeats are
  counted and the next alert says how many there were;
* per kind: at most `KIND_BURST` alerts of one kind in `KIND_WINDOW`, whatever the key, so an outage that touches
  a thousand chats (a thousand keys) still produces a handful of messages. The kind's row uses the key
  `KIND_ROW`, with `last_sent_at` as the start of the current window and `suppressed` as the alerts sent in it.

Rows are created with INSERT … ON CONFLICT DO NOTHING and then locked, so two transactions raising the same new
alert at once neither fail (an IntegrityError would abort the caller's whole transaction) nor both send.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import AlertState, ChatIdentity, User
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import dialect_insert
from core.platform.i18n import Html, escape
from core.platform.phone import mask_numbers
from core.platform.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_QUIET = timedelta(minutes=30)
KIND_WINDOW = timedelta(minutes=10)
KIND_BURST = 3
KIND_ROW = "*"
_NEVER = datetime(2000, 1, 1, tzinfo=UTC)


async def admin_identities(session: AsyncSession, settings: Settings) -> list[ChatIdentity]:
    """Reachable chats of admins: the admin role, or listed in ADMIN_TELEGRAM_IDS / ADMIN_DISCORD_IDS."""
    listed = []
    if settings.admin_telegram_ids:
        listed.append(and_(ChatIdentity.platform == "telegram",
                           ChatIdentity.platform_user_id.in_([str(i) for i in settings.admin_telegram_ids])))
    if settings.admin_discord_ids:
        listed.append(and_(ChatIdentity.platform == "discord",
                           ChatIdentity.platform_user_id.in_([str(i) for i in settings.admin_discord_ids])))
    # Filtered in SQL: with 50,000 users, loading every identity per alert would be the outage's second problem.
    return list(
        (
            await session.scalars(
                select(ChatIdentity)
                .join(User, User.id == ChatIdentity.user_id)
                .where(
                    ChatIdentity.chat_id.is_not(None),
                    ChatIdentity.unreachable_at.is_(None),
                    or_(User.role == "admin", *listed),
                )
                .order_by(ChatIdentity.id)
            )
        ).all()
    )


async def _locked_state(session: AsyncSession, kind: str, key: str) -> AlertState:
    """The (kind, key) row, created if missing, locked until the caller's transaction ends."""
    await session.execute(
        dialect_insert(session.bind.dialect.name)(AlertState)
        .values(kind=kind, key=key, last_sent_at=_NEVER, suppressed=0)
        .on_conflict_do_nothing(index_elements=["kind", "key"])
    )
    state = await session.scalar(
        select(AlertState)
        .where(AlertState.kind == kind, AlertState.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert state is not None
    return state


async def alert_admins(
    session: AsyncSession, settings: Settings, *, kind: str, key: str, text: str,
    quiet: timedelta = DEFAULT_QUIET,
) -> bool:
    """Queue `text` (HTML) to every admin unless the same kind and key was alerted within `quiet`, or the kind
    already sent `KIND_BURST` alerts in the last `KIND_WINDOW`.

    Runs in the caller's transaction, so the alert is sent only if what caused it commits. Returns True when
    the alert was queued; held-back repeats are counted and mentioned by the next alert of that kind and key."""
    kind, key = kind[:32], (key or "-")[:128]
    now = utcnow()
    state = await _locked_state(session, kind, key)
    if state.last_sent_at > now - quiet:
        state.suppressed += 1
        return False
    window = await _locked_state(session, kind, KIND_ROW)
    if window.last_sent_at <= now - KIND_WINDOW:
        window.last_sent_at, window.suppressed = now, 0
    if window.suppressed >= KIND_BURST:
        state.suppressed += 1
        log.warning("admin alert %s/%s held back: %d alerts of this kind already in this window", kind,
                    mask_numbers(key), window.suppressed)
        return False
    window.suppressed += 1
    suppressed = state.suppressed
    state.last_sent_at, state.suppressed = now, 0
    body = Html(f"🚨 <b>{escape(kind)}</b>\n{text}")
    if suppressed:
        body = Html(f"{body}\n<i>(+{suppressed} similar since the last alert)</i>")
    log.warning("admin alert %s/%s", kind, mask_numbers(key))  # keys may be phone numbers
    digest = hashlib.sha1(f"{kind}\0{key}".encode()).hexdigest()[:16]
    for identity in await admin_identities(session, settings):
        await outbox.enqueue(
            session, platform=identity.platform, chat_id=identity.chat_id or "", kind="alert",
            message=outbox.OutgoingMessage(text=body), user_id=identity.user_id, priority=5,
            dedupe_key=f"alert:{digest}:{now.isoformat()}:{identity.id}",
        )
    return True
