"""Sandbox credit: /topup offers simulated $5/$10/$25 on every platform, credited once per screen through the ledger
with its history line; "Top up" under "Not enough balance" leads there; outside the sandbox no platform shows a
"Top up" button that can do nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from bot.handlers import router
from bot.handlers.registry import load_flows
from bot.handlers.screens import Screen
from core.models import LedgerEntry
from core.money.accounts import Contact
from core.platform.db import Database
from core.services import Services, build_services
from core.verification.service import build_verification_service
from tests.conftest import make_settings

PLATFORMS = (
    Contact("console", "local", chat_id="local", display_name="you", language_code="en"),
    Contact("discord", "4001", chat_id="4001", display_name="Dee", language_code="en"),
    Contact("telegram", "5001", chat_id="5001", display_name="Tom", language_code="en"),
)
LIVE_PROVIDERS = {
    "sandbox": "false", "textverified_api_key": "tv-test-key-0123456789", "textverified_api_username": "tv-user",
    "textverified_base_url": "http://127.0.0.1:9", "twilio_account_sid": "AC" + "0" * 32,
    "twilio_auth_token": "twilio-test-token", "twilio_api_base_url": "http://127.0.0.1:9",
    "groq_api_key": "gsk_live_test_key", "groq_base_url": "http://127.0.0.1:9",
    "data_encryption_keys": "a" * 43 + "=",
}


def actions(screen: Screen) -> dict[str, str]:
    return {b.label: b.action or "" for row in screen.buttons for b in row}


@pytest.fixture
async def sandbox(db: Database) -> AsyncIterator[Services]:
    load_flows()
    settings = make_settings(db.url, signup_bonus_cents=0, sandbox_code_delay_seconds=60)
    services = build_services(settings, db=db)
    services.verification = build_verification_service(settings, db, services.metrics, services.plan)
    yield services
    await services.verification.close()


async def test_sandbox_credit_on_every_platform_once_per_screen(sandbox: Services, db: Database) -> None:
    for contact in PLATFORMS:
        [offer] = await router.handle_command(sandbox, contact, "topup")
        assert "Sandbox credit" in offer.text and list(actions(offer)) == ["➕ $5.00", "➕ $10.00", "➕ $25.00"]
        [added] = await router.handle_action(sandbox, contact, actions(offer)["➕ $10.00"])
        assert "$10.00 of sandbox credit added. Available: $10.00" in added.text, contact.platform
        # The same screen's button again (a double press): nothing more.
        [again] = await router.handle_action(sandbox, contact, actions(offer)["➕ $25.00"])
        assert "no longer valid" in (again.toast or again.text)
        # A forged amount: refused.
        token = actions(added)["➕ $5.00"].split(":")[1]
        [forged] = await router.handle_action(sandbox, contact, f"sbt:{token}:100000")
        assert "expired" in (forged.toast or "")
        [history] = await router.handle_command(sandbox, contact, "history")
        assert "sandbox top-up" in history.text
    async with db.read() as session:
        credits = (await session.scalars(select(LedgerEntry.amount_cents).where(
            LedgerEntry.reference == "sandbox_topup"))).all()
    assert credits == [1000, 1000, 1000]


async def test_not_enough_balance_leads_to_sandbox_credit(sandbox: Services) -> None:
    contact = PLATFORMS[1]  # Discord: once only "use Telegram"
    [price] = await router.handle_command(sandbox, contact, "verify", "whatsapp")
    [refusal] = await router.handle_action(sandbox, contact, actions(price)["Confirm"])
    assert "Not enough balance" in refusal.text
    [offer] = await router.handle_action(sandbox, contact, actions(refusal)["➕ Top up"])
    [added] = await router.handle_action(sandbox, contact, actions(offer)["➕ $5.00"])
    assert "Available: $5.00" in added.text
    # The same Confirm now goes through.
    [status] = await router.handle_action(sandbox, contact, actions(price)["Confirm"])
    assert "WhatsApp" in status.text and "Not enough" not in status.text


async def test_outside_the_sandbox_discord_is_not_offered_a_top_up_it_cannot_do(db: Database) -> None:
    load_flows()
    live = build_services(make_settings(db.url, **LIVE_PROVIDERS), db=db)
    assert not live.plan.any_sandbox
    discord, telegram = PLATFORMS[1], PLATFORMS[2]
    for name in ("start", "balance"):
        [on_discord] = await router.handle_command(live, discord, name)
        [on_telegram] = await router.handle_command(live, telegram, name)
        assert "cmd:topup" not in actions(on_discord).values(), name
        assert "cmd:topup" in actions(on_telegram).values(), name
