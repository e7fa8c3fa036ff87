"""The outbox table's SQL: enqueueing in the caller's transaction, claiming, recording outcomes, recovery, health."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, exists, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from core.models import ChatIdentity, OutboxDelivery
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.outbox.messages import OutgoingMessage
from core.platform.outbox.wake import SENT_HOOKS, arrange_wake

log = logging.getLogger(__name__)

# A delivery in one of these states still holds its place in its chat's queue.
ACTIVE_STATES = ("pending", "sending")

_LAST_ERROR_MAX = 512
_DEDUPE_KEY_MAX = 160


# --- Enqueueing -------------------------------------------------------------------------------------------------


def _insert(session: AsyncSession) -> Any:
    """`INSERT … ON CONFLICT DO NOTHING` in the session's dialect; the dedupe key makes repeats harmless."""
    return postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert


async def enqueue(
    session: AsyncSession,
    *,
    platform: str,
    chat_id: str,
    kind: str,
    message: OutgoingMessage,
    user_id: int | None = None,
    dedupe_key: str | None = None,
    priority: int = 0,
    source_received_at: datetime | None = None,
) -> OutboxDelivery | None:
    """Add a pending delivery in the caller's transaction; None when `dedupe_key` was already used."""
    if dedupe_key is not None and len(dedupe_key) > _DEDUPE_KEY_MAX:
        raise ValueError(f"dedupe_key longer than {_DEDUPE_KEY_MAX} characters")
    now = utcnow()
    statement = (
        _insert(session)(OutboxDelivery)
        .values(
            user_id=user_id, platform=platform, chat_id=str(chat_id), kind=kind, payload=message.to_payload(),
            dedupe_key=dedupe_key, state="pending", priority=priority, attempts=0, next_attempt_at=now,
            source_received_at=source_received_at, created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(OutboxDelivery)
    )
    delivery = await session.scalar(statement, execution_options={"populate_existing": True})
    if delivery is not None:
        await arrange_wake(session)
    return delivery


async def enqueue_for_user(
    session: AsyncSession,
    user_id: int,
    *,
    kind: str,
    message: OutgoingMessage,
    dedupe_key: str | None = None,
    priority: int = 0,
    source_received_at: datetime | None = None,
) -> list[OutboxDelivery]:
    """One delivery per reachable chat of the user; the dedupe key gets the platform appended per copy."""
    identities = (
        await session.scalars(
            select(ChatIdentity)
            .where(
                ChatIdentity.user_id == user_id,
                ChatIdentity.chat_id.is_not(None),
                ChatIdentity.unreachable_at.is_(None),
            )
            .order_by(ChatIdentity.id)
        )
    ).all()
    deliveries: list[OutboxDelivery] = []
    seen_platforms: set[str] = set()
    for identity in identities:
        assert identity.chat_id is not None
        key = None
        if dedupe_key is not None:
            # A second chat on the same platform (two linked Telegram accounts) needs its own key too.
            suffix = identity.platform if identity.platform not in seen_platforms else (
                f"{identity.platform}:{identity.chat_id}"
            )
            key = f"{dedupe_key}:{suffix}"
        seen_platforms.add(identity.platform)
        delivery = await enqueue(
            session, platform=identity.platform, chat_id=identity.chat_id, kind=kind, message=message,
            user_id=user_id, dedupe_key=key, priority=priority, source_received_at=source_received_at,
        )
        if delivery is not None:
            deliveries.append(delivery)
    return deliveries


# --- Health -----------------------------------------------------------------------------------------------------


async def outbox_health(db: Database) -> dict[str, Any]:
    """Queue figures for health pages and gauges.

    `pending` counts every delivery not yet sent (waiting or being sent), `sending` the part of it claimed
    right now, `oldest_pending_seconds` the age of the oldest of them (0 when none), `parked` those given up.
    """
    async with db.read() as session:
        rows = (
            await session.execute(
                select(OutboxDelivery.state, func.count(), func.min(OutboxDelivery.created_at))
                .where(OutboxDelivery.state.in_((*ACTIVE_STATES, "parked")))
                .group_by(OutboxDelivery.state)
            )
        ).all()
    counts = {state: 0 for state in (*ACTIVE_STATES, "parked")}
    oldest: datetime | None = None
    for state, count, created in rows:
        counts[state] = int(count)
        if state in ACTIVE_STATES and created is not None:
            oldest = created if oldest is None else min(oldest, created)
    age = max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0
    return {
        "pending": counts["pending"] + counts["sending"],
        "sending": counts["sending"],
        "oldest_pending_seconds": age,
        "parked": counts["parked"],
    }


# --- Claims and outcomes ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one attempt led to, waiting to be written; `fence` is the attempts value our claim set."""

    delivery: OutboxDelivery
    fence: int
    state: str
    at: datetime
    platform_message_id: str | None = None
    next_attempt_at: datetime | None = None
    error: str | None = None
    blocked: bool = False
    alert: bool = False


def clip(value: str | None, limit: int) -> str | None:
    return value if value is None or len(value) <= limit else value[: limit - 1] + "…"


async def prepare_claim_plan(session: AsyncSession) -> None:
    """Keep PostgreSQL from checking a chat's earlier deliveries row by row, whatever its statistics say.

    With statistics that think pending rows are rare (a fresh table, or a burst after a quiet month) the planner
    picks a nested loop that walks each candidate chat's whole history, or rescans the table per candidate: a
    claim of 5,000 backlogged rows measured ~2 s that way. A hash anti-join over the active rows costs the same
    as the backlog, and is what the planner chooses anyway once its statistics are right. SET LOCAL ends with
    the transaction.
    """
    if session.bind.dialect.name == "postgresql":
        await session.execute(text("SET LOCAL enable_nestloop = off"))


def claim_statement(now: datetime, limit: int, platforms: Iterable[str], *, lock_rows: bool) -> Any:
    """The SELECT that picks due deliveries whose chat has nothing earlier still waiting or being sent."""
    earlier = aliased(OutboxDelivery, name="earlier")
    # SQLite answers this with a range of ix_outbox_deliveries_chat per candidate; PostgreSQL with a hash
    # anti-join over the active rows (see prepare_claim_plan), which does not grow with the sent history.
    earlier_waiting = exists().where(
        earlier.platform == OutboxDelivery.platform,
        earlier.chat_id == OutboxDelivery.chat_id,
        earlier.id < OutboxDelivery.id,
        earlier.state.in_(ACTIVE_STATES),
    )
    statement = (
        select(OutboxDelivery.id)
        .where(
            OutboxDelivery.state == "pending",
            OutboxDelivery.next_attempt_at <= now,
            OutboxDelivery.platform.in_(sorted(platforms)),
            ~earlier_waiting,
        )
        .order_by(OutboxDelivery.priority.desc(), OutboxDelivery.id)
        .limit(limit)
    )
    if lock_rows:
        # SQLite needs no row locks: Database.transaction() lets one writer in at a time.
        statement = statement.with_for_update(skip_locked=True, of=OutboxDelivery)
    return statement


async def claim(
    session: AsyncSession, platforms: Iterable[str], limit: int, *, claim_seconds: float, lock_rows: bool
) -> list[OutboxDelivery]:
    """Claim due deliveries; must be the last query of its transaction (it changes the planner's settings)."""
    now = utcnow()
    await prepare_claim_plan(session)
    ids = list(await session.scalars(claim_statement(now, limit, platforms, lock_rows=lock_rows)))
    if not ids:
        return []
    claimed = (
        await session.scalars(
            update(OutboxDelivery)
            .where(OutboxDelivery.id.in_(ids), OutboxDelivery.state == "pending")
            .values(
                state="sending",
                claimed_until=now + timedelta(seconds=claim_seconds),
                attempts=OutboxDelivery.attempts + 1,
            )
            .returning(OutboxDelivery),
            execution_options={"populate_existing": True, "synchronize_session": False},
        )
    ).all()
    return sorted(claimed, key=lambda delivery: (-delivery.priority, delivery.id))


async def record(
    session: AsyncSession, outcomes: list[Outcome], *, lock_rows: bool, instance_id: str
) -> list[Outcome]:
    """Write the outcomes whose claim is still ours, in a few statements however many there are.

    `attempts` only grows and every claim raises it, so a row whose attempts still equal the value our claim
    set was not claimed again since; it counts as ours even if recovery already put it back to pending.
    """
    if not outcomes:
        return []
    check = (
        select(OutboxDelivery.id, OutboxDelivery.attempts, OutboxDelivery.state)
        .where(OutboxDelivery.id.in_(sorted({outcome.delivery.id for outcome in outcomes})))
        .order_by(OutboxDelivery.id)
    )
    if lock_rows:
        # Held to the commit, so no recovery or claim elsewhere slips between this check and the writes.
        check = check.with_for_update()
    current = {row.id: (row.attempts, row.state) for row in await session.execute(check)}
    applied: list[Outcome] = []
    for outcome in outcomes:
        attempts, state = current.get(outcome.delivery.id, (None, None))
        if attempts != outcome.fence or state not in ACTIVE_STATES:
            log.warning(
                "outbox %s: delivery %s lost its claim before its outcome (%s) was recorded; it may be "
                "sent twice", instance_id, outcome.delivery.id, outcome.state,
                extra={"delivery_id": outcome.delivery.id},
            )
            continue
        applied.append(outcome)

    table = OutboxDelivery.__table__
    by_id = update(table).where(table.c.id == bindparam("b_id"))
    sent = [
        {"b_id": o.delivery.id, "b_at": o.at, "b_message_id": o.platform_message_id}
        for o in applied if o.state == "sent"
    ]
    if sent:
        await session.execute(
            by_id.values(
                state="sent", claimed_until=None, sent_at=bindparam("b_at", type_=table.c.sent_at.type),
                platform_message_id=bindparam("b_message_id", type_=table.c.platform_message_id.type),
            ),
            sent,
        )
        for kind, hook in SENT_HOOKS.items():
            delivered = [(o.delivery, o.at) for o in applied if o.state == "sent" and o.delivery.kind == kind]
            if delivered:
                await hook(session, delivered)
    retries = [
        {"b_id": o.delivery.id, "b_next": o.next_attempt_at or o.at, "b_error": clip(o.error, _LAST_ERROR_MAX)}
        for o in applied if o.state == "pending"
    ]
    if retries:
        await session.execute(
            by_id.values(
                state="pending", claimed_until=None,
                next_attempt_at=bindparam("b_next", type_=table.c.next_attempt_at.type),
                last_error=bindparam("b_error", type_=table.c.last_error.type),
            ),
            retries,
        )
    parked = [
        {"b_id": o.delivery.id, "b_error": clip(o.error, _LAST_ERROR_MAX)} for o in applied if o.state == "parked"
    ]
    if parked:
        await session.execute(
            by_id.values(
                state="parked", claimed_until=None, last_error=bindparam("b_error", type_=table.c.last_error.type)
            ),
            parked,
        )
    for outcome in applied:
        if outcome.blocked:
            await session.execute(
                update(ChatIdentity)
                .where(
                    ChatIdentity.platform == outcome.delivery.platform,
                    ChatIdentity.chat_id == outcome.delivery.chat_id,
                    ChatIdentity.unreachable_at.is_(None),
                )
                .values(unreachable_at=outcome.at)
                .execution_options(synchronize_session=False)
            )
    return applied


def mirror(outcome: Outcome) -> None:
    """Bring the delivery object in line with what `record` wrote for it."""
    delivery = outcome.delivery
    delivery.state = outcome.state
    delivery.claimed_until = None
    if outcome.state == "sent":
        delivery.sent_at = outcome.at
        delivery.platform_message_id = outcome.platform_message_id
        return
    delivery.last_error = clip(outcome.error, _LAST_ERROR_MAX)
    if outcome.next_attempt_at is not None:
        delivery.next_attempt_at = outcome.next_attempt_at


async def recover(db: Database, instance_id: str) -> int:
    """Give back deliveries whose claim expired: their dispatcher died or hung mid-send."""
    now = utcnow()
    async with db.transaction() as session:
        result = await session.execute(
            update(OutboxDelivery)
            .where(OutboxDelivery.state == "sending", OutboxDelivery.claimed_until < now)
            .values(state="pending", claimed_until=None, last_error="claim expired: dispatcher gone")
            .execution_options(synchronize_session=False)
        )
    recovered = int(result.rowcount or 0)
    if recovered:
        log.warning("outbox %s: %d deliveries with expired claims back to pending", instance_id, recovered)
    return recovered
