"""The runner's reads and writes of a broadcast's recipients, fenced by its lease and each claim's `attempts`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.broadcast.job import INTERRUPTED, Job, Outcome, Recipient
from core.models import Broadcast, BroadcastRecipient, ChatIdentity, User
from core.platform.clock import utcnow
from core.platform.db import Database

log = logging.getLogger(__name__)


class RecipientStore:
    """One runner instance's view of the recipients table: it claims, records and releases only under its lease."""

    def __init__(self, db: Database, instance_id: str, lease_seconds: float, platforms: Collection[str]) -> None:
        self.db = db
        self.instance_id = instance_id
        self.lease_seconds = lease_seconds
        self.platforms = platforms  # those this instance has a sender for

    async def prepare(self, broadcast_id: int) -> tuple[Broadcast, str]:
        """Settle what a previous holder left; the broadcast (detached) and its creator's locale."""
        async with self.db.transaction() as session:
            interrupted = list(
                await session.scalars(
                    update(BroadcastRecipient)
                    .where(BroadcastRecipient.broadcast_id == broadcast_id, BroadcastRecipient.state == "sending")
                    .values(state="failed", error=INTERRUPTED)
                    .returning(BroadcastRecipient.identity_id)
                    .execution_options(synchronize_session=False)
                )
            )
            if interrupted:
                log.warning(
                    "broadcast %s: %d recipients were being sent when their runner stopped; marked failed, not "
                    "resent", broadcast_id, len(interrupted),
                )
                await session.execute(
                    update(Broadcast)
                    .where(Broadcast.id == broadcast_id)
                    .values(failed=Broadcast.failed + len(interrupted))
                    .execution_options(synchronize_session=False)
                )
            without_sender = select(ChatIdentity.id).where(ChatIdentity.platform.not_in(sorted(self.platforms)))
            skipped = (
                await session.execute(
                    update(BroadcastRecipient)
                    .where(
                        BroadcastRecipient.broadcast_id == broadcast_id,
                        BroadcastRecipient.state == "pending",
                        BroadcastRecipient.identity_id.in_(without_sender),
                    )
                    .values(state="skipped", error="no front end for this platform")
                    .execution_options(synchronize_session=False)
                )
            ).rowcount
            if skipped:
                log.warning("broadcast %s: %d recipients on platforms without a front end skipped", broadcast_id,
                            skipped)
            broadcast = await session.get(Broadcast, broadcast_id, populate_existing=True)
            assert broadcast is not None
            creator = await session.get(User, broadcast.created_by_user_id)
            locale = creator.locale if creator is not None else "en"
            session.expunge(broadcast)
        return broadcast, locale

    async def pending_platforms(self, broadcast_id: int) -> list[str]:
        async with self.db.read() as session:
            rows = await session.scalars(
                select(ChatIdentity.platform)
                .join(BroadcastRecipient, BroadcastRecipient.identity_id == ChatIdentity.id)
                .where(BroadcastRecipient.broadcast_id == broadcast_id, BroadcastRecipient.state == "pending")
                .distinct()
            )
            return [platform for platform in rows if platform in self.platforms]

    async def claim(self, job: Job, platform: str, limit: int, after: int = 0) -> list[Recipient] | None:
        """Mark the next `limit` pending recipients after identity `after` `sending`; None when our lease is gone.

        `after` is the lane's keyset cursor: the primary key's range scan starts there instead of walking past
        every recipient already sent, which would make a 50,000-chat broadcast quadratic."""
        now = utcnow()
        async with self.db.transaction() as session:
            holder = await session.execute(
                select(Broadcast.state, Broadcast.lease_owner, Broadcast.lease_until)
                .where(Broadcast.id == job.broadcast_id)
                .with_for_update()
            )
            row = holder.first()
            if row is None or row.lease_owner != self.instance_id or row.lease_until is None or row.lease_until < now:
                return None
            if row.state != "running":
                job.stop(row.state)
                return []
            next_ids = (
                select(BroadcastRecipient.identity_id)
                .join(ChatIdentity, ChatIdentity.id == BroadcastRecipient.identity_id)
                .where(
                    BroadcastRecipient.broadcast_id == job.broadcast_id,
                    BroadcastRecipient.identity_id > after,
                    BroadcastRecipient.state == "pending",
                    ChatIdentity.platform == platform,
                )
                .order_by(BroadcastRecipient.identity_id)
                .limit(limit)
            )
            if session.bind.dialect.name == "postgresql":
                next_ids = next_ids.with_for_update(skip_locked=True, of=BroadcastRecipient)
                # asyncpg prepares statements, and after five runs PostgreSQL may switch to a generic plan that
                # ignores the broadcast id and the cursor (a hash join over every chat identity: 50-150 ms per
                # claim once a table grew faster than its statistics). Plan each claim for its own values.
                await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
            ids = list(await session.scalars(next_ids))
            if not ids:
                return []
            claimed = (
                await session.execute(
                    update(BroadcastRecipient)
                    .where(
                        BroadcastRecipient.broadcast_id == job.broadcast_id,
                        BroadcastRecipient.identity_id.in_(ids),
                        BroadcastRecipient.state == "pending",
                    )
                    .values(state="sending", attempts=BroadcastRecipient.attempts + 1)
                    .returning(BroadcastRecipient.identity_id, BroadcastRecipient.attempts)
                    .execution_options(synchronize_session=False)
                )
            ).all()
            attempts = {identity_id: count for identity_id, count in claimed}
            chats = (
                await session.execute(
                    select(ChatIdentity.id, ChatIdentity.chat_id).where(ChatIdentity.id.in_(list(attempts)))
                )
            ).all()
        found = {identity_id: chat_id for identity_id, chat_id in chats}
        return [
            Recipient(identity_id, platform, str(found.get(identity_id) or ""), attempts[identity_id])
            for identity_id in sorted(attempts)
        ]

    async def commit(
        self, broadcast_id: int, outcomes: list[Outcome], now: datetime, *, renew: bool
    ) -> Row[Any] | None:
        """Record outcomes and add them to the figures, renew the lease (or just check it is still ours), and
        read the state and figures back; None when another instance holds the lease now."""
        async with self.db.transaction() as session:
            counts = await record_outcomes(session, outcomes, broadcast_id, now)
            if any(counts.values()):
                await session.execute(
                    update(Broadcast)
                    .where(Broadcast.id == broadcast_id)
                    .values(
                        sent=Broadcast.sent + counts["sent"], failed=Broadcast.failed + counts["failed"],
                        blocked=Broadcast.blocked + counts["blocked"],
                    )
                    .execution_options(synchronize_session=False)
                )
            statement = update(Broadcast).where(
                Broadcast.id == broadcast_id, Broadcast.lease_owner == self.instance_id
            )
            if renew:
                statement = statement.values(lease_until=now + timedelta(seconds=self.lease_seconds))
            else:
                statement = statement.values(lease_owner=self.instance_id)
            return (
                await session.execute(
                    statement.returning(
                        Broadcast.state, Broadcast.total, Broadcast.sent, Broadcast.failed, Broadcast.blocked
                    ).execution_options(synchronize_session=False)
                )
            ).first()

    async def release(
        self, broadcast_id: int, unsent: list[Recipient], reason: str
    ) -> tuple[str, Broadcast | None]:
        """Give back the claims never sent, drop the lease (marking the broadcast finished when it is), and read
        it back (detached); the reason, which becomes "shutdown" when it was not ours to finish after all."""
        release_to = "skipped" if reason == "cancelled" else "pending"
        now = utcnow()
        async with self.db.transaction() as session:
            for (attempts,), ids in _group(unsent, lambda r: (r.attempts,)).items():
                for chunk in _chunks(ids, 500):
                    await session.execute(
                        update(BroadcastRecipient)
                        .where(
                            BroadcastRecipient.broadcast_id == broadcast_id,
                            BroadcastRecipient.identity_id.in_(chunk),
                            BroadcastRecipient.state == "sending",
                            BroadcastRecipient.attempts == attempts,
                        )
                        .values(
                            state=release_to, attempts=BroadcastRecipient.attempts - 1,
                            error="cancelled" if reason == "cancelled" else None,
                        )
                        .execution_options(synchronize_session=False)
                    )
            if reason == "cancelled":
                await session.execute(
                    update(BroadcastRecipient)
                    .where(BroadcastRecipient.broadcast_id == broadcast_id, BroadcastRecipient.state == "pending")
                    .values(state="skipped", error="cancelled")
                    .execution_options(synchronize_session=False)
                )
            values: dict[str, Any] = {"lease_owner": None, "lease_until": None}
            mine = [Broadcast.id == broadcast_id, Broadcast.lease_owner == self.instance_id]
            if reason == "finished":
                finished = await session.scalar(
                    update(Broadcast)
                    .where(*mine, Broadcast.state == "running")
                    .values(state="finished", finished_at=now, **values)
                    .returning(Broadcast.id)
                    .execution_options(synchronize_session=False)
                )
                if finished is None:
                    reason = "shutdown"
            if reason != "finished" and reason != "lost":
                await session.execute(
                    update(Broadcast).where(*mine).values(**values).execution_options(synchronize_session=False)
                )
            broadcast = await session.get(Broadcast, broadcast_id, populate_existing=True)
            if broadcast is not None:
                session.expunge(broadcast)
        return reason, broadcast


async def record_outcomes(
    session: AsyncSession, outcomes: list[Outcome], broadcast_id: int, now: datetime
) -> dict[str, int]:
    """Write each outcome onto its recipient if the claim is still the one it answers; counts of those applied."""
    counts = {"sent": 0, "failed": 0, "blocked": 0}
    groups: dict[tuple[str, str | None, int], list[int]] = {}
    for outcome in outcomes:
        key = (outcome.state, outcome.error, outcome.recipient.attempts)
        groups.setdefault(key, []).append(outcome.recipient.identity_id)
    blocked_ids: list[int] = []
    for (state, error, attempts), identity_ids in groups.items():
        values: dict[str, Any] = {"state": state, "error": error}
        if state == "sent":
            values["sent_at"] = now
        for chunk in _chunks(identity_ids, 500):
            applied = list(
                await session.scalars(
                    update(BroadcastRecipient)
                    .where(
                        BroadcastRecipient.broadcast_id == broadcast_id,
                        BroadcastRecipient.identity_id.in_(chunk),
                        BroadcastRecipient.state == "sending",
                        BroadcastRecipient.attempts == attempts,
                    )
                    .values(**values)
                    .returning(BroadcastRecipient.identity_id)
                    .execution_options(synchronize_session=False)
                )
            )
            if len(applied) < len(chunk):
                log.warning(
                    "broadcast %s: %d outcomes (%s) arrived after their claim was settled elsewhere",
                    broadcast_id, len(chunk) - len(applied), state,
                )
            if state in counts:
                counts[state] += len(applied)
            if state == "blocked":
                blocked_ids += applied
    if blocked_ids:
        # Skipped by the next broadcast's segment until they write to us again (accounts.get_or_create).
        await session.execute(
            update(ChatIdentity)
            .where(ChatIdentity.id.in_(blocked_ids), ChatIdentity.unreachable_at.is_(None))
            .values(unreachable_at=now)
            .execution_options(synchronize_session=False)
        )
    return counts


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for index in range(0, len(items), size):
        yield items[index : index + size]


def _group(recipients: Iterable[Recipient], key: Callable[[Recipient], tuple[Any, ...]]) -> dict[tuple[Any, ...], list[int]]:
    groups: dict[tuple[Any, ...], list[int]] = {}
    for recipient in recipients:
        groups.setdefault(key(recipient), []).append(recipient.identity_id)
    return groups
