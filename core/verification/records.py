"""Verification rows: reading them, moving them between states exactly once, and queueing their status edits.

Every state change goes through `transition`, a conditional UPDATE (`WHERE state IN (...)`), so webhooks, polling,
the sweeper and button presses may race and repeat freely: one of them moves the row, the rest change nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Integer, bindparam, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.api import events as api_events
from core.models import User, Verification, WebhookEvent
from core.money import ledger
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import Database, dialect_insert
from core.verification.cards import status_message
from core.verification.errors import NotYours, UnknownVerification

STATUS_PRIORITY = 5


@functools.cache
def _transition_statement(columns: tuple[str, ...]) -> Any:
    """`transition`'s UPDATE for one set of changed columns, built once: a code's path runs it on every SMS."""
    table = Verification.__table__
    return (
        update(Verification)
        .where(Verification.id == bindparam("b_id", type_=Integer),
               Verification.state.in_(bindparam("b_from", expanding=True)))
        .values({name: bindparam(f"b_{name}", type_=table.c[name].type) for name in ("updated_at", *columns)})
        .returning(Verification)
        .execution_options(populate_existing=True, synchronize_session=False)
    )


async def transition(
    session: AsyncSession, verification_id: int, from_states: tuple[str, ...], **values: Any
) -> Verification | None:
    """The one way a verification changes: only from `from_states`, so repeats and races change nothing."""
    params = {f"b_{name}": value for name, value in values.items()}
    moved = await session.scalar(
        _transition_statement(tuple(sorted(values))),
        {"b_id": verification_id, "b_from": list(from_states), "b_updated_at": utcnow(), **params},
    )
    if moved is not None:
        await api_events.verification_changed(session, moved, values)  # integrators hear of it with the change
    return moved


async def enqueue_status(session: AsyncSession, verification: Verification, locale: str | None = None) -> None:
    """Edit the chat message showing this verification's status, once per state it reaches."""
    if not (verification.status_platform and verification.status_chat_id and verification.status_message_id):
        return
    if locale is None:
        locale = await session.scalar(select(User.locale).where(User.id == verification.user_id)) or "en"
    await outbox.enqueue(
        session, platform=verification.status_platform, chat_id=verification.status_chat_id,
        kind="verification_status", user_id=verification.user_id, priority=STATUS_PRIORITY,
        message=status_message(verification, locale, edit_message_id=verification.status_message_id),
        dedupe_key=f"vf:{verification.id}:status:{verification.state}",
    )


@functools.cache
def _event_insert(dialect: str) -> Any:
    """`record_event`'s `INSERT … ON CONFLICT DO NOTHING` in `dialect`, built once (every webhook runs it)."""
    table = WebhookEvent.__table__
    return (
        dialect_insert(dialect)(table)
        .values(provider=bindparam("b_provider", type_=table.c.provider.type),
                event_key=bindparam("b_key", type_=table.c.event_key.type),
                received_at=bindparam("b_at", type_=table.c.received_at.type))
        .on_conflict_do_nothing(index_elements=["provider", "event_key"])
        .returning(table.c.id)
    )


async def record_event(session: AsyncSession, provider: str, event_key: str) -> bool:
    """True the first time this provider event is seen (in the caller's transaction)."""
    inserted = await session.scalar(
        _event_insert(session.bind.dialect.name), {"b_provider": provider, "b_key": event_key[:160], "b_at": utcnow()}
    )
    return inserted is not None


async def by_provider_id(session: AsyncSession, provider: str, provider_id: str) -> Verification | None:
    return await session.scalar(
        select(Verification).where(
            Verification.provider == provider, Verification.provider_verification_id == provider_id
        )
    )


class VerificationRecords:
    """The verification rows of one database, and the outbox wake-up that follows a committed change."""

    def __init__(self, db: Database, wake_outbox: Callable[[], None] | None = None) -> None:
        self.db = db
        self.wake_outbox = wake_outbox

    async def close(
        self, verification_id: int, state: str, from_states: Sequence[str], *, reason: str | None = None,
        notify: bool = True,
    ) -> Verification | None:
        """Move to an end state once; the hold is released unless the code had already been paid for."""
        async with self.db.transaction() as session:
            values: dict[str, Any] = {"state": state}
            if reason is not None:
                values["failure_reason"] = reason[:256]
            closed = await transition(session, verification_id, tuple(from_states), **values)
            if closed is None:
                return None
            if state in ("cancelled", "expired", "failed") and closed.hold_id is not None:
                await ledger.release(session, closed.hold_id)
            if notify:
                await enqueue_status(session, closed)
        self.wake()
        return closed

    async def attach_status_message(
        self, verification_id: int, *, platform: str, chat_id: str, message_id: str, shown_state: str
    ) -> None:
        """Remember the chat message showing this verification's status, so later changes edit it in place.

        If the state moved on while that message was on its way (a fast code), the edit is queued right now."""
        async with self.db.transaction() as session:
            verification = await session.scalar(
                update(Verification)
                .where(Verification.id == verification_id)
                .values(status_platform=platform, status_chat_id=chat_id, status_message_id=message_id)
                .returning(Verification),
                execution_options={"populate_existing": True, "synchronize_session": False},
            )
            if verification is None or verification.state == shown_state:
                return
            await enqueue_status(session, verification)
        self.wake()

    async def history(self, user_id: int, offset: int, limit: int) -> tuple[list[Verification], int]:
        """The user's verifications, newest first, and how many there are."""
        async with self.db.read() as session:
            total = await session.scalar(
                select(func.count()).select_from(Verification).where(Verification.user_id == user_id)
            )
            rows = await session.scalars(
                select(Verification).where(Verification.user_id == user_id)
                .order_by(Verification.id.desc()).offset(max(0, offset)).limit(limit)
            )
            return list(rows.all()), int(total or 0)

    async def buying_now(self, provider: str) -> bool:
        async with self.db.read() as session:
            return bool(
                await session.scalar(
                    select(exists().where(Verification.provider == provider, Verification.state == "requested"))
                )
            )

    async def by_key(self, key: str) -> Verification | None:
        async with self.db.read() as session:
            return await session.scalar(select(Verification).where(Verification.idempotency_key == key))

    async def load(self, verification_id: int) -> Verification:
        async with self.db.read() as session:
            verification = await session.get(Verification, verification_id)
        if verification is None:
            raise UnknownVerification()
        return verification

    async def owned(self, user_id: int, verification_id: int) -> Verification:
        verification = await self.load(verification_id)
        if verification.user_id != user_id:
            raise NotYours()
        return verification

    async def user(self, user_id: int) -> User:
        async with self.db.read() as session:
            user = await session.get(User, user_id)
        if user is None:
            raise ledger.UnknownAccount(f"no account {user_id}")
        return user

    def wake(self) -> None:
        # The outbox wakes its in-process dispatcher on commit by itself; this hook is for a caller that runs
        # dispatching some other way (a benchmark, a test).
        if self.wake_outbox is not None:
            self.wake_outbox()
