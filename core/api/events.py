"""Integrator events: written in the transaction of the change that caused them, POSTed to the account's webhook
endpoints through the outbox, and published to live WebSockets once that transaction commits.

Event types: verification.code, verification.closed, message.received, message.status. An event is the JSON object
`{"id", "type", "created_at", "data"}`, the same everywhere it goes (receivers deduplicate by `id`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Integer, String, bindparam, delete, event, func, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from core.models import ApiEvent, ApiIdempotency, ApiWebhookEndpoint
from core.platform import bulk, outbox
from core.platform.clock import utcnow
from core.platform.crypto import keyring_of
from core.platform.db import Database, dialect_insert

log = logging.getLogger(__name__)

EVENT_TYPES = ("verification.code", "verification.closed", "message.received", "message.status")
NOTIFY_CHANNEL = "cumapp_api_events"
KEEP_FOR = timedelta(hours=24)
DELIVERY_PLATFORM = "webhook"
DELIVERY_KIND = "api_event"

_INFO_PENDING = "cumapp_api_events_pending"


@dataclass(frozen=True)
class Event:
    """One event as integrators see it."""

    id: int
    user_id: int
    type: str
    created_at: datetime
    data: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "type": self.type, "created_at": rfc3339(self.created_at), "data": self.data}

    def body(self) -> str:
        return json.dumps(self.as_json(), separators=(",", ":"), ensure_ascii=False)


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


Publisher = Callable[[list[Event]], None]
# In-process listeners (the WebSocket hub), per engine: called after a commit that wrote events.
_publishers: list[tuple[Publisher, Engine | None]] = []


def register_publisher(publisher: Publisher, *, engine: Engine | None = None) -> Callable[[], None]:
    """Call `publisher` with the events of every commit (through `engine`, when given); returns the undo."""
    entry = (publisher, engine)
    _publishers.append(entry)

    def unregister() -> None:
        if entry in _publishers:
            _publishers.remove(entry)

    return unregister


def _after_commit(session: Session) -> None:
    if _INFO_PENDING not in session.info or session.get_nested_transaction() is not None:
        return
    events: list[Event] = session.info.pop(_INFO_PENDING, [])
    if not events:
        return
    bind = session.get_bind()
    engine = getattr(bind, "engine", None)
    for publisher, only in list(_publishers):
        if only is not None and only is not engine:
            continue
        try:
            publisher(events)
        except Exception:
            log.exception("publishing API events failed")


def _after_rollback(session: Session) -> None:
    if _INFO_PENDING in session.info and session.get_nested_transaction() is None:
        session.info.pop(_INFO_PENDING, None)


# Once for every session (see core.platform.outbox.wake): listening per session cost more than the check.
event.listen(Session, "after_commit", _after_commit)
event.listen(Session, "after_rollback", _after_rollback)


@functools.cache
def _live_endpoints() -> Any:
    return select(ApiWebhookEndpoint.id).where(
        ApiWebhookEndpoint.user_id == bindparam("b_user", type_=Integer), ApiWebhookEndpoint.deleted_at.is_(None)
    )


@functools.cache
def _record_statement(dialect: str, dedupe: bool) -> Any:
    """`record`'s INSERT, built once (it runs for every inbound SMS). On PostgreSQL one round trip: the insert, the
    NOTIFY that other instances' WebSockets hear (sent by PostgreSQL only if we commit) and the account's webhook
    endpoints."""
    table = ApiEvent.__table__
    statement = dialect_insert(dialect)(table).values(
        user_id=bindparam("b_user", type_=Integer), type=bindparam("b_type", type_=table.c.type.type),
        data=bindparam("b_data", type_=table.c.data.type), dedupe_key=bindparam("b_key", type_=table.c.dedupe_key.type),
        created_at=bindparam("b_at", type_=table.c.created_at.type),
    )
    if dedupe:
        statement = statement.on_conflict_do_nothing(index_elements=["dedupe_key"])
    if dialect != "postgresql":
        return statement.returning(table.c.id)
    inserted = statement.returning(table.c.id).cte("inserted")
    return select(
        inserted.c.id,
        func.pg_notify(NOTIFY_CHANNEL, func.concat(bindparam("b_tag", type_=String), inserted.c.id)),
        func.array(_live_endpoints().scalar_subquery()),
    )


async def record(
    session: AsyncSession, user_id: int | None, type_: str, data: dict[str, Any], *, dedupe_key: str | None = None
) -> Event | None:
    """Write one event in the caller's transaction, queue its webhook deliveries, and publish it after the commit.

    None when there is no account to tell or `dedupe_key` was used already (the same change seen twice).
    """
    if user_id is None:
        return None
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    now = utcnow()
    values = {"b_user": user_id, "b_type": type_, "b_data": data, "b_key": dedupe_key, "b_at": now}
    dialect = session.bind.dialect.name
    if dialect == "postgresql":
        row = (
            await session.execute(_record_statement(dialect, dedupe_key is not None), {**values, "b_tag": f"{user_id}:"})
        ).first()
        if row is None:
            return None
        event_id, endpoints = row[0], list(row[2] or [])
    else:
        event_id = await session.scalar(_record_statement(dialect, dedupe_key is not None), values)
        if event_id is None:
            return None
        endpoints = list((await session.scalars(_live_endpoints(), {"b_user": user_id})).all())
    recorded = Event(id=int(event_id), user_id=user_id, type=type_, created_at=now, data=data)
    await _deliver_and_publish(session, recorded, endpoints)
    return recorded


_ENDPOINTS_OF = (
    select(ApiWebhookEndpoint.id, ApiWebhookEndpoint.user_id)
    .where(ApiWebhookEndpoint.user_id.in_(bindparam("b_users", expanding=True)), ApiWebhookEndpoint.deleted_at.is_(None))
    .order_by(ApiWebhookEndpoint.id)
)


@functools.cache
def _record_many_insert(dialect: str) -> Any:
    table = ApiEvent.__table__
    return (
        dialect_insert(dialect)(table)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(table.c.id, table.c.user_id, table.c.dedupe_key)
    )


_RECORD_MANY_COLUMNS = ("user_id", "type", "data", "dedupe_key", "created_at")


@functools.cache
def _record_many_unnest(dialect: Dialect) -> bulk.UnnestInsert:
    """record_many's one statement on PostgreSQL: the rows, a NOTIFY each, the live endpoints of each row's account
    (those `_live_endpoints` finds)."""
    return bulk.unnest_insert(
        ApiEvent.__table__, _RECORD_MANY_COLUMNS, ("dedupe_key",), ("id", "user_id", "dedupe_key"), dialect,
        suffix=(
            "SELECT a.id, a.user_id, a.dedupe_key, ARRAY(SELECT e.id FROM api_webhook_endpoints e "
            "WHERE e.user_id = a.user_id AND e.deleted_at IS NULL ORDER BY e.id), "
            f"pg_notify(${len(_RECORD_MANY_COLUMNS) + 1}, a.user_id || ':' || a.id) FROM added a"
        ),
    )


async def _record_many_sqlite(
    session: AsyncSession, rows: list[dict[str, Any]], endpoints: dict[int, list[int]]
) -> dict[str, int]:
    """record_many's statements on SQLite: the ids written by dedupe key; the endpoints of their accounts added
    to `endpoints`."""
    connection = await session.connection()
    # An executemany that SQLAlchemy sends as one multi-row INSERT whatever the batch's size (insertmanyvalues),
    # from one cached statement: a .values([...]) of N rows would be compiled anew for every N.
    added = (await connection.execute(_record_many_insert(session.bind.dialect.name), rows)).all()
    if added:
        for endpoint_id, user_id in (
            await connection.execute(_ENDPOINTS_OF, {"b_users": sorted({row.user_id for row in added})})
        ).all():
            endpoints.setdefault(user_id, []).append(endpoint_id)
    return {row.dedupe_key: int(row.id) for row in added}


def _check_types(events: Sequence[tuple[int, str, dict[str, Any], str]]) -> None:
    for _user_id, type_, _data, _key in events:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}")


async def record_many(
    session: AsyncSession, events: Sequence[tuple[int, str, dict[str, Any], str]]
) -> list[Event]:
    """`record` for many events at once, each `(user_id, type, data, dedupe_key)`, however many there are: on
    PostgreSQL one statement writes them, sends their NOTIFYs and finds the accounts' webhook endpoints; on SQLite
    one writes them and one finds the endpoints.

    Returns those written; an event whose dedupe key was used already is left out, as `record` does."""
    if not events:
        return []
    _check_types(events)
    now = utcnow()
    rows = [
        {"user_id": user_id, "type": type_, "data": data, "dedupe_key": key, "created_at": now}
        for user_id, type_, data, key in events
    ]
    endpoints: dict[int, list[int]] = {}
    driver = await bulk.driver_connection(session)
    if driver is not None:
        # One round trip: the rows, their NOTIFYs (sent by PostgreSQL only if we commit, as record's) and the
        # accounts' webhook endpoints.
        ids = {}
        for event_id, user_id, key, endpoint_ids, _notified in await _record_many_unnest(session.bind.dialect).fetch(
                driver, rows, NOTIFY_CHANNEL):
            ids[key] = int(event_id)
            endpoints[user_id] = list(endpoint_ids)
    else:
        ids = await _record_many_sqlite(session, rows, endpoints)
    written = [
        Event(id=ids[key], user_id=user_id, type=type_, created_at=now, data=data)
        for user_id, type_, data, key in events if key in ids
    ]
    for recorded in sorted(written, key=lambda recorded: recorded.id):
        await _deliver_and_publish(session, recorded, endpoints.get(recorded.user_id, []))
    return written


def prepared(
    events: Sequence[tuple[int, str, dict[str, Any], str]], ids: Sequence[int], now: datetime
) -> list[Event]:
    """`record_many`'s events with ids taken from the table's sequence beforehand (`ids`, one each, in order), for
    a statement that writes them with what they depend on (the inbound group commit on PostgreSQL)."""
    _check_types(events)
    return [Event(id=event_id, user_id=user_id, type=type_, created_at=now, data=data)
            for (user_id, type_, data, _key), event_id in zip(events, ids, strict=True)]


def event_row(recorded: Event, dedupe_key: str) -> dict[str, Any]:
    """The ApiEvent columns of a prepared event."""
    return {"id": recorded.id, "user_id": recorded.user_id, "type": recorded.type, "data": recorded.data,
            "dedupe_key": dedupe_key, "created_at": recorded.created_at}


def delivery_rows(session: AsyncSession, recorded: Event, endpoints: list[int]) -> list[dict[str, Any]]:
    """The outbox rows (for outbox.enqueue_many) that POST the event to each of the account's endpoints."""
    if not endpoints:
        return []
    payload = outbox.OutgoingMessage(text=recorded.body()).to_payload()
    now, origin = utcnow(), outbox.origin_of(session)
    return [
        outbox.delivery_row(
            user_id=recorded.user_id, platform=DELIVERY_PLATFORM, chat_id=str(endpoint_id), kind=DELIVERY_KIND,
            payload=payload, dedupe_key=f"evt:{recorded.id}:{endpoint_id}", priority=0, source_received_at=None,
            now=now, origin=origin,
        )
        for endpoint_id in endpoints
    ]


async def _deliver_and_publish(session: AsyncSession, recorded: Event, endpoints: list[int]) -> None:
    """Queue the event's webhook deliveries in the caller's transaction, and publish it after the commit."""
    rows = delivery_rows(session, recorded, endpoints)
    if rows:
        await outbox.enqueue_many(session, rows)
    publish_after_commit(session, [recorded])


def publish_after_commit(session: AsyncSession, events: list[Event]) -> None:
    """Hand `events` to the in-process publishers (the WebSocket hub) once the session's transaction commits."""
    session.sync_session.info.setdefault(_INFO_PENDING, []).extend(events)


def from_row(row: ApiEvent) -> Event:
    return Event(id=row.id, user_id=row.user_id, type=row.type, created_at=row.created_at, data=row.data)


async def after(db: Database, user_id: int, after_id: int, *, limit: int = 1000) -> list[Event]:
    """The account's stored events that came after `after_id`, oldest first."""
    async with db.read() as session:
        rows = await session.scalars(
            select(ApiEvent).where(ApiEvent.user_id == user_id, ApiEvent.id > after_id)
            .order_by(ApiEvent.id).limit(limit)
        )
        return [from_row(row) for row in rows.all()]


async def by_ids(db: Database, ids: list[int]) -> list[Event]:
    async with db.read() as session:
        rows = await session.scalars(select(ApiEvent).where(ApiEvent.id.in_(ids)).order_by(ApiEvent.id))
        return [from_row(row) for row in rows.all()]


async def prune(db: Database, now: datetime | None = None) -> int:
    """Forget events and idempotency answers older than a day; returns how many events went."""
    cutoff = (now or utcnow()) - KEEP_FOR
    async with db.transaction() as session:
        result = await session.execute(
            delete(ApiEvent).where(ApiEvent.created_at < cutoff).execution_options(synchronize_session=False)
        )
        await session.execute(
            delete(ApiIdempotency).where(ApiIdempotency.created_at < cutoff)
            .execution_options(synchronize_session=False)
        )
    return int(result.rowcount or 0)


def start_jobs(scheduler: Any, db: Database) -> None:
    """Prune once an hour, claimed through the database like every periodic job."""

    async def prune_job() -> None:
        await prune(db)

    scheduler.add_periodic("api-events-prune", prune_job, 3600.0)


# --- what the domains call, in the transaction of their change ---------------------------------------------------

CLOSED_STATES = ("completed", "cancelled", "expired", "failed")


def verification_data(verification: Any) -> dict[str, Any]:
    return {
        "verification_id": str(verification.id), "service": verification.service,
        "number": verification.phone_number, "state": verification.state,
    }


async def verification_changed(session: AsyncSession, verification: Any, values: dict[str, Any]) -> None:
    """After a verification row moved (records.transition): its code arrived, or it reached an end state."""
    if values.get("code") and verification.code:
        data = {**verification_data(verification), "code": verification.code, "text": verification.sms_text}
        # The code is encrypted at rest: the key names it by its keyed fingerprint, never in plain.
        code_id = keyring_of(session.get_bind().dialect).fingerprint(verification.code)[:32]
        await record(session, verification.user_id, "verification.code", data,
                     dedupe_key=f"vf:{verification.id}:code:{code_id}")
    if values.get("state") in CLOSED_STATES:
        await record(session, verification.user_id, "verification.closed", verification_data(verification),
                     dedupe_key=f"vf:{verification.id}:closed")


async def message_received(
    session: AsyncSession, user_id: int | None, *, message_id: int, conversation_id: int | None, from_e164: str,
    to_e164: str, text_: str, received_at: datetime,
) -> None:
    """An inbound SMS relayed to its owner."""
    if user_id is None:
        return
    _user, type_, data, key = message_received_event(
        user_id, message_id=message_id, conversation_id=conversation_id, from_e164=from_e164, to_e164=to_e164,
        text_=text_, received_at=received_at,
    )
    await record(session, user_id, type_, data, dedupe_key=key)


def message_received_event(
    user_id: int, *, message_id: int, conversation_id: int | None, from_e164: str, to_e164: str, text_: str,
    received_at: datetime,
) -> tuple[int, str, dict[str, Any], str]:
    """The message.received event of an inbound SMS, for `record_many` (the inbound group commit)."""
    return user_id, "message.received", {
        "message_id": str(message_id), "conversation_id": None if conversation_id is None else str(conversation_id),
        "from": from_e164, "to": to_e164, "text": text_, "received_at": rfc3339(received_at),
    }, f"msg:{message_id}:received"


async def message_status(session: AsyncSession, message: Any) -> None:
    """An outbound SMS moved up its status ladder (sent, delivered, failed…)."""
    await record(session, message.user_id, "message.status", {
        "message_id": str(message.id), "state": message.status, "to": message.to_e164, "from": message.from_e164,
        "error_code": message.error_code,
    }, dedupe_key=f"msg:{message.id}:status:{message.status}")
