"""The ledger gives exactly one effect per hold and never lets the available balance go below zero."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import func, select

from core.models import Hold, LedgerEntry, User
from core.money import accounts, ledger
from core.platform.db import Database


async def _new_user(db: Database, credit: int = 0, platform_user_id: str = "1") -> int:
    async with db.transaction() as session:
        account = await accounts.get_or_create(
            session, accounts.Contact("telegram", platform_user_id, chat_id=platform_user_id)
        )
        if credit:
            await ledger.post(session, account.user.id, credit, kind="grant", idempotency_key=f"seed:{account.user.id}")
        return account.user.id


async def _assert_cache_matches_sum(db: Database, user_id: int) -> ledger.BalanceView:
    async with db.read() as session:
        cached = await ledger.balance(session, user_id)
        summed = await ledger.ledger_sums(session, user_id)
    assert cached == summed
    assert cached.available_cents >= 0
    return cached


async def test_credit_is_applied_once_per_key(db: Database) -> None:
    user_id = await _new_user(db)
    for _ in range(3):
        async with db.transaction() as session:
            await ledger.post(session, user_id, 250, kind="topup", idempotency_key="charge-1")
    view = await _assert_cache_matches_sum(db, user_id)
    assert view.balance_cents == 250


async def test_debit_never_goes_below_zero(db: Database) -> None:
    user_id = await _new_user(db, credit=100)
    with pytest.raises(ledger.InsufficientFunds) as refused:
        async with db.transaction() as session:
            await ledger.post(session, user_id, -101, kind="grant", idempotency_key="too-much")
    assert refused.value.available_cents == 100
    view = await _assert_cache_matches_sum(db, user_id)
    assert view.balance_cents == 100


async def test_hold_capture_release_refund_lifecycle(db: Database) -> None:
    user_id = await _new_user(db, credit=1000)
    async with db.transaction() as session:
        hold = await ledger.place_hold(session, user_id, 300, purpose="verification", idempotency_key="v1")
        again = await ledger.place_hold(session, user_id, 300, purpose="verification", idempotency_key="v1")
        assert again.id == hold.id
    view = await _assert_cache_matches_sum(db, user_id)
    assert (view.balance_cents, view.held_cents, view.available_cents) == (1000, 300, 700)

    async with db.transaction() as session:
        assert await ledger.capture(session, hold.id) is True
        assert await ledger.capture(session, hold.id) is False
        assert await ledger.release(session, hold.id) is False
    view = await _assert_cache_matches_sum(db, user_id)
    assert (view.balance_cents, view.held_cents) == (700, 0)

    async with db.transaction() as session:
        assert await ledger.refund(session, hold.id) is True
        assert await ledger.refund(session, hold.id) is False
    view = await _assert_cache_matches_sum(db, user_id)
    assert view.balance_cents == 1000

    async with db.transaction() as session:
        second = await ledger.place_hold(session, user_id, 200, purpose="number", idempotency_key="n1")
        assert await ledger.release(session, second.id) is True
        assert await ledger.capture(session, second.id) is False
    view = await _assert_cache_matches_sum(db, user_id)
    assert (view.balance_cents, view.held_cents) == (1000, 0)


async def test_hold_beyond_available_is_refused(db: Database) -> None:
    user_id = await _new_user(db, credit=100)
    with pytest.raises(ledger.InsufficientFunds):
        async with db.transaction() as session:
            await ledger.place_hold(session, user_id, 101, purpose="verification", idempotency_key="big")
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Hold)) == 0


async def test_database_refuses_a_negative_available_balance(db: Database) -> None:
    """The rule lives in the database too: a bypassing write is rejected by the check constraint."""
    from sqlalchemy import update
    from sqlalchemy.exc import IntegrityError

    user_id = await _new_user(db, credit=100)
    with pytest.raises(IntegrityError):
        async with db.transaction() as session:
            await session.execute(update(User).where(User.id == user_id).values(held_cents=101))


async def _concurrently(db: Database, calls: list) -> list:  # type: ignore[type-arg]
    async def one(call):  # type: ignore[no-untyped-def]
        async with db.transaction() as session:
            return await call(session)

    return await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)


async def test_fifty_concurrent_settlements_of_one_hold_have_one_effect(db: Database) -> None:
    user_id = await _new_user(db, credit=5000)
    async with db.transaction() as session:
        hold = await ledger.place_hold(session, user_id, 1234, purpose="verification", idempotency_key="race")
    operations = [ledger.capture, ledger.release] * 25
    random.Random(7).shuffle(operations)
    results = await _concurrently(db, [lambda s, op=op: op(s, hold.id) for op in operations])
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert results.count(True) == 1
    async with db.read() as session:
        settled = await session.scalar(select(Hold.state).where(Hold.id == hold.id))
        entries = await session.scalar(
            select(func.count()).select_from(LedgerEntry).where(
                LedgerEntry.hold_id == hold.id, LedgerEntry.kind.in_(["capture", "release"])
            )
        )
    assert entries == 1
    view = await _assert_cache_matches_sum(db, user_id)
    assert view.held_cents == 0
    assert view.balance_cents == (5000 - 1234 if settled == "captured" else 5000)

    if settled == "captured":
        refunds = await _concurrently(db, [lambda s: ledger.refund(s, hold.id) for _ in range(50)])
        assert refunds.count(True) == 1
        view = await _assert_cache_matches_sum(db, user_id)
        assert view.balance_cents == 5000


async def test_fifty_concurrent_captures_then_refunds(db: Database) -> None:
    user_id = await _new_user(db, credit=1000)
    async with db.transaction() as session:
        hold = await ledger.place_hold(session, user_id, 400, purpose="verification", idempotency_key="cap")
    captures = await _concurrently(db, [lambda s: ledger.capture(s, hold.id) for _ in range(50)])
    assert captures.count(True) == 1 and captures.count(False) == 49
    refunds = await _concurrently(db, [lambda s: ledger.refund(s, hold.id) for _ in range(50)])
    assert refunds.count(True) == 1 and refunds.count(False) == 49
    view = await _assert_cache_matches_sum(db, user_id)
    assert view.balance_cents == 1000


async def test_fifty_concurrent_purchases_against_ten_covered(db: Database) -> None:
    user_id = await _new_user(db, credit=10 * 150)
    results = await _concurrently(
        db,
        [
            lambda s, i=i: ledger.place_hold(s, user_id, 150, purpose="verification", idempotency_key=f"buy-{i}")
            for i in range(50)
        ],
    )
    bought = [r for r in results if isinstance(r, Hold)]
    refused = [r for r in results if isinstance(r, ledger.InsufficientFunds)]
    assert len(bought) == 10
    assert len(refused) == 40
    assert len(bought) + len(refused) == 50
    view = await _assert_cache_matches_sum(db, user_id)
    assert (view.held_cents, view.available_cents) == (1500, 0)


async def test_duplicate_credit_under_concurrency_applies_once(db: Database) -> None:
    user_id = await _new_user(db)
    results = await _concurrently(
        db, [lambda s: ledger.post(s, user_id, 500, kind="topup", idempotency_key="stars:abc") for _ in range(50)]
    )
    assert results.count(True) == 1
    view = await _assert_cache_matches_sum(db, user_id)
    assert view.balance_cents == 500
