"""Accounts: first contact, link codes across platforms (single use, expiry, rate limit), merges, admin actions."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from core.models import AuditLog, ChatIdentity, LedgerEntry, LinkCode, Payment, User
from core.money import accounts, ledger, payments
from core.money.accounts import AccountError, Contact
from core.platform.clock import utcnow
from core.platform.db import Database
from tests.conftest import make_settings

TG = Contact("telegram", "1001", chat_id="1001", username="ann", display_name="Ann", language_code="es-ES")
DC = Contact("discord", "2002", chat_id="2002", username="ann#1", display_name="Ann")


async def _account(db: Database, contact: Contact, bonus: int = 500) -> User:
    async with db.transaction() as session:
        return (await accounts.get_or_create(session, contact, signup_bonus_cents=bonus)).user


async def test_first_contact_creates_one_account_with_one_bonus(db: Database) -> None:
    results = await asyncio.gather(*(_account(db, TG) for _ in range(10)), return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert len({r.id for r in results}) == 1  # type: ignore[union-attr]
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == 1
        user = await session.scalar(select(User))
        assert user is not None and user.balance_cents == 500 and user.locale == "es"
        assert await session.scalar(select(func.count()).select_from(LedgerEntry)) == 1


async def _link(db: Database, shower: User, redeemer: User) -> User:
    async with db.transaction() as session:
        code, _ = await accounts.create_link_code(session, shower.id)
    async with db.transaction() as session:
        current = await session.get(User, redeemer.id)
        assert current is not None
        return await accounts.redeem_link_code(session, code.lower(), current)


async def test_link_joins_a_fresh_account_and_drops_its_bonus(db: Database) -> None:
    telegram = await _account(db, TG)
    async with db.transaction() as session:
        await ledger.post(session, telegram.id, 1000, kind="topup", idempotency_key="t1")
    discord = await _account(db, DC)
    joined = await _link(db, telegram, discord)
    assert joined.id == telegram.id
    async with db.read() as session:
        identities = (await session.scalars(select(ChatIdentity).where(ChatIdentity.user_id == telegram.id))).all()
        assert {i.platform for i in identities} == {"telegram", "discord"}
        view = await ledger.balance(session, telegram.id)
        assert view.balance_cents == 1500  # Telegram's bonus + top-up; Discord's bonus not counted twice
        absorbed = await session.get(User, discord.id)
        assert absorbed is not None and absorbed.merged_into_id == telegram.id
        assert (await ledger.ledger_sums(session, discord.id)).balance_cents == 0
    # The Discord identity now resolves to the joined account.
    again = await _account(db, DC)
    assert again.id == telegram.id


async def test_link_keeps_the_account_with_history_whichever_shows_the_code(db: Database) -> None:
    fresh = await _account(db, TG)
    used = await _account(db, DC)
    async with db.transaction() as session:
        await ledger.post(session, used.id, 700, kind="topup", idempotency_key="d1")
    joined = await _link(db, fresh, used)
    assert joined.id == used.id


async def test_link_refused_when_both_have_history(db: Database) -> None:
    a = await _account(db, TG)
    b = await _account(db, DC)
    async with db.transaction() as session:
        await ledger.post(session, a.id, 100, kind="topup", idempotency_key="a")
        await ledger.post(session, b.id, 100, kind="topup", idempotency_key="b")
    with pytest.raises(AccountError) as refused:
        await _link(db, a, b)
    assert refused.value.reason == "link_both_have_history"
    async with db.read() as session:
        assert (await ledger.balance(session, a.id)).balance_cents == 600
        assert (await ledger.balance(session, b.id)).balance_cents == 600


async def test_link_code_single_use_and_expiry(db: Database) -> None:
    a = await _account(db, TG)
    b = await _account(db, DC)
    c = await _account(db, Contact("discord", "3003", chat_id="3003"))
    async with db.transaction() as session:
        code, _ = await accounts.create_link_code(session, a.id)

    async def redeem(user_id: int) -> object:
        async with db.transaction() as session:
            current = await session.get(User, user_id)
            assert current is not None
            return await accounts.redeem_link_code(session, code, current)

    results = await asyncio.gather(redeem(b.id), redeem(c.id), return_exceptions=True)
    assert sum(isinstance(r, User) for r in results) == 1
    assert sum(isinstance(r, AccountError) and r.reason == "link_code_invalid" for r in results) == 1

    async with db.transaction() as session:
        expired, _ = await accounts.create_link_code(session, a.id)
        await session.execute(update(LinkCode).where(LinkCode.used_at.is_(None)).values(
            expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(AccountError):
        async with db.transaction() as session:
            current = await session.get(User, c.id)
            assert current is not None
            await accounts.redeem_link_code(session, expired, current)


async def test_link_codes_are_rate_limited(db: Database) -> None:
    a = await _account(db, TG)
    for _ in range(accounts.LINK_CODES_PER_HOUR):
        async with db.transaction() as session:
            await accounts.create_link_code(session, a.id)
    with pytest.raises(AccountError) as refused:
        async with db.transaction() as session:
            await accounts.create_link_code(session, a.id)
    assert refused.value.reason == "link_rate_limited"


async def test_resolve_user_by_id_username_and_platform_id(db: Database) -> None:
    a = await _account(db, TG)
    async with db.read() as session:
        assert (await accounts.resolve_user(session, "@ANN")).id == a.id  # type: ignore[union-attr]
        assert (await accounts.resolve_user(session, "1001")).id == a.id  # type: ignore[union-attr]
        assert (await accounts.resolve_user(session, f"#{a.id}")).id == a.id  # type: ignore[union-attr]
        assert await accounts.resolve_user(session, "@nobody") is None


async def test_admin_actions_are_audited(db: Database) -> None:
    admin = await _account(db, Contact("telegram", "9", chat_id="9"))
    target = await _account(db, TG)
    async with db.transaction() as session:
        actor = await session.get(User, admin.id)
        user = await session.get(User, target.id)
        assert actor and user
        assert await accounts.set_status(session, actor, user, "banned") is True
        assert await accounts.set_status(session, actor, user, "banned") is False
        assert await accounts.set_tier(session, actor, user, "pro") is True
        assert await accounts.grant(session, actor, user, -250, "correction", "req-1") is True
        assert await accounts.grant(session, actor, user, -250, "correction", "req-1") is False
        with pytest.raises(AccountError):
            await accounts.set_tier(session, actor, user, "gold")
    async with db.read() as session:
        rows = (await session.scalars(select(AuditLog).order_by(AuditLog.id))).all()
        assert [r.action for r in rows] == ["ban", "tier", "grant"]
        assert rows[1].before == {"tier": "free"} and rows[1].after == {"tier": "pro"}
        assert rows[2].reason == "correction"
        assert (await ledger.balance(session, target.id)).balance_cents == 250


async def test_admins_from_settings_and_database(db: Database) -> None:
    settings = make_settings(db.url, admin_telegram_ids="9,10")
    listed = await _account(db, Contact("telegram", "10", chat_id="10"))
    plain = await _account(db, TG)
    async with db.transaction() as session:
        assert await accounts.is_admin(session, settings, listed) is True
        assert await accounts.is_admin(session, settings, plain) is False
        plain.role = "admin"
        session.add(plain)
    async with db.read() as session:
        user = await session.get(User, plain.id)
        assert user is not None and await accounts.is_admin(session, settings, user) is True


async def test_stars_payment_credits_once_and_refunds_once(db: Database) -> None:
    settings = make_settings(db.url, telegram_bot_token="1:abc", stars_cents_per_star=2)
    user = await _account(db, TG, bonus=0)
    payload = payments.make_payload(settings, user.id, 250)
    async with db.read() as session:
        await payments.validate_pre_checkout(session, settings, user, payload, "XTR", 250)
        with pytest.raises(payments.PaymentError):
            await payments.validate_pre_checkout(session, settings, user, payload, "XTR", 50)
        with pytest.raises(payments.PaymentError):
            await payments.validate_pre_checkout(session, settings, user, payload.replace(":250:", ":1000:"), "XTR",
                                                 1000)

    async def pay() -> bool:
        async with db.transaction() as session:
            current = await session.get(User, user.id)
            assert current is not None
            _, credited = await payments.record_payment(
                session, settings, current, charge_id="ch_1", payload=payload, currency="XTR", total_amount=250
            )
            return credited

    results = await asyncio.gather(*(pay() for _ in range(10)))
    assert results.count(True) == 1
    async with db.read() as session:
        assert (await ledger.balance(session, user.id)).balance_cents == 500
        assert await session.scalar(select(func.count()).select_from(Payment)) == 1
        payment_id = await session.scalar(select(Payment.id))

    refunded: list[tuple[str, str]] = []

    async def refunder(uid: str, charge: str) -> None:
        refunded.append((uid, charge))

    admin = await _account(db, Contact("telegram", "9", chat_id="9"), bonus=0)
    async with db.transaction() as session:
        actor = await session.get(User, admin.id)
        assert actor is not None and payment_id is not None
        await payments.refund_payment(session, actor, payment_id, refunder, "1001")
    with pytest.raises(payments.PaymentError):
        async with db.transaction() as session:
            actor = await session.get(User, admin.id)
            assert actor is not None
            await payments.refund_payment(session, actor, payment_id, refunder, "1001")
    assert refunded == [("1001", "ch_1")]
    async with db.read() as session:
        assert (await ledger.balance(session, user.id)).balance_cents == 0


async def test_refused_telegram_refund_changes_nothing(db: Database) -> None:
    settings = make_settings(db.url)
    user = await _account(db, TG, bonus=0)
    payload = payments.make_payload(settings, user.id, 50)
    async with db.transaction() as session:
        current = await session.get(User, user.id)
        assert current is not None
        payment, _ = await payments.record_payment(
            session, settings, current, charge_id="ch_2", payload=payload, currency="XTR", total_amount=50
        )

    async def refuses(uid: str, charge: str) -> None:
        raise RuntimeError("CHARGE_ALREADY_REFUNDED")

    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            actor = await session.get(User, user.id)
            assert actor is not None
            await payments.refund_payment(session, actor, payment.id, refuses, "1001")
    async with db.read() as session:
        stored = await session.get(Payment, payment.id)
        assert stored is not None and stored.state == "paid"
        assert (await ledger.balance(session, user.id)).balance_cents == 50
