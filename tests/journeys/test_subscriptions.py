"""/subscribe journeys: a Telegram Stars subscription sets the tier, each renewal is credited once per charge, a cancel
reaches editUserStarSubscription and a lapse returns to free; elsewhere the balance pays once per period."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from bot.handlers import router, subscribe
from bot.handlers.registry import load_flows
from bot.handlers.screens import Screen, SentRef
from core.models import (
    ChatIdentity,
    Hold,
    LedgerEntry,
    OutboxDelivery,
    Subscription,
    SubscriptionPayment,
    User,
)
from core.money import ledger, subscriptions
from core.money.accounts import Contact
from core.platform.db import Database
from core.services import Services, build_services
from tests.conftest import make_settings
from tests.harness import TelegramHarness, buttons, telegram_app

# Real providers (never called here): Telegram Stars are sold only while nothing sold is simulated.
LIVE_PROVIDERS = {
    "sandbox": "false", "textverified_api_key": "tv-test-key-0123456789", "textverified_api_username": "tv-user",
    "textverified_base_url": "http://127.0.0.1:9", "twilio_account_sid": "AC" + "0" * 32,
    "twilio_auth_token": "twilio-test-token", "twilio_api_base_url": "http://127.0.0.1:9",
    "groq_api_key": "gsk_live_test_key", "groq_base_url": "http://127.0.0.1:9",
}
CONSOLE = Contact("console", "local", chat_id="local", display_name="You", language_code="en")
DISCORD = Contact("discord", "7001", chat_id="7001", username="dee", display_name="Dee", language_code="en")


def plain(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


async def account(db: Database, platform_user_id: str) -> User:
    async with db.read() as session:
        identity = await session.scalar(select(ChatIdentity).where(ChatIdentity.platform_user_id == platform_user_id))
        assert identity is not None
        user = await session.get(User, identity.user_id)
        assert user is not None
        return user


async def subscription_of(db: Database, user_id: int) -> Subscription:
    async with db.read() as session:
        found = await session.scalar(select(Subscription).where(Subscription.user_id == user_id))
        assert found is not None
        return found


async def count(db: Database, model: type, *where: object) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def _answered(h: TelegramHarness, since: int, chat_id: int, words: str) -> str:
    call = await h.fake.wait_for(
        lambda c: c.method == "sendMessage" and c.chat_id == chat_id and words in plain(c.params.get("text", "")),
        since=since,
    )
    return plain(call.params["text"])


async def test_a_stars_subscription_sets_the_tier_renews_once_per_charge_cancels_and_lapses(db: Database) -> None:
    async with telegram_app(db, **LIVE_PROVIDERS) as h:
        ann = h.user(5101)
        tiers = await h.command(ann, "/subscribe")
        text = plain(tiers["text"])
        assert "Pro — $9.99/month" in text and "Business — $49.99/month" in text and "Your tier: Free" in text

        since = len(h.fake.calls)
        offer = await h.tap(ann, tiers, buttons(tiers)["Pro — $9.99/month"])
        link_call = await h.fake.wait_for("createInvoiceLink", since=since)
        params = link_call.params
        assert params["currency"] == "XTR" and params["subscription_period"] == 2592000
        assert params["prices"] == [{"label": "CumApp Pro", "amount": 999}]
        assert buttons(offer)["Subscribe for ⭐ 999/month"] == link_call.result
        payload = params["payload"]

        # The first payment: pre-checkout accepted, then successful_payment with is_recurring/is_first_recurring.
        pre = ann.pre_checkout(payload, 999)
        answer = await h.fake.wait_for(
            lambda c: c.method == "answerPreCheckoutQuery"
            and c.params.get("pre_checkout_query_id") == pre["pre_checkout_query"]["id"]
        )
        assert answer.params["ok"] is True
        first_until = int(time.time()) + 2592000
        since = len(h.fake.calls)
        ann.successful_payment(
            payload, 999, charge_id="stx-first", subscription_expiration_date=first_until, is_recurring=True,
            is_first_recurring=True,
        )
        assert "You are on Pro" in await _answered(h, since, ann.id, "Thank you")
        user = await account(db, "5101")
        assert user.tier == "pro"
        assert (await subscription_of(db, user.id)).paid_until == datetime.fromtimestamp(first_until, UTC)

        # The same invoice link paid again would start a second subscription: refused before any charge.
        again = ann.pre_checkout(payload, 999)
        refusal = await h.fake.wait_for(
            lambda c: c.method == "answerPreCheckoutQuery"
            and c.params.get("pre_checkout_query_id") == again["pre_checkout_query"]["id"]
        )
        assert refusal.params["ok"] is False and "already have a subscription" in refusal.params["error_message"]

        # A renewal, delivered twice (Telegram retries): credited once, answered once.
        second_until = first_until + 2592000
        since = len(h.fake.calls)
        for _ in range(2):
            ann.successful_payment(
                payload, 999, charge_id="stx-renewal", subscription_expiration_date=second_until, is_recurring=True
            )
        await _answered(h, since, ann.id, "was renewed")
        await asyncio.sleep(0.3)  # the second delivery had its chance to answer too
        renewed = [c for c in h.fake.calls[since:] if "was renewed" in plain(str(c.params.get("text", "")))]
        assert len(renewed) == 1
        assert await count(db, SubscriptionPayment, SubscriptionPayment.user_id == user.id) == 2
        sub = await subscription_of(db, user.id)
        assert sub.paid_until == datetime.fromtimestamp(second_until, UTC) and sub.charge_id == "stx-renewal"

        # Cancel: Telegram is told to stop the renewals; the tier stays until the paid date. Refused by Telegram,
        # it says so and nothing changes here.
        tiers = await h.command(ann, "/subscribe")
        assert "renews on" in plain(tiers["text"])
        h.fake.fail_next("editUserStarSubscription", status=400, description="Bad Request: CHARGE_ID_INVALID")
        refused = await h.press(ann, tiers, buttons(tiers)["Cancel subscription"])
        assert "unavailable right now" in refused.params["text"]
        assert (await subscription_of(db, user.id)).auto_renew is True
        since = len(h.fake.calls)
        cancelled = await h.tap(ann, tiers, buttons(tiers)["Cancel subscription"])
        edit = await h.fake.wait_for("editUserStarSubscription", since=since)
        assert edit.params == {"user_id": 5101, "telegram_payment_charge_id": "stx-renewal", "is_canceled": True}
        assert h.fake.star_subscriptions["stx-renewal"]["canceled"] is True
        assert "will not renew" in plain(cancelled["text"])
        assert (await account(db, "5101")).tier == "pro"
        assert (await subscription_of(db, user.id)).auto_renew is False

        # The date passes: the job (any instance) returns the account to free and says so in the chat.
        settings = h.services.settings
        just_before = datetime.fromtimestamp(second_until, UTC) - timedelta(seconds=1)
        assert await subscriptions.run_due(db, settings, now=just_before) == {}
        since = len(h.fake.calls)
        after = datetime.fromtimestamp(second_until, UTC) + timedelta(seconds=1)
        assert await subscriptions.run_due(db, settings, now=after) == {"lapsed": 1}
        assert await subscriptions.run_due(db, settings, now=after) == {}
        await _answered(h, since, ann.id, "has ended")
        assert (await account(db, "5101")).tier == "free"


async def test_telegram_in_sandbox_takes_no_stars_for_a_tier(db: Database) -> None:
    load_flows()
    services = build_services(make_settings(db.url, telegram_bot_token="123:abc", signup_bonus_cents=500), db=db)
    ann = Contact("telegram", "5201", chat_id="5201", display_name="Ann", language_code="en")
    [offer] = await router.handle_action(services, ann, "sub:pick:pro", SentRef("telegram", "5201", "1"))
    # The simulated balance pays instead, behind Confirm and Cancel; no invoice link is made.
    assert plain(offer.text).startswith("🧪 Sandbox") and "from your balance" in plain(offer.text)
    assert [b.label for b in offer.buttons[0]] == ["Confirm", "Cancel"]
    user = await account(db, "5201")
    payload = subscriptions.make_payload(services.settings, user.id, "pro")
    refusal = await subscribe.pre_checkout(services, ann, payload, "XTR", 999)
    assert refusal is not None and "Sandbox" in refusal


# --- the balance: Discord and the terminal ------------------------------------------------------------------------


@pytest.fixture
async def shop(db: Database) -> AsyncIterator[Services]:
    load_flows()
    yield build_services(make_settings(db.url, signup_bonus_cents=2500), db=db)


async def press(services: Services, contact: Contact, data: str) -> Screen:
    ref = SentRef(contact.platform, contact.chat_id or "", "9")
    [screen] = await router.handle_action(services, contact, data, ref)
    return screen


def action_of(screen: Screen, label: str) -> str:
    for row in screen.buttons:
        for button in row:
            if plain(button.label) == label and button.action:
                return button.action
    raise AssertionError(f"no button {label!r} in {[[b.label for b in row] for row in screen.buttons]}")


async def test_the_balance_pays_a_tier_once_per_period_until_cancelled(shop: Services) -> None:
    db, settings = shop.db, shop.settings
    [tiers] = await router.handle_command(shop, CONSOLE, "subscribe")
    offer = await press(shop, CONSOLE, action_of(tiers, "Pro — $9.99/month"))
    assert "$9.99 a month from your balance" in plain(offer.text)
    confirm = action_of(offer, "Confirm")
    done = await press(shop, CONSOLE, confirm)
    assert "You are on Pro" in plain(done.text) and "Available: $15.01" in plain(done.text)
    again = await press(shop, CONSOLE, confirm)  # a second press of the same Confirm
    assert again.toast == "This offer is no longer valid."
    user = await account(db, "local")
    assert user.tier == "pro" and user.balance_cents == 2500 - 999

    # The renewal: due runs repeated charge once for the period.
    paid_until = (await subscription_of(db, user.id)).paid_until
    due = paid_until + timedelta(seconds=1)
    assert await subscriptions.run_due(db, settings, now=due) == {"renewed": 1}
    assert await subscriptions.run_due(db, settings, now=due) == {}
    assert await subscriptions.settle(db, settings, user.id, now=due) == "skipped"
    user = await account(db, "local")
    assert user.tier == "pro" and user.balance_cents == 2500 - 2 * 999
    assert (await subscription_of(db, user.id)).paid_until == paid_until + subscriptions.PERIOD
    assert await count(db, Hold, Hold.user_id == user.id, Hold.purpose == "subscription") == 2

    # Cancel: no more charges; the tier stays until the paid date, then free.
    [tiers] = await router.handle_command(shop, CONSOLE, "subscribe")
    cancelled = await press(shop, CONSOLE, action_of(tiers, "Cancel subscription"))
    assert "will not renew" in plain(cancelled.text)
    later = paid_until + subscriptions.PERIOD + timedelta(seconds=1)
    assert await subscriptions.run_due(db, settings, now=later) == {"lapsed": 1}
    user = await account(db, "local")
    assert user.tier == "free" and user.balance_cents == 2500 - 2 * 999


async def test_a_renewal_the_balance_cannot_cover_lapses_to_free(shop: Services) -> None:
    db, settings = shop.db, shop.settings
    [tiers] = await router.handle_command(shop, DISCORD, "subscribe")
    offer = await press(shop, DISCORD, action_of(tiers, "Pro — $9.99/month"))
    await press(shop, DISCORD, action_of(offer, "Confirm"))
    user = await account(db, "7001")
    async with db.transaction() as session:  # spend all but $5 elsewhere
        await ledger.post(session, user.id, -(user.available_cents - 500), kind="grant", idempotency_key="spend")
    paid_until = (await subscription_of(db, user.id)).paid_until
    assert await subscriptions.run_due(db, settings, now=paid_until + timedelta(seconds=1)) == {"lapsed": 1}
    user = await account(db, "7001")
    assert user.tier == "free" and user.balance_cents == 500
    async with db.read() as session:
        notices = [plain(d.payload["text"]) for d in (await session.scalars(select(OutboxDelivery))).all()]
    assert any("could not renew" in text and "$9.99" in text for text in notices)


@pytest.mark.postgres_only
async def test_racing_renewal_runs_charge_a_period_once(shop: Services) -> None:
    db, settings = shop.db, shop.settings
    [tiers] = await router.handle_command(shop, CONSOLE, "subscribe")
    offer = await press(shop, CONSOLE, action_of(tiers, "Pro — $9.99/month"))
    await press(shop, CONSOLE, action_of(offer, "Confirm"))
    user = await account(db, "local")
    due = (await subscription_of(db, user.id)).paid_until + timedelta(seconds=1)
    outcomes = await asyncio.gather(*(subscriptions.settle(db, settings, user.id, now=due) for _ in range(6)))
    assert sorted(outcomes) == ["renewed"] + ["skipped"] * 5
    captures = await count(db, LedgerEntry, LedgerEntry.user_id == user.id, LedgerEntry.kind == "capture")
    assert captures == 2  # the first month and one renewal
    assert (await account(db, "local")).balance_cents == 2500 - 2 * 999
