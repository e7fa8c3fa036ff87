"""Sandbox credit: what counts as handed out in the sandbox, and its reset through the ledger before going live."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from core.models import KeyValue, LedgerEntry, PhoneNumber, User
from core.money import accounts, ledger, sandbox_credit
from core.platform.clock import utcnow
from core.platform.db import Database


async def _new_user(db: Database, platform_user_id: str, *, bonus: int = 0) -> int:
    async with db.transaction() as session:
        account = await accounts.get_or_create(
            session, accounts.Contact("telegram", platform_user_id, chat_id=platform_user_id), signup_bonus_cents=bonus
        )
        return account.user.id


async def _post(db: Database, user_id: int, cents: int, kind: str, key: str) -> None:
    async with db.transaction() as session:
        await ledger.post(session, user_id, cents, kind=kind, idempotency_key=key)


async def _available(db: Database, user_id: int) -> int:
    async with db.read() as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user.available_cents


async def test_reset_takes_back_sandbox_credit_as_far_as_the_balance_goes(db: Database) -> None:
    before = await _new_user(db, "1")
    await _post(db, before, 200, "grant", "live-grant")  # given before the sandbox ever ran: not sandbox credit
    await asyncio.sleep(0.01)
    await sandbox_credit.note_sandbox_run(db)
    await sandbox_credit.note_sandbox_run(db)  # a second start keeps the first one's time

    spent = await _new_user(db, "2", bonus=500)
    async with db.transaction() as session:
        hold = await ledger.place_hold(session, spent, 150, purpose="verification", idempotency_key="v1")
        await ledger.capture(session, hold.id)
    paid = await _new_user(db, "3", bonus=500)
    await _post(db, paid, 1000, "topup", "stars:charge-1")  # real Telegram Stars stay

    found = await sandbox_credit.pending(db)
    assert found.per_account == {spent: 500, paid: 500}

    done = await sandbox_credit.reset_sandbox_balances(db)
    assert (done.accounts, done.cents, done.kept_cents) == (2, 350 + 500, 150)
    assert [await _available(db, user) for user in (before, spent, paid)] == [200, 0, 1000]
    async with db.read() as session:
        entries = (await session.scalars(select(LedgerEntry).where(LedgerEntry.reference == "sandbox_reset"))).all()
    assert sorted((e.user_id, e.amount_cents) for e in entries) == [(spent, -350), (paid, -500)]
    assert {(e.kind, e.note) for e in entries} == {("grant", "sandbox credit taken back before going live")}
    async with db.read() as session:
        for user in (before, spent, paid):
            assert await ledger.balance(session, user) == await ledger.ledger_sums(session, user)

    assert (await sandbox_credit.pending(db)).accounts == 0
    again = await sandbox_credit.reset_sandbox_balances(db)
    assert (again.accounts, again.cents) == (0, 0)

    # The sandbox runs again later: only what is handed out from then on counts.
    await sandbox_credit.note_sandbox_run(db)
    await _post(db, before, 300, "grant", "sandbox-grant")
    assert (await sandbox_credit.pending(db)).per_account == {before: 300}


async def test_a_database_from_before_the_marker_counts_by_its_sandbox_purchases(db: Database) -> None:
    user = await _new_user(db, "1", bonus=500)
    assert (await sandbox_credit.pending(db)).accounts == 0  # nothing says the sandbox ran
    async with db.transaction() as session:
        session.add(PhoneNumber(
            user_id=user, provider="sandbox", provider_sid="SB1", e164="+12125550100", country="US",
            monthly_price_cents=130,
        ))
    assert (await sandbox_credit.pending(db)).per_account == {user: 500}
    assert (await sandbox_credit.reset_sandbox_balances(db)).cents == 500
    assert (await sandbox_credit.pending(db)).accounts == 0


async def test_a_database_without_tables_holds_no_sandbox_credit(tmp_path: object) -> None:
    empty = Database(f"sqlite+aiosqlite:///{tmp_path}/empty.db")
    try:
        assert (await sandbox_credit.pending(empty)).accounts == 0
        assert (await sandbox_credit.reset_sandbox_balances(empty)).accounts == 0
    finally:
        await empty.dispose()


async def test_two_instances_starting_in_the_same_microsecond_both_start(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both find no marker and write the same key: the second must not fail its start (it did, as a
    UniqueViolation, in a fault test that starts two instances at once). The race's window is made certain by
    letting neither see the other's marker, and by one clock reading for both."""
    at = utcnow()
    monkeypatch.setattr(sandbox_credit, "utcnow", lambda: at)

    async def none_yet(*_args: object) -> list[object]:
        return []

    monkeypatch.setattr(sandbox_credit, "_marker_times", none_yet)
    await sandbox_credit.note_sandbox_run(db)
    await sandbox_credit.note_sandbox_run(db)
    monkeypatch.undo()
    async with db.read() as session:
        keys = (await session.scalars(
            select(KeyValue.key).where(KeyValue.key.like(f"{sandbox_credit.SINCE_PREFIX}%"))
        )).all()
    assert keys == [f"{sandbox_credit.SINCE_PREFIX}{at.isoformat()}"]
