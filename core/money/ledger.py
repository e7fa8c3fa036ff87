"""The exactly-once ledger: credits, debits and holds (captured, released, refunded) in integer cents."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Hold, LedgerEntry, User
from core.platform.clock import utcnow
from core.platform.db import dialect_insert


class LedgerError(Exception):
    """A ledger rule refused the change; nothing was written."""


class InsufficientFunds(LedgerError):
    def __init__(self, needed_cents: int, available_cents: int) -> None:
        super().__init__(f"needs {needed_cents} cents, {available_cents} available")
        self.needed_cents = needed_cents
        self.available_cents = available_cents


class UnknownAccount(LedgerError):
    pass


@dataclass(frozen=True)
class BalanceView:
    balance_cents: int
    held_cents: int

    @property
    def available_cents(self) -> int:
        return self.balance_cents - self.held_cents


# The statements every balance change runs, built once with bound parameters: building them per call cost more
# CPU than the round trips they make (a verification code's capture is on the code → chat path).
_USER_FOR_UPDATE = (
    select(User).where(User.id == bindparam("b_user", type_=Integer)).with_for_update()
    .execution_options(populate_existing=True)
)
_ENTRY_COLUMNS = ("user_id", "kind", "amount_cents", "held_delta_cents", "idempotency_key", "hold_id", "reference",
                  "note", "created_by_user_id", "created_at")
_MOVE_SUMS = (
    update(User.__table__)
    .where(User.__table__.c.id == bindparam("b_user", type_=Integer))
    .values(balance_cents=User.__table__.c.balance_cents + bindparam("b_amount", type_=Integer),
            held_cents=User.__table__.c.held_cents + bindparam("b_held", type_=Integer))
)
_SETTLE = (
    update(Hold.__table__)
    .where(Hold.__table__.c.id == bindparam("b_hold", type_=Integer), Hold.__table__.c.state == bindparam("b_from"))
    .values(state=bindparam("b_to"), settled_at=bindparam("b_at", type_=Hold.__table__.c.settled_at.type))
    .returning(Hold.__table__.c.id, Hold.__table__.c.user_id, Hold.__table__.c.amount_cents, Hold.__table__.c.reference)
)


@functools.cache
def _entry_insert(dialect: str) -> Any:
    """`INSERT … ON CONFLICT DO NOTHING` of one entry in `dialect`; the unique key makes retries harmless."""
    table = LedgerEntry.__table__
    return (
        dialect_insert(dialect)(table)
        .values({name: bindparam(f"b_{name}", type_=table.c[name].type) for name in _ENTRY_COLUMNS})
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(table.c.id)
    )


async def _lock_user(session: AsyncSession, user_id: int) -> User:
    # FOR UPDATE serialises every balance change of one account on PostgreSQL; SQLite has one writer anyway.
    user = await session.scalar(_USER_FOR_UPDATE, {"b_user": user_id})
    if user is None:
        raise UnknownAccount(f"no account {user_id}")
    return user


async def _write_entry(
    session: AsyncSession,
    *,
    user_id: int,
    kind: str,
    amount_cents: int,
    held_delta_cents: int,
    idempotency_key: str,
    hold_id: int | None = None,
    reference: str | None = None,
    note: str | None = None,
    actor_user_id: int | None = None,
) -> int | None:
    """Insert one entry and move the cached sums with it; None when the key was already used."""
    entry_id = await session.scalar(_entry_insert(session.bind.dialect.name), {
        "b_user_id": user_id, "b_kind": kind, "b_amount_cents": amount_cents, "b_held_delta_cents": held_delta_cents,
        "b_idempotency_key": idempotency_key, "b_hold_id": hold_id, "b_reference": reference, "b_note": note,
        "b_created_by_user_id": actor_user_id, "b_created_at": utcnow(),
    })
    if entry_id is None:
        return None
    await session.execute(_MOVE_SUMS, {"b_user": user_id, "b_amount": amount_cents, "b_held": held_delta_cents})
    return entry_id


async def post(
    session: AsyncSession,
    user_id: int,
    amount_cents: int,
    *,
    kind: str,
    idempotency_key: str,
    reference: str | None = None,
    note: str | None = None,
    actor_user_id: int | None = None,
) -> bool:
    """Credit (positive) or debit (negative) an account once per key; a debit never makes available negative."""
    user = await _lock_user(session, user_id)
    existing = await session.scalar(select(LedgerEntry.id).where(LedgerEntry.idempotency_key == idempotency_key))
    if existing is not None:
        return False
    if amount_cents < 0 and user.available_cents + amount_cents < 0:
        raise InsufficientFunds(-amount_cents, user.available_cents)
    entry = await _write_entry(
        session, user_id=user_id, kind=kind, amount_cents=amount_cents, held_delta_cents=0,
        idempotency_key=idempotency_key, reference=reference, note=note, actor_user_id=actor_user_id,
    )
    return entry is not None


async def place_hold(
    session: AsyncSession,
    user_id: int,
    amount_cents: int,
    *,
    purpose: str,
    idempotency_key: str,
    reference: str | None = None,
) -> Hold:
    """Set money aside for a purchase; the same key returns the same hold instead of a second one."""
    if amount_cents <= 0:
        raise LedgerError("a hold must be positive")
    user = await _lock_user(session, user_id)
    existing = await session.scalar(select(Hold).where(Hold.idempotency_key == idempotency_key))
    if existing is not None:
        return existing
    if user.available_cents < amount_cents:
        raise InsufficientFunds(amount_cents, user.available_cents)
    hold = Hold(
        user_id=user_id, amount_cents=amount_cents, purpose=purpose, idempotency_key=idempotency_key,
        reference=reference, state="held", created_at=utcnow(),
    )
    session.add(hold)
    await session.flush()
    await _write_entry(
        session, user_id=user_id, kind="hold", amount_cents=0, held_delta_cents=amount_cents,
        idempotency_key=f"hold:{hold.id}:place", hold_id=hold.id, reference=reference,
    )
    return hold


async def _settle(session: AsyncSession, hold_id: int, *, from_state: str, to_state: str) -> Hold | None:
    """Move a hold between states exactly once: the conditional UPDATE lets only one caller through."""
    row = (
        await session.execute(_SETTLE, {"b_hold": hold_id, "b_from": from_state, "b_to": to_state, "b_at": utcnow()})
    ).first()
    if row is None:
        return None
    return Hold(id=row.id, user_id=row.user_id, amount_cents=row.amount_cents, reference=row.reference)


async def capture(session: AsyncSession, hold_id: int) -> bool:
    """The purchase was delivered: the held money leaves the balance. True only for the call that did it."""
    hold = await _settle(session, hold_id, from_state="held", to_state="captured")
    if hold is None:
        return False
    await _write_entry(
        session, user_id=hold.user_id, kind="capture", amount_cents=-hold.amount_cents,
        held_delta_cents=-hold.amount_cents, idempotency_key=f"hold:{hold_id}:capture", hold_id=hold_id,
        reference=hold.reference,
    )
    return True


async def release(session: AsyncSession, hold_id: int) -> bool:
    """The purchase did not happen: the held money is available again. True only for the call that did it."""
    hold = await _settle(session, hold_id, from_state="held", to_state="released")
    if hold is None:
        return False
    await _write_entry(
        session, user_id=hold.user_id, kind="release", amount_cents=0, held_delta_cents=-hold.amount_cents,
        idempotency_key=f"hold:{hold_id}:release", hold_id=hold_id, reference=hold.reference,
    )
    return True


async def refund(session: AsyncSession, hold_id: int) -> bool:
    """Give back a captured purchase. True only for the call that did it."""
    hold = await _settle(session, hold_id, from_state="captured", to_state="refunded")
    if hold is None:
        return False
    await _write_entry(
        session, user_id=hold.user_id, kind="refund", amount_cents=hold.amount_cents, held_delta_cents=0,
        idempotency_key=f"hold:{hold_id}:refund", hold_id=hold_id, reference=hold.reference,
    )
    return True


async def balance(session: AsyncSession, user_id: int) -> BalanceView:
    """The cached sums (kept in step with the ledger in every transaction that writes it)."""
    row = (await session.execute(select(User.balance_cents, User.held_cents).where(User.id == user_id))).first()
    if row is None:
        raise UnknownAccount(f"no account {user_id}")
    return BalanceView(row.balance_cents, row.held_cents)


async def ledger_sums(session: AsyncSession, user_id: int) -> BalanceView:
    """The balance recomputed from the entries themselves, for checks and audits."""
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(LedgerEntry.amount_cents), 0),
                func.coalesce(func.sum(LedgerEntry.held_delta_cents), 0),
            ).where(LedgerEntry.user_id == user_id)
        )
    ).first()
    assert row is not None
    return BalanceView(int(row[0]), int(row[1]))
