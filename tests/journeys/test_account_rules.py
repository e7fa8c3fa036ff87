"""Account journeys through the router: one history line per purchase, refunded verifications outside the day's
quota, and bans that can never lock the admins out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from bot.handlers import router
from bot.handlers.registry import load_flows
from core.admin import users
from core.models import Hold, LedgerEntry, User
from core.money import ledger
from core.money.accounts import AccountError, Contact
from core.platform.db import Database
from core.platform.settings import DEFAULT_TIERS
from core.services import Services, build_services
from core.verification.service import build_verification_service
from tests.conftest import make_settings
from tests.journeys.test_verification_flows import ANN, BOB, button, plain, press, to_status, user_of

ONE_A_DAY = {"free": DEFAULT_TIERS["free"].model_copy(update={"verifications_per_day": 1})}


@pytest.fixture
async def services(db: Database) -> AsyncIterator[Services]:
    """The sandbox (its code far away, so nothing is captured by itself), one verification a day, Ann an admin."""
    load_flows()
    settings = make_settings(
        db.url, sandbox_code_delay_seconds=60.0, tier_limits={**DEFAULT_TIERS, **ONE_A_DAY},
        admin_telegram_ids=[int(ANN.platform_user_id)],
    )
    built = build_services(settings, db=db)
    built.verification = build_verification_service(settings, db, built.metrics, built.plan)
    yield built
    await built.verification.close()


@pytest.fixture
async def admins(db: Database) -> Services:
    """Ann an admin; nothing is bought here, so no providers."""
    load_flows()
    return build_services(make_settings(db.url, admin_telegram_ids=[int(ANN.platform_user_id)]), db=db)


async def history_text(services: Services, contact: Contact = ANN) -> str:
    [screen] = await router.handle_command(services, contact, "history")
    return plain(screen.text)


async def test_history_has_one_line_per_purchase_and_refunds_leave_the_quota(services: Services) -> None:
    status = await to_status(services)
    shown = await history_text(services)
    assert "(1–2 of 2)" in shown and "sign-up bonus" in shown
    assert "verification WhatsApp · -$1.50 · held, not charged yet" in shown
    assert " held ·" not in shown and "purchase" not in shown  # no second line that reads like a second charge

    cancelled = await press(services, ANN, button(status, "Cancel"))
    assert "$1.50 is back" in (cancelled.toast or "")
    shown = await history_text(services)
    assert "(1–2 of 2)" in shown and "verification WhatsApp · -$1.50 · not charged, money back" in shown

    # The cancelled verification gave its money back, so it did not use the day's one verification.
    [balance] = await router.handle_command(services, ANN, "balance")
    assert "Verifications: 0/1" in plain(balance.text) and "1 refunded today, not counted" in plain(balance.text)
    second = await to_status(services)
    assert "Cancel" in [b.label for row in second.buttons for b in row]
    [refused] = await router.handle_command(services, ANN, "verify", "whatsapp")
    refused = await press(services, ANN, button(refused, "Confirm"))
    assert "Limit reached: verifications per day (1 of 1)" in plain(refused.text)
    [balance] = await router.handle_command(services, ANN, "balance")
    assert "Verifications: 1/1" in plain(balance.text)

    # Charged, then refunded: still one line, which says so; the ledger underneath keeps every step.
    ann = await user_of(services, ANN)
    async with services.db.transaction() as session:
        held = (await session.scalars(select(Hold).where(Hold.state == "held"))).one()
        assert await ledger.capture(session, held.id)
    assert "verification WhatsApp · -$1.50 · charged" in await history_text(services)
    async with services.db.transaction() as session:
        assert await ledger.refund(session, held.id)
        kinds = (await session.scalars(
            select(LedgerEntry.kind).where(LedgerEntry.user_id == ann.id).order_by(LedgerEntry.id)
        )).all()
    assert kinds == ["signup_bonus", "hold", "release", "hold", "capture", "refund"]
    shown = await history_text(services)
    assert "(1–3 of 3)" in shown and shown.count("verification WhatsApp") == 2
    assert "verification WhatsApp · -$1.50 · charged, then refunded" in shown
    [balance] = await router.handle_command(services, ANN, "balance")
    assert "Available: $5.00" in plain(balance.text) and "2 refunded today, not counted" in plain(balance.text)


async def test_nobody_bans_their_own_account_or_the_last_admin(admins: Services) -> None:
    services = admins
    for contact in (ANN, BOB):
        await router.handle_command(services, contact, "start")
    ann = await user_of(services, ANN)
    bob = await user_of(services, BOB)

    [own] = await router.handle_command(services, ANN, "ban", f"#{ann.id}")
    assert own.text == "You can't ban your own account: you would lock yourself out. Nothing was done."
    [card] = await router.handle_command(services, ANN, "user", f"#{ann.id}")
    ban_button = next(b for row in card.buttons for b in row if (b.action or "").startswith("adm:ban:"))
    from_card = await press(services, ANN, ban_button)
    assert from_card.toast and "your own account" in from_card.toast and from_card.alert
    assert (await user_of(services, ANN)).status == "active"
    [still_admin] = await router.handle_command(services, ANN, "unban", f"#{bob.id}")
    assert "was not banned" in plain(still_admin.text)

    [banned] = await router.handle_command(services, ANN, "ban", f"#{bob.id}")
    assert plain(banned.text) == f"⛔ Account #{bob.id} is banned."
    [locked] = await router.handle_command(services, BOB, "balance")
    assert "Your account is blocked" in locked.text

    # The last admin cannot be banned by anyone (an admin action from elsewhere, a future demotion).
    async with services.db.transaction() as session:
        actor, target = await session.get(User, bob.id), await session.get(User, ann.id)
        assert actor is not None and target is not None
        with pytest.raises(AccountError) as refused:
            await users.set_status(session, services.settings, actor, target, "banned")
        assert refused.value.reason == "ban_last_admin"
        actor.status = "active"
        actor.role = "admin"  # with a second admin, the first may go
        assert await users.set_status(session, services.settings, actor, target, "banned")
    assert (await user_of(services, ANN)).status == "banned"
