"""A broadcast's state changes (start, pause, resume, cancel), each audited, and reading broadcasts back."""

from __future__ import annotations

from sqlalchemy import Integer, String, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.admin import audit
from core.broadcast.runner import kick
from core.broadcast.segments import Segment, population, reachable
from core.models import Broadcast, BroadcastRecipient, ChatIdentity, User
from core.platform.clock import utcnow
from core.platform.db import Database


async def start(
    db: Database,
    broadcast_id: int,
    *,
    actor_user_id: int | None = None,
    progress: tuple[str, str, str] | None = None,
) -> Broadcast | None:
    """Materialise the recipients and set the broadcast running; a second call (a double Confirm) changes nothing.

    `progress` is (platform, chat id, message id) of the card the runner keeps up to date."""
    now = utcnow()
    async with db.transaction() as session:
        broadcast = await session.get(Broadcast, broadcast_id, with_for_update=True)
        if broadcast is None:
            return None
        if broadcast.state != "draft":
            return broadcast
        segment = Segment.from_json(broadcast.segment)
        chosen = (
            population()
            .add_columns(
                literal(broadcast_id, Integer), ChatIdentity.id, literal("pending", String), literal(0, Integer)
            )
            .where(
                segment.condition(now), User.status == "active", User.announcements.is_(True), reachable(),
            )
        )
        await session.execute(
            insert(BroadcastRecipient).from_select(["broadcast_id", "identity_id", "state", "attempts"], chosen)
        )
        total = await session.scalar(
            select(func.count()).select_from(BroadcastRecipient).where(BroadcastRecipient.broadcast_id == broadcast_id)
        )
        broadcast.total = int(total or 0)
        broadcast.state = "running"
        broadcast.started_at = now
        if progress is not None:
            broadcast.progress_chat_id = f"{progress[0]}:{progress[1]}"[:64]
            broadcast.progress_message_id = str(progress[2])[:64]
        await audit.record(
            session, actor_user_id=actor_user_id or broadcast.created_by_user_id, action="broadcast",
            target_user_id=None, before={"state": "draft"},
            after={"broadcast": broadcast_id, "state": "running", "segment": broadcast.segment,
                   "recipients": broadcast.total, "paid": broadcast.paid},
        )
    kick(db)
    return broadcast


async def _change_state(
    db: Database, broadcast_id: int, actor_user_id: int | None, *, allowed: tuple[str, ...], to: str
) -> Broadcast | None:
    async with db.transaction() as session:
        broadcast = await session.get(Broadcast, broadcast_id, with_for_update=True)
        if broadcast is None or broadcast.state not in allowed:
            return None
        before = broadcast.state
        broadcast.state = to
        if to == "cancelled":
            broadcast.finished_at = utcnow()
            # Nobody is sending these any more; a runner holding claims marks its own as skipped when it stops.
            await session.execute(
                update(BroadcastRecipient)
                .where(BroadcastRecipient.broadcast_id == broadcast_id, BroadcastRecipient.state == "pending")
                .values(state="skipped", error="cancelled")
                .execution_options(synchronize_session=False)
            )
        if before != "draft":
            await audit.record(
                session, actor_user_id=actor_user_id, action=f"broadcast_{to}"[:32], target_user_id=None,
                before={"broadcast": broadcast_id, "state": before}, after={"broadcast": broadcast_id, "state": to},
            )
    kick(db)
    return broadcast


async def pause(db: Database, broadcast_id: int, *, actor_user_id: int | None = None) -> Broadcast | None:
    """Stop sending within a second (the runner checks four times a second); None when it was not running."""
    return await _change_state(db, broadcast_id, actor_user_id, allowed=("running",), to="paused")


async def resume(db: Database, broadcast_id: int, *, actor_user_id: int | None = None) -> Broadcast | None:
    return await _change_state(db, broadcast_id, actor_user_id, allowed=("paused",), to="running")


async def cancel(db: Database, broadcast_id: int, *, actor_user_id: int | None = None) -> Broadcast | None:
    """Drop a draft, or stop a running or paused broadcast for good; recipients not reached are `skipped`."""
    return await _change_state(db, broadcast_id, actor_user_id, allowed=("draft", "running", "paused"), to="cancelled")


async def get(session: AsyncSession, broadcast_id: int) -> Broadcast | None:
    return await session.get(Broadcast, broadcast_id, populate_existing=True)


async def recent(session: AsyncSession, limit: int = 5) -> list[Broadcast]:
    """Finished and cancelled broadcasts, newest first, with their figures."""
    return list(
        (
            await session.scalars(
                select(Broadcast)
                .where(Broadcast.state.in_(("finished", "cancelled")))
                .order_by(Broadcast.finished_at.desc(), Broadcast.id.desc())
                .limit(limit)
            )
        ).all()
    )


async def active(session: AsyncSession) -> list[Broadcast]:
    """Broadcasts running or paused right now."""
    return list(
        (
            await session.scalars(
                select(Broadcast).where(Broadcast.state.in_(("running", "paused"))).order_by(Broadcast.id)
            )
        ).all()
    )


async def recipient_states(session: AsyncSession, broadcast_id: int) -> dict[str, int]:
    """How many recipients are in each state (pending, sending, sent, failed, blocked, skipped)."""
    rows = (
        await session.execute(
            select(BroadcastRecipient.state, func.count())
            .where(BroadcastRecipient.broadcast_id == broadcast_id)
            .group_by(BroadcastRecipient.state)
        )
    ).all()
    return {str(state): int(count) for state, count in rows}
