"""The product through the real Telegram front end: verify a service, buy a number, text, receive and reply."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from core.models import Hold, Message, PhoneNumber, Verification
from core.platform.clock import utcnow
from core.platform.db import Database
from core.providers.sms import InboundSms
from tests.harness import TelegramHarness, buttons, telegram_app


def _find(message: dict, *labels: str) -> str:  # type: ignore[type-arg]
    """The callback data of the first button whose label contains one of `labels`."""
    for label, data in buttons(message).items():
        if any(part in label for part in labels):
            return data
    raise AssertionError(f"no button like {labels} in {list(buttons(message))}")


async def _wait_text(
    h: TelegramHarness, chat_id: int, needle: str, timeout: float = 5.0, since: int = 0
) -> dict:  # type: ignore[type-arg]
    call = await h.fake.wait_for(
        lambda c: c.ok and c.chat_id == chat_id and c.method in ("sendMessage", "editMessageText")
        and needle in (c.params.get("text") or ""), timeout=timeout, since=since,
    )
    if call.method == "editMessageText":
        return h.fake.messages_by_id(chat_id)[int(call.params["message_id"])]
    return call.result


async def test_verify_a_service_and_receive_the_code(db: Database) -> None:
    async with telegram_app(db) as h:
        ann = h.user(201)
        await h.command(ann, "/start")
        price = await h.command(ann, "/verify whatsapp")
        assert "WhatsApp" in price["text"] and "$" in price["text"]
        labels = buttons(price)
        assert "Confirm" in labels and "Cancel" in labels
        status = await h.tap(ann, price, labels["Confirm"])
        assert "+1" in status["text"]
        code_message = await _wait_text(h, ann.id, "🔑", timeout=5)
        raw = next(c.params["text"] for c in h.fake.calls_of("sendMessage") if "🔑" in c.params.get("text", ""))
        assert "<code>" in raw and "WhatsApp" in code_message["text"]
        copy = [b for row in code_message["reply_markup"]["inline_keyboard"] for b in row if "copy_text" in b]
        assert copy and copy[0]["copy_text"]["text"].isalnum()
        async with db.read() as session:
            verification = await session.scalar(select(Verification))
            assert verification is not None and verification.state in ("code_received", "completed")
            hold = await session.get(Hold, verification.hold_id)
            assert hold is not None and hold.state == "captured"
        # The time the code reached the chat is stamped once, for the code-to-chat figures in /stats.
        for _ in range(40):
            async with db.read() as session:
                delivered = await session.scalar(select(Verification.code_delivered_at))
            if delivered is not None:
                break
            await asyncio.sleep(0.05)
        assert delivered is not None and verification.code_received_at is not None
        assert delivered >= verification.code_received_at
        since = len(h.fake.calls)
        ann.send("/balance")
        balance = await _wait_text(h, ann.id, "Tier:", since=since)
        assert f"Available: ${(500 - verification.price_cents) / 100:.2f}" in balance["text"]


async def test_verify_then_cancel_refunds_and_a_second_press_changes_nothing(db: Database) -> None:
    async with telegram_app(db, sandbox_code_delay_seconds=30) as h:
        bea = h.user(202)
        await h.command(bea, "/start")
        price = await h.command(bea, "/verify telegram")
        status = await h.tap(bea, price, buttons(price)["Confirm"])
        cancel = _find(status, "Cancel")
        await h.tap(bea, status, cancel)
        second = await h.press(bea, status, cancel, strict=False)
        assert second.params.get("text")  # a short answer, no action
        async with db.read() as session:
            verification = await session.scalar(select(Verification))
            assert verification is not None and verification.state == "cancelled"
            hold = await session.get(Hold, verification.hold_id)
            assert hold is not None and hold.state == "released"
        since = len(h.fake.calls)
        bea.send("/balance")
        balance = await _wait_text(h, bea.id, "Tier:", since=since)
        assert "Available: $5.00" in balance["text"] and "Held: $0.00" in balance["text"]


async def test_another_users_verification_button_is_refused(db: Database) -> None:
    async with telegram_app(db, sandbox_code_delay_seconds=30) as h:
        owner, other = h.user(203), h.user(204)
        await h.command(owner, "/start")
        price = await h.command(owner, "/verify google")
        status = await h.tap(owner, price, buttons(price)["Confirm"])
        cancel = _find(status, "Cancel")
        await h.command(other, "/start")
        other_screen = h.screen(other.id)
        refused = await h.press(other, other_screen, cancel, strict=False)
        assert "someone else" in (refused.params.get("text") or "")
        async with db.read() as session:
            assert (await session.scalar(select(Verification.state))) == "active"


async def test_buy_a_number_send_an_sms_and_reply_to_an_inbound_one(db: Database) -> None:
    async with telegram_app(db, signup_bonus_cents=5000) as h:
        cam = h.user(205)
        await h.command(cam, "/start")
        numbers = await h.command(cam, "/numbers")
        countries = await h.tap(cam, numbers, _find(numbers, "Buy"))
        area = await h.tap(cam, countries, buttons(countries)["United States"])
        listing = await h.tap(cam, area, buttons(area)["Any"])
        pick = next(data for label, data in buttons(listing).items() if label.startswith("+1"))
        confirm = await h.tap(cam, listing, pick)
        assert "$" in confirm["text"]
        await h.tap(cam, confirm, buttons(confirm)["Confirm"])
        async with db.read() as session:
            number = await session.scalar(select(PhoneNumber))
            assert number is not None and number.state == "active"

        bad = await h.command(cam, "/sms 12 hello")
        assert "number" in bad["text"].lower()
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(Message)) == 0

        sent = await h.command(cam, "/sms +14155550123 Hello <friend> & co 🎉")
        assert "+1 415-555-0123" in sent["text"]
        async with db.read() as session:
            outbound = await session.scalar(select(Message).where(Message.direction == "outbound"))
            assert outbound is not None and outbound.body == "Hello <friend> & co 🎉"

        # An SMS comes in for the number: it is relayed into the chat with Reply/Suggest/Analyze/Block.
        since = len(h.fake.calls)
        await h.services.messaging.receive_inbound(
            InboundSms("sandbox", "SM-in-1", "+14155550123", number.e164, "Are you <there>? & 🙂", received_at=utcnow()),
            utcnow(),
        )
        relayed_call = await h.fake.wait_for(
            lambda c: c.method == "sendMessage" and "there" in (c.params.get("text") or ""), since=since
        )
        relayed = relayed_call.result
        assert "Are you <there>? & 🙂" in relayed["text"]
        labels = set(buttons(relayed))
        assert {"Reply", "Suggest reply", "Analyze", "Block"} <= {label.split(" ", 1)[-1] for label in labels} | labels
        # Wait for the dispatcher to record the platform message id, then reply with Telegram's reply function.
        for _ in range(50):
            await asyncio.sleep(0.05)
            async with db.read() as session:
                from core.models import OutboxDelivery

                recorded = await session.scalar(
                    select(OutboxDelivery.platform_message_id).where(OutboxDelivery.kind == "sms")
                )
            if recorded:
                break
        await h.reply(cam, relayed, "Yes, on my way")
        for _ in range(100):
            await asyncio.sleep(0.05)
            async with db.read() as session:
                # Bodies are encrypted at rest: the database cannot compare them, Python can.
                outbound = (await session.scalars(select(Message).where(Message.direction == "outbound"))).all()
                reply = next((m for m in outbound if m.body == "Yes, on my way"), None)
            if reply is not None:
                break
        assert reply is not None
        assert reply.to_e164 == "+14155550123" and reply.from_e164 == number.e164


async def test_inbox_cancel_tier_and_ban_from_the_chat(db: Database) -> None:
    async with telegram_app(db, signup_bonus_cents=5000) as h:
        dee = h.user(206, username="dee")
        await h.command(dee, "/start")
        empty = await h.command(dee, "/inbox")
        assert empty["text"]
        async with db.transaction() as session:
            from core.models import ChatIdentity

            identity = await session.scalar(select(ChatIdentity).where(ChatIdentity.platform_user_id == "206"))
            assert identity is not None
            session.add(PhoneNumber(user_id=identity.user_id, provider="sandbox", provider_sid="PN1",
                                    e164="+12125550111", country="US", state="active", monthly_price_cents=150,
                                    purchased_at=utcnow()))
        await h.services.messaging.receive_inbound(
            InboundSms("sandbox", "SM-inbox-1", "+14155550177", "+12125550111", "See you at 5", received_at=utcnow()),
            utcnow(),
        )
        await h.fake.wait_for(lambda c: c.method == "sendMessage" and "See you at 5" in (c.params.get("text") or ""))
        since = len(h.fake.calls)
        dee.send("/inbox")
        inbox = await _wait_text(h, dee.id, "Inbox</b> (", since=since)
        assert "(1–1 of 1)" in inbox["text"]
        assert any("415" in label for label in buttons(inbox))

        prompt = await h.command(dee, "/sms")
        assert prompt is not None
        cancelled = await h.command(dee, "/cancel")
        assert "Cancelled" in cancelled["text"]
        nothing = await h.command(dee, "/cancel")
        assert "nothing to cancel" in nothing["text"].lower()

        admin = h.user(999)
        tiered = await h.command(admin, "/tier @dee pro")
        assert "pro tier" in tiered["text"]
        wrong = await h.command(admin, "/tier @dee gold")
        assert "Unknown tier gold" in wrong["text"]
        banned = await h.command(admin, "/ban @dee")
        assert "banned" in banned["text"]
        since = len(h.fake.calls)
        dee.send("/inbox")
        refusal = await _wait_text(h, dee.id, "blocked", since=since)
        assert "Your account is blocked" in refusal["text"]


async def test_not_enough_balance_offers_a_working_top_up_button(db: Database) -> None:
    async with telegram_app(db, signup_bonus_cents=0, sandbox_code_delay_seconds=30) as h:
        kim = h.user(207)
        await h.command(kim, "/start")
        price = await h.command(kim, "/verify whatsapp")
        since = len(h.fake.calls)
        await h.press(kim, price, buttons(price)["Confirm"])
        refusal = await _wait_text(h, kim.id, "Not enough balance", since=since)
        offers = await h.tap(kim, refusal, buttons(refusal)["➕ Top up"])
        # The button opens /topup; this bot sells simulated numbers, so that says sandbox and offers no Stars.
        assert "Sandbox" in offers["text"] and not any(label.startswith("⭐") for label in buttons(offers))
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(Verification)) == 0
