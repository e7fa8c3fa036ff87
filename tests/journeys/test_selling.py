"""Selling honestly: a sandbox behind a real chat says so and takes no Stars; a stale Confirm or Buy only says so."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, update

from bot.handlers import router
from bot.handlers.registry import load_flows
from bot.handlers.screens import Screen, SentRef
from core.messaging.service import build_messaging_service
from core.models import ChatIdentity, Hold, KeyValue, Payment, PhoneNumber, User, Verification
from core.money import ledger, payments
from core.money.accounts import Contact
from core.platform.clock import utcnow
from core.platform.db import Database
from core.services import Services, build_services
from core.verification.service import build_verification_service
from tests.conftest import make_settings
from tests.harness import TelegramHarness, buttons, telegram_app

GONE = "This offer is no longer valid."
ANN = Contact("telegram", "4001", chat_id="4001", username="ann", display_name="Ann", language_code="en")
REF = SentRef("telegram", "4001", "77")
# Real providers (never called here): Telegram Stars are taken only while nothing sold is simulated.
LIVE_PROVIDERS = {
    "sandbox": "false", "textverified_api_key": "tv-test-key-0123456789", "textverified_api_username": "tv-user",
    "textverified_base_url": "http://127.0.0.1:9", "twilio_account_sid": "AC" + "0" * 32,
    "twilio_auth_token": "twilio-test-token", "twilio_api_base_url": "http://127.0.0.1:9",
    "groq_api_key": "gsk_live_test_key", "groq_base_url": "http://127.0.0.1:9",
}


def plain(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def action(screen: Screen, label: str) -> str:
    for row in screen.buttons:
        for button in row:
            if plain(button.label).endswith(label) and button.action:
                return button.action
    raise AssertionError(f"no button {label!r} in {[[b.label for b in row] for row in screen.buttons]}")


async def press(services: Services, data: str, contact: Contact = ANN) -> Screen:
    [screen] = await router.handle_action(services, contact, data, REF)
    return screen


async def account(db: Database, platform_user_id: str) -> User:
    async with db.read() as session:
        identity = await session.scalar(
            select(ChatIdentity).where(ChatIdentity.platform_user_id == platform_user_id)
        )
        assert identity is not None
        user = await session.get(User, identity.user_id)
        assert user is not None
        return user


async def count(db: Database, model: type) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def build_shop(db: Database, **overrides: object) -> Services:
    """Verification and numbers in the terminal-only sandbox (no chat token), through the router."""
    load_flows()
    values: dict[str, object] = {
        "sandbox_code_delay_seconds": 60.0, "sandbox_sms_success_rate": 1.0, "signup_bonus_cents": 500, **overrides
    }
    settings = make_settings(db.url, **values)
    services = build_services(settings, db=db)
    services.verification = build_verification_service(settings, db, services.metrics, services.plan)
    services.messaging = build_messaging_service(settings, db, services.metrics, services.plan)
    return services


@pytest.fixture
async def shop(db: Database) -> AsyncIterator[Services]:
    services = await build_shop(db)
    yield services
    await services.verification.close()
    await services.messaging.close()


async def number_quote(services: Services) -> Screen:
    """/numbers → Buy → United States → Any → the first number: its price screen."""
    countries = await press(services, "num_buy")
    area = await press(services, action(countries, "United States"))
    listing = await press(services, action(area, "Any"))
    first = next(b.action for row in listing.buttons for b in row if b.action and b.action.startswith("num_pick:"))
    assert first is not None
    return await press(services, first)


# --- a sandbox behind a real chat ----------------------------------------------------------------------------


async def _settled(h: TelegramHarness, user_id: int) -> None:
    """Every queued update was fetched and answered: a command sent last has its answer."""
    for _ in range(250):  # until the bot fetched every queued update
        if not h.fake.pending_updates:
            break
        await asyncio.sleep(0.02)
    await h.command(h.fake.user(user_id), "/balance")


async def test_sandbox_with_a_real_token_says_so_and_takes_no_stars(db: Database) -> None:
    async with telegram_app(db, stars_cents_per_star=2) as h:
        ann = h.user(301)
        await h.command(ann, "/start")
        topup = await h.command(ann, "/topup")
        # Simulated credit instead of Stars: everything it could buy is simulated too.
        assert "Sandbox credit" in topup["text"] and list(buttons(topup)) == ["➕ $5.00", "➕ $10.00", "➕ $25.00"]

        # An offer button of an older /topup (or a forged one): no invoice.
        await h.press(ann, topup, "pay:250", strict=False)
        # An invoice sent before, paid now: refused at pre-checkout, so Telegram charges nothing.
        user = await account(db, "301")
        _, paid = await ann.pay(payments.make_payload(h.services.settings, user.id, 250), 250)
        assert paid is None
        refusal = h.fake.calls_of("answerPreCheckoutQuery")[-1]
        assert refusal.params["ok"] is False and "Sandbox" in refusal.params["error_message"]

        # Every screen that sells says it is a sandbox.
        price = await h.command(ann, "/verify whatsapp")
        assert price["text"].startswith("🧪 Sandbox") and "WhatsApp — $1.50" in price["text"]
        numbers = await h.command(ann, "/numbers")
        countries = await h.tap(ann, numbers, next(data for label, data in buttons(numbers).items() if "Buy" in label))
        area = await h.tap(ann, countries, buttons(countries)["United States"])
        listing = await h.tap(ann, area, buttons(area)["Any"])
        pick = next(data for label, data in buttons(listing).items() if label.startswith("+1"))
        quote = await h.tap(ann, listing, pick)
        assert quote["text"].startswith("🧪 Sandbox") and "Monthly price" in quote["text"]

        await _settled(h, 301)
        assert not h.fake.calls_of("sendInvoice")
        assert await count(db, Payment) == 0
        assert (await account(db, "301")).balance_cents == 500


async def test_the_terminal_only_sandbox_is_as_it_was(shop: Services) -> None:
    [price] = await router.handle_command(shop, ANN, "verify", "whatsapp")
    assert "Sandbox" not in price.text and "WhatsApp — $1.50" in plain(price.text)
    quote = await number_quote(shop)
    assert "Sandbox" not in quote.text and "Monthly price" in plain(quote.text)
    [topup] = await router.handle_command(shop, ANN, "topup")
    # Simulated credit rather than Stars: what it buys is simulated.
    assert "Sandbox credit" in topup.text and not any((b.action or "").startswith("pay:") for row in topup.buttons for b in row)


async def test_stars_are_taken_once_per_invoice_when_nothing_is_simulated(db: Database) -> None:
    async with telegram_app(db, stars_cents_per_star=2, **LIVE_PROVIDERS) as h:
        bea = h.user(302)
        offers = await h.command(bea, "/topup")
        assert "Sandbox" not in offers["text"]
        since = len(h.fake.calls)
        await h.press(bea, offers, buttons(offers)["⭐ 250 → $5.00"])
        payload = (await h.fake.wait_for("sendInvoice", since=since)).params["payload"]
        _, paid = await bea.pay(payload, 250, charge_id="charge-302")
        assert paid is not None
        await h.fake.wait_for(lambda c: c.method == "sendMessage" and "Payment received" in c.params.get("text", ""))

        # The same invoice paid again (an old invoice message): refused before Telegram charges.
        _, again = await bea.pay(payload, 250, charge_id="charge-302-b")
        assert again is None
        refusal = h.fake.calls_of("answerPreCheckoutQuery")[-1]
        assert refusal.params["ok"] is False and GONE.rstrip(".") in refusal.params["error_message"]
        # An amount no longer on offer: a toast, no invoice.
        since = len(h.fake.calls)
        answer = await h.press(bea, offers, "pay:777", strict=False)
        assert answer.params.get("text") == GONE
        await _settled(h, 302)
        assert not [c for c in h.fake.calls[since:] if c.method == "sendInvoice"]
        assert await count(db, Payment) == 1
        assert (await account(db, "302")).balance_cents == 500 + 500


# --- stale screens: a Confirm or Buy that was cancelled, used or expired does nothing but say so ---------------


async def test_confirm_after_cancel_on_the_same_price_screen_buys_nothing(shop: Services) -> None:
    [price] = await router.handle_command(shop, ANN, "verify", "whatsapp")
    confirm, cancel = action(price, "Confirm"), action(price, "Cancel")
    cancelled = await press(shop, cancel)
    assert "Nothing was charged" in plain(cancelled.text)

    stale = await press(shop, confirm)  # an old client still shows the keyboard
    assert stale.text == "" and stale.toast == GONE
    assert await count(shop.db, Verification) == 0 and await count(shop.db, Hold) == 0
    user = await account(shop.db, ANN.platform_user_id)
    assert (user.balance_cents, user.held_cents) == (500, 0)


async def test_a_used_or_expired_verification_offer_only_says_so(shop: Services) -> None:
    [price] = await router.handle_command(shop, ANN, "verify", "whatsapp")
    status = await press(shop, action(price, "Confirm"))
    assert "Waiting for the SMS" in plain(status.text)
    again = await press(shop, action(price, "Confirm"))
    assert again.text == "" and again.toast == GONE
    # Cancel on the price screen after it bought: "nothing was charged" would be false.
    late_cancel = await press(shop, action(price, "Cancel"))
    assert late_cancel.text == "" and late_cancel.toast == GONE
    assert await count(shop.db, Verification) == 1
    assert (await account(shop.db, ANN.platform_user_id)).held_cents == 150

    [fresh] = await router.handle_command(shop, ANN, "verify", "telegram")
    async with shop.db.transaction() as session:
        await session.execute(
            update(KeyValue).where(KeyValue.key.like("vfoffer:%")).values(expires_at=utcnow())
        )
    expired = await press(shop, action(fresh, "Confirm"))
    assert expired.text == "" and expired.toast == GONE
    assert await count(shop.db, Verification) == 1


async def test_an_offer_refused_for_want_of_money_still_works_after_a_top_up(db: Database) -> None:
    poor = await build_shop(db, signup_bonus_cents=100)
    try:
        [price] = await router.handle_command(poor, ANN, "verify", "whatsapp")
        refused = await press(poor, action(price, "Confirm"))
        assert "Not enough balance" in plain(refused.text)
        user = await account(db, ANN.platform_user_id)
        async with db.transaction() as session:
            await ledger.post(session, user.id, 500, kind="grant", idempotency_key="test:top-up")
        status = await press(poor, action(price, "Confirm"))
        assert "Waiting for the SMS" in plain(status.text)
        assert await count(db, Verification) == 1
    finally:
        await poor.verification.close()
        await poor.messaging.close()


async def test_a_number_quote_buys_once_and_never_after_its_cancel(shop: Services) -> None:
    quote = await number_quote(shop)
    confirm, cancel = action(quote, "Confirm"), action(quote, "Cancel")
    assert "cancelled" in plain((await press(shop, cancel)).text).lower()
    stale = await press(shop, confirm)
    assert stale.text == "" and stale.toast == GONE
    assert await count(shop.db, PhoneNumber) == 0
    assert (await account(shop.db, ANN.platform_user_id)).balance_cents == 500

    quote = await number_quote(shop)
    bought = await press(shop, action(quote, "Confirm"))
    assert "is yours" in plain(bought.text)
    again = await press(shop, action(quote, "Confirm"))
    assert again.text == "" and again.toast == GONE
    late_cancel = await press(shop, action(quote, "Cancel"))
    assert late_cancel.text == "" and late_cancel.toast == GONE
    assert await count(shop.db, PhoneNumber) == 1
    assert (await account(shop.db, ANN.platform_user_id)).balance_cents == 500 - 130


async def test_confirm_after_cancel_on_telegram_only_says_the_offer_is_gone(db: Database) -> None:
    async with telegram_app(db) as h:
        cy = h.user(303)
        price = await h.command(cy, "/verify whatsapp")
        confirm = buttons(price)["Confirm"]
        cancelled = await h.tap(cy, price, buttons(price)["Cancel"])
        assert "Nothing was charged" in cancelled["text"] and not buttons(cancelled)
        since = len(h.fake.calls)
        answer = await h.press(cy, cancelled, confirm, strict=False)  # the keyboard an old client still shows
        assert answer.params.get("text") == GONE
        await _settled(h, 303)
        assert not [c for c in h.fake.calls[since:] if c.method == "editMessageText" and c.chat_id == cy.id]
        assert h.fake.messages_by_id(cy.id)[cancelled["message_id"]]["text"] == cancelled["text"]
        assert await count(db, Verification) == 0
        user = await account(db, "303")
        assert (user.balance_cents, user.held_cents) == (500, 0)
