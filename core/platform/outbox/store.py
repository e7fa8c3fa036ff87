"""The outbox table's SQL: enqueueing in the caller's transaction, claiming, recording outcomes, taking over
the claims of dead instances, requeueing parked deliveries, health."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Integer,
    bindparam,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from core.models import ChatIdentity, OutboxDelivery
from core.platform import bulk, driver_sql
from core.platform.clock import utcnow
from core.platform.db import Database, dialect_insert
from core.platform.outbox.claim_plan import CLAIM_PLAN_SETTINGS
from core.platform.outbox.liveness import InstanceLiveness
from core.platform.outbox.messages import OutgoingMessage
from core.platform.outbox.wake import (
    SENT_HOOKS,
    ExpressClaim,
    arrange_wake,
    express_claim,
    hand_over,
    origin_of,
)

log = logging.getLogger(__name__)

# A delivery in one of these states still holds its place in its chat's queue.
ACTIVE_STATES = ("pending", "sending")

_LAST_ERROR_MAX = 512
_DEDUPE_KEY_MAX = 160
# Seconds a delivery waits for the instance that enqueued it before any instance may send it. Each instance sends
# what it accepted, at its share of the bot's flood budget (core.platform.pacing.InstanceShare): behind a load
# balancer the shares meet the load evenly, where a race for every row would pile bursts on one share. A busy or
# stuck instance's deliveries go to the others after this long; a dead one's at once (release_orphans).
STEAL_AFTER = 1.0


# --- Enqueueing -------------------------------------------------------------------------------------------------


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
    claim: ExpressClaim | None = None,
) -> OutboxDelivery | None:
    """Add a pending delivery in the caller's transaction; None when `dedupe_key` was already used.

    With `claim` (from wake.express_claim, for a chat the caller found idle) it is inserted claimed by this
    process's dispatcher, which sends it as soon as the transaction commits."""
    if dedupe_key is not None and len(dedupe_key) > _DEDUPE_KEY_MAX:
        raise ValueError(f"dedupe_key longer than {_DEDUPE_KEY_MAX} characters")
    now = utcnow()
    columns: dict[str, Any] = {
        "user_id": user_id, "platform": platform, "chat_id": str(chat_id), "kind": kind,
        "payload": message.to_payload(), "dedupe_key": dedupe_key, "state": "pending", "priority": priority,
        "attempts": 0, "next_attempt_at": now, "source_received_at": source_received_at, "created_at": now,
        "origin": origin_of(session),
    }
    if claim is not None:
        columns.update(claim.columns())
    statement = (
        dialect_insert(session.bind.dialect.name)(OutboxDelivery)
        .values(**columns)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(OutboxDelivery)
    )
    delivery = await session.scalar(statement, execution_options={"populate_existing": True})
    if delivery is not None:
        if claim is not None:
            hand_over(session, [delivery])
        else:
            await arrange_wake(session)
    return delivery


@functools.cache
def _insert_many(dialect: str) -> Any:
    # Built once: enqueue_many runs for every inbound SMS or batch of them.
    table = OutboxDelivery.__table__
    insert = dialect_insert(dialect)
    return insert(table).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(table.c.id, table.c.dedupe_key)


async def enqueue_many(session: AsyncSession, rows: list[dict[str, Any]]) -> int:
    """Many deliveries in the caller's transaction with one statement: `rows` hold OutboxDelivery's columns, as a
    group commit builds them, each with its `dedupe_key`; a row with an express claim's columns (see `enqueue`)
    is sent by this process's dispatcher at commit. A row whose `dedupe_key` was used already is left out;
    returns how many were added."""
    if not rows:
        return 0
    return len(await _insert_rows(session, rows))


async def _insert_rows(session: AsyncSession, rows: list[dict[str, Any]]) -> dict[str, int]:
    """enqueue_many's work: the id of each row added, by dedupe key; those claimed as enqueued are handed over."""
    driver = await bulk.driver_connection(session)
    if driver is not None:
        statement = bulk.unnest_insert(
            OutboxDelivery.__table__, bulk.columns_of(rows), ("dedupe_key",), ("id", "dedupe_key"), session.bind.dialect
        )
        added = {row[1]: row[0] for row in await statement.fetch(driver, rows)}
    else:
        # An executemany that SQLAlchemy sends as one multi-row INSERT (insertmanyvalues) from one statement.
        connection = await session.connection()
        added = {row.dedupe_key: row.id for row in await connection.execute(_insert_many(session.bind.dialect.name), rows)}
    await enqueued(session, rows, added)
    return added


async def enqueued(session: AsyncSession, rows: list[dict[str, Any]], added: dict[str, int]) -> None:
    """After `rows` were inserted, `added` the id of each one added by its dedupe key (by enqueue_many, or by a
    caller's own statement): the express-claimed ones are handed to the dispatcher at commit, the others wake it."""
    claimed = [
        OutboxDelivery(id=added[row["dedupe_key"]], **row)
        for row in rows if row.get("state") == "sending" and row["dedupe_key"] in added
    ]
    hand_over(session, claimed)
    if len(claimed) < len(added):
        await arrange_wake(session)


def delivery_row(
    *, user_id: int, platform: str, chat_id: str, kind: str, payload: dict[str, Any], dedupe_key: str,
    priority: int, source_received_at: datetime | None, now: datetime, origin: int | None,
) -> dict[str, Any]:
    """A pending delivery's columns for enqueue_many; an express claim's columns may be laid over them."""
    return {
        "user_id": user_id, "platform": platform, "chat_id": str(chat_id), "kind": kind, "payload": payload,
        "dedupe_key": dedupe_key, "state": "pending", "priority": priority, "attempts": 0, "next_attempt_at": now,
        "source_received_at": source_received_at, "created_at": now, "origin": origin,
        "claimed_by": None, "claimed_until": None,  # every row of an executemany has the same keys
    }


@functools.cache
def _chats_of_user(express: bool) -> Any:
    return (
        select(ChatIdentity.platform, ChatIdentity.chat_id, chat_busy() if express else literal(True).label("busy"))
        .where(ChatIdentity.user_id == bindparam("b_user", type_=Integer), ChatIdentity.chat_id.is_not(None),
               ChatIdentity.unreachable_at.is_(None))
        .order_by(ChatIdentity.id)
    )


async def enqueue_for_user(
    session: AsyncSession,
    user_id: int,
    *,
    kind: str,
    message: OutgoingMessage,
    dedupe_key: str | None = None,
    priority: int = 0,
    source_received_at: datetime | None = None,
    express: bool = False,
) -> list[OutboxDelivery]:
    """One delivery per reachable chat of the user; the dedupe key gets the platform appended per copy.

    `express`, for what a person waits for (a relayed SMS, a code): a copy to a chat with nothing waiting or being
    sent is claimed for this process's dispatcher as it is inserted, and sent at commit (wake.express_claim)."""
    connection = await session.connection()
    found = (await connection.execute(_chats_of_user(express), {"b_user": user_id})).all()
    if dedupe_key is None:  # each its own INSERT, since one statement tells its rows apart by their keys
        deliveries: list[OutboxDelivery] = []
        for platform, chat_id, busy in found:
            delivery = await enqueue(
                session, platform=platform, chat_id=chat_id, kind=kind, message=message, user_id=user_id,
                priority=priority, source_received_at=source_received_at,
                claim=None if busy else express_claim(session, platform),
            )
            if delivery is not None:
                deliveries.append(delivery)
        return deliveries
    now = utcnow()
    origin = origin_of(session)
    payload = message.to_payload()
    rows: list[dict[str, Any]] = []
    seen_platforms: set[str] = set()
    for platform, chat_id, busy in found:
        # A second chat on the same platform (two linked Telegram accounts) needs its own key too.
        suffix = platform if platform not in seen_platforms else f"{platform}:{chat_id}"
        seen_platforms.add(platform)
        key = f"{dedupe_key}:{suffix}"
        if len(key) > _DEDUPE_KEY_MAX:
            raise ValueError(f"dedupe_key longer than {_DEDUPE_KEY_MAX} characters")
        row = delivery_row(
            user_id=user_id, platform=platform, chat_id=chat_id, kind=kind, payload=payload, dedupe_key=key,
            priority=priority, source_received_at=source_received_at, now=now, origin=origin,
        )
        if not busy and (claim := express_claim(session, platform)):
            row.update(claim.columns())
        rows.append(row)
    if not rows:
        return []
    added = await _insert_rows(session, rows)
    return [OutboxDelivery(id=added[row["dedupe_key"]], **row) for row in rows if row["dedupe_key"] in added]


def chat_busy() -> Any:
    """Whether a ChatIdentity's chat has a delivery waiting or being sent: the claim's rule for a chat's order."""
    return (
        exists()
        .where(OutboxDelivery.platform == ChatIdentity.platform, OutboxDelivery.chat_id == ChatIdentity.chat_id,
               # Inline, so that ix_outbox_deliveries_active_chat answers it, not the chat's whole history.
               OutboxDelivery.state.in_([literal_column(f"'{state}'") for state in ACTIVE_STATES]))
        .correlate(ChatIdentity)
        .label("busy")
    )


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
    # For a retry: when the failures began (kept from the first one of the run), so the retry window is a day.
    failing_since: datetime | None = None


def clip(value: str | None, limit: int) -> str | None:
    return value if value is None or len(value) <= limit else value[: limit - 1] + "…"


async def prepare_claim_plan(session: AsyncSession) -> None:
    """The planner settings of core/platform/outbox/claim_plan.py, for this transaction (a claim must be its last
    query): the claim walks the pending rows in order and stops at its limit, rather than reading the backlog."""
    if session.bind.dialect.name == "postgresql":
        await session.execute(text(f"SELECT {CLAIM_PLAN_SETTINGS}"))


def claim_statement(
    now: datetime, limit: int, platforms: Iterable[str], *, lock_rows: bool, me: int | None = None
) -> Any:
    """The SELECT that picks due deliveries whose chat has nothing earlier still waiting or being sent; with `me`
    (our liveness key, on PostgreSQL), only ours, nobody's, or those due for longer than STEAL_AFTER."""
    statement = _claim_select(tuple(sorted(platforms)), lock_rows, me is not None)
    return statement.params(_claim_values(now, limit, me))


def _claim_values(now: datetime, limit: int, me: int | None) -> dict[str, Any]:
    return {"b_now": now, "b_limit": limit, "b_me": me, "b_steal": now - timedelta(seconds=STEAL_AFTER)}


@functools.lru_cache(maxsize=16)
def _claim_select(platforms: tuple[str, ...], lock_rows: bool, mine_first: bool) -> Any:
    # Built once: the dispatcher claims after every commit that enqueued, and building this statement (the
    # aliased anti-join above all) cost more CPU than running it.
    earlier = aliased(OutboxDelivery, name="earlier")
    # Both databases take the candidates in order from ix_outbox_deliveries_pending_order until the limit and
    # probe ix_outbox_deliveries_active_chat for each (see claim_plan.py): a claim reads what it claims, not the
    # sent history nor the whole backlog.
    earlier_waiting = select(literal_column("1")).where(
        earlier.platform == OutboxDelivery.platform,
        earlier.chat_id == OutboxDelivery.chat_id,
        earlier.id < OutboxDelivery.id,
        # Inline, as the partial indexes' own conditions: a generic plan could not use them with bound states.
        earlier.state.in_([literal_column(f"'{state}'") for state in ACTIVE_STATES]),
    )
    if lock_rows:  # PostgreSQL: a subquery per candidate, never a join (claim_plan.py)
        earlier_waiting = earlier_waiting.offset(literal_column("0"))
    now = bindparam("b_now", type_=OutboxDelivery.__table__.c.next_attempt_at.type)
    conditions = [
        OutboxDelivery.state == literal_column("'pending'"),
        OutboxDelivery.next_attempt_at <= now,
        OutboxDelivery.platform.in_(platforms),
        ~earlier_waiting.exists(),
    ]
    if mine_first:
        conditions.append(
            or_(
                OutboxDelivery.origin.is_(None),
                OutboxDelivery.origin == bindparam("b_me", type_=Integer),
                OutboxDelivery.next_attempt_at <= bindparam("b_steal", type_=OutboxDelivery.__table__.c.next_attempt_at.type),
            )
        )
    statement = (
        select(OutboxDelivery.id)
        .where(*conditions)
        .order_by(OutboxDelivery.priority.desc(), OutboxDelivery.id)
        .limit(bindparam("b_limit", type_=Integer))
    )
    if lock_rows:
        # SQLite needs no row locks: Database.transaction() lets one writer in at a time.
        statement = statement.with_for_update(skip_locked=True, of=OutboxDelivery)
    return statement


@functools.lru_cache(maxsize=16)
def _claim_update(platforms: tuple[str, ...], mine_first: bool) -> Any:
    """PostgreSQL's claim in one statement: the ids picked and locked by `_claim_select` (an InitPlan, run once,
    so the planner settings of prepare_claim_plan cannot turn the match into a scan of the table), then the
    update that makes them ours."""
    picked = _claim_select(platforms, True, mine_first).scalar_subquery()
    return (
        update(OutboxDelivery)
        .where(OutboxDelivery.id == func.any(func.array(picked)))
        .values(
            state="sending",
            claimed_until=bindparam("b_until", type_=OutboxDelivery.__table__.c.claimed_until.type),
            claimed_by=bindparam("b_by", type_=Integer),
            attempts=OutboxDelivery.attempts + 1,
        )
        .returning(OutboxDelivery)
    )


async def claim(
    session: AsyncSession,
    platforms: Iterable[str],
    limit: int,
    *,
    claim_seconds: float,
    lock_rows: bool,
    claimed_by: int | None = None,
    planned: bool = False,
    mine_first: bool = False,
) -> list[OutboxDelivery]:
    """Claim due deliveries for the instance `claimed_by`; must be the last query of its transaction (it changes
    the planner's settings; `planned`: the caller did prepare_claim_plan's setting already). The claim lasts while
    that instance lives; `claim_seconds` only bounds a claim whose instance lives on but has stopped renewing it
    (hung). `mine_first`: leave other live instances' fresh deliveries to them (see STEAL_AFTER)."""
    now = utcnow()
    if not planned:
        await prepare_claim_plan(session)
    me = claimed_by if mine_first else None
    key = tuple(sorted(platforms))
    until = now + timedelta(seconds=claim_seconds)
    options = {"populate_existing": True, "synchronize_session": False}
    if lock_rows:
        claimed = (
            await session.scalars(
                _claim_update(key, me is not None),
                {**_claim_values(now, limit, me), "b_until": until, "b_by": claimed_by},
                execution_options=options,
            )
        ).all()
    else:
        ids = list(await session.scalars(_claim_select(key, False, me is not None), _claim_values(now, limit, me)))
        if not ids:
            return []
        claimed = (
            await session.scalars(
                update(OutboxDelivery)
                .where(OutboxDelivery.id.in_(ids), OutboxDelivery.state == "pending")
                .values(state="sending", claimed_until=until, claimed_by=claimed_by,
                        attempts=OutboxDelivery.attempts + 1)
                .returning(OutboxDelivery),
                execution_options=options,
            )
        ).all()
    return sorted(claimed, key=lambda delivery: (-delivery.priority, delivery.id))


# record's statements, built once: the dispatcher records the outcome of every send.


@functools.cache
def _record_check(lock_rows: bool) -> Any:
    # lock_rows is PostgreSQL's case: the ids as one array, and the statement run by asyncpg (driver_sql).
    check = (
        select(OutboxDelivery.id, OutboxDelivery.attempts, OutboxDelivery.state)
        .where(driver_sql.in_array(OutboxDelivery.id, "b_ids", lock_rows))
        .order_by(OutboxDelivery.id)
    )
    return check.with_for_update() if lock_rows else check


@functools.cache
def _record_update(state: str) -> Any:
    """The update of one outcome's state, with the parameters its rows of `record` carry (executemany)."""
    table = OutboxDelivery.__table__
    by_id = update(table).where(table.c.id == bindparam("b_id"))
    columns = {"sent": {"sent_at": "b_at", "platform_message_id": "b_message_id"},
               "pending": {"next_attempt_at": "b_next", "last_error": "b_error", "failing_since": "b_since"},
               "parked": {"last_error": "b_error"}}[state]
    return by_id.values(
        state=state, claimed_until=None, claimed_by=None,
        **{column: bindparam(name, type_=table.c[column].type) for column, name in columns.items()},
    )


async def record(
    session: AsyncSession, outcomes: list[Outcome], *, lock_rows: bool, instance_id: str
) -> list[Outcome]:
    """Write the outcomes whose claim is still ours, in a few statements however many there are.

    `attempts` only grows and every claim raises it, so a row whose attempts still equal the value our claim
    set was not claimed again since; it counts as ours even if recovery already put it back to pending.
    """
    if not outcomes:
        return []
    # Held to the commit with lock_rows, so no recovery or claim elsewhere slips between this check and the writes.
    check = _record_check(lock_rows)
    ids = sorted({outcome.delivery.id for outcome in outcomes})
    current = {row.id: (row.attempts, row.state) for row in await driver_sql.fetch(session, check, {"b_ids": ids})}
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

    sent = [
        {"b_id": o.delivery.id, "b_at": o.at, "b_message_id": o.platform_message_id}
        for o in applied if o.state == "sent"
    ]
    if sent:
        await driver_sql.execute_many(session, _record_update("sent"), sent)
        for kind, hook in SENT_HOOKS.items():
            delivered = [(o.delivery, o.at) for o in applied if o.state == "sent" and o.delivery.kind == kind]
            if delivered:
                await hook(session, delivered)
    retries = [
        {
            "b_id": o.delivery.id, "b_next": o.next_attempt_at or o.at, "b_error": clip(o.error, _LAST_ERROR_MAX),
            "b_since": o.failing_since,
        }
        for o in applied if o.state == "pending"
    ]
    if retries:
        await driver_sql.execute_many(session, _record_update("pending"), retries)
    parked = [
        {"b_id": o.delivery.id, "b_error": clip(o.error, _LAST_ERROR_MAX)} for o in applied if o.state == "parked"
    ]
    if parked:
        await driver_sql.execute_many(session, _record_update("parked"), parked)
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
    delivery.claimed_by = None
    if outcome.state == "pending":
        delivery.failing_since = outcome.failing_since
    if outcome.state == "sent":
        delivery.sent_at = outcome.at
        delivery.platform_message_id = outcome.platform_message_id
        return
    delivery.last_error = clip(outcome.error, _LAST_ERROR_MAX)
    if outcome.next_attempt_at is not None:
        delivery.next_attempt_at = outcome.next_attempt_at


# --- Claims whose instance is gone ------------------------------------------------------------------------------


async def release_orphans(
    db: Database, liveness: InstanceLiveness, instance_id: str, *, at_start: bool = False, expired: bool = True
) -> int:
    """Give back to pending the deliveries claimed by instances that are gone, and any claim that ran out.

    On PostgreSQL a claim belongs to a live instance: the claims of an instance whose liveness lock is free are
    taken over in the transaction that finds it free (see InstanceLiveness.dead_among). On SQLite there is one
    process, so at start every claim not made by this dispatcher is orphaned. Everywhere, a claim that was not
    renewed for `claim_seconds` (its instance lives on but is hung) is given back when `expired` is set, but never
    our own: we know whether our sends are still in flight. A row sent meanwhile is never touched: only `sending`
    rows move.
    """
    now = utcnow()
    me = liveness.key
    released = 0
    gone: set[int] = set()
    async with db.transaction() as session:
        if liveness.is_postgresql:
            keys = list(
                await session.scalars(
                    select(OutboxDelivery.claimed_by)
                    .where(OutboxDelivery.state == "sending", OutboxDelivery.claimed_by.is_not(None),
                           OutboxDelivery.claimed_by != me)
                    .distinct()
                )
            )
            gone = await liveness.dead_among(session, [int(key) for key in keys]) if keys else set()
            if gone:
                result = await session.execute(
                    update(OutboxDelivery)
                    .where(OutboxDelivery.state == "sending", OutboxDelivery.claimed_by.in_(sorted(gone)))
                    .values(state="pending", claimed_until=None, claimed_by=None, origin=None,
                            last_error="taken over: the instance that claimed it is gone")
                    .execution_options(synchronize_session=False)
                )
                released += int(result.rowcount or 0)
        if expired or at_start:
            # SQLite at start: every claim but ours is a dead process's. Otherwise only claims that ran out.
            orphaned = true() if at_start and not liveness.is_postgresql else OutboxDelivery.claimed_until < now
            not_mine = or_(OutboxDelivery.claimed_by.is_(None), OutboxDelivery.claimed_by != me)
            result = await session.execute(
                update(OutboxDelivery)
                .where(OutboxDelivery.state == "sending", orphaned, not_mine)
                .values(state="pending", claimed_until=None, claimed_by=None, origin=None,
                        last_error="claim orphaned: dispatcher gone or hung")
                .execution_options(synchronize_session=False)
            )
            released += int(result.rowcount or 0)
    liveness.forget(gone)
    if released:
        log.warning(
            "outbox %s: %d deliveries claimed by instances that are gone (%s) back to pending", instance_id,
            released, ", ".join(str(key) for key in sorted(gone)) or "claims ran out",
        )
    return released


async def renew_claims(db: Database, me: int, claim_seconds: float) -> int:
    """Push back the expiry of our own claims still being sent, so only a hung instance's claims run out."""
    now = utcnow()
    async with db.transaction() as session:
        result = await session.execute(
            update(OutboxDelivery)
            .where(
                OutboxDelivery.state == "sending", OutboxDelivery.claimed_by == me,
                OutboxDelivery.claimed_until < now + timedelta(seconds=claim_seconds / 2),
            )
            .values(claimed_until=now + timedelta(seconds=claim_seconds))
            .execution_options(synchronize_session=False)
        )
    return int(result.rowcount or 0)


# --- Parked deliveries -------------------------------------------------------------------------------------------


def _retryable_parked() -> Any:
    """Parked deliveries whose chat can still be reached (a blocked bot stays blocked until the user writes)."""
    unreachable = exists().where(
        ChatIdentity.platform == OutboxDelivery.platform,
        ChatIdentity.chat_id == OutboxDelivery.chat_id,
        ChatIdentity.unreachable_at.is_not(None),
    )
    return (OutboxDelivery.state == "parked", ~unreachable)


async def count_retryable_parked(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(OutboxDelivery).where(*_retryable_parked())) or 0)


async def requeue_parked(session: AsyncSession) -> int:
    """Put every retryable parked delivery back in its chat's queue, with a fresh retry window; returns how many.

    A second call finds nothing left to do (the rows are pending by then), so a double tap queues nothing twice.
    """
    now = utcnow()
    result = await session.execute(
        update(OutboxDelivery)
        .where(*_retryable_parked())
        .values(state="pending", next_attempt_at=now, failing_since=None, claimed_until=None, claimed_by=None,
                origin=origin_of(session))
        .execution_options(synchronize_session=False)
    )
    count = int(result.rowcount or 0)
    if count:
        await arrange_wake(session)
    return count
