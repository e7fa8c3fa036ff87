"""An SMS's price is shown before it is sent and rounded once over the day; its status is one message, edited in
place as it moves (the terminal prints one short update line; Telegram edits, and sends anew only when the
message can no longer be edited)."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from core.models import ChatIdentity, KeyValue, Message, User
from core.platform.db import Database
from core.providers.sandbox_sms import SandboxSmsProvider
from core.providers.sms import StatusUpdate
from tests.core.messaging.test_service import give_number
from tests.journeys import test_sms_flows
from tests.journeys.test_sms_flows import SENDER, App

app = test_sms_flows.app  # the terminal chat with Twilio's fake, as a fixture of this module too


async def test_price_before_sending_one_status_message_and_the_rounding_carried_over(app: App, db: Database) -> None:
    await app.buy_a_number()  # $1.50 of the $10.00
    usage = await app.type("/sms")
    assert "to a number in United States costs $0.02" in usage
    prompt = await app.type(SENDER)
    assert "What should the SMS to +1 415-555-0199 say?" in prompt and "it costs $0.02" in prompt
    card = await app.type("Hello there")
    assert card.count("SMS to +1 415-555-0199") == 1 and "1 part(s) · $0.02" in card
    (sid,) = app.twilio.messages

    app.mark = len(app.out.getvalue())
    for status in ("sent", "delivered"):
        assert await app.twilio.deliver_status(sid, status) == 200
    updates = await app.printed("✓✓ delivered")
    # The same message, updated: one short line per change, no second card, no renumbered buttons.
    title = card.strip().splitlines()[0]
    assert title.startswith("📤 SMS to +1 415-555-0199 from +1 ")
    assert [line for line in updates.splitlines() if line] == [
        f"↻ {title}: 1 part(s) · $0.02 · ✓ sent", f"↻ {title}: 1 part(s) · $0.02 · ✓✓ delivered",
    ]

    # 1 cent plus 30% is 1.3 cents: the day's second text costs 1 cent, so two cost 3 (2.6 rounded up once).
    second = await app.type(f"/sms {SENDER} And again")
    assert "1 part(s) · $0.01" in second
    async with db.read() as session:
        prices = (await session.scalars(select(Message.price_cents).order_by(Message.id))).all()
        balance = (await session.scalars(select(User.balance_cents))).one()
    assert prices == [2, 1] and balance == 1000 - 150 - 3
    shown = await app.type("/history")
    assert "(1–4 of 4)" in shown and "SMS to +1 415-555-0199 · -$0.01 · charged" in shown
    assert "SMS to +1 415-555-0199 · -$0.02 · charged" in shown and "number +1 " in shown


async def test_telegram_edits_the_status_message_and_sends_anew_only_when_it_is_gone(db: Database) -> None:
    from tests.harness import telegram_app

    async with telegram_app(db) as h:
        ann = h.user(1001)
        await h.command(ann, "/start")
        async with db.read() as session:
            identity = await session.scalar(select(ChatIdentity).where(ChatIdentity.platform_user_id == "1001"))
        assert identity is not None
        await give_number(db, identity.user_id, "+12125550100", provider="sandbox")

        async def settled(message_id: int) -> str:
            """The status message's text once the sandbox said delivered (sent, then delivered, 0.3 s apart)."""
            call = await h.fake.wait_for(
                lambda c: c.ok and c.method == "editMessageText" and "delivered" in str(c.params.get("text"))
                and int(c.params["message_id"]) == message_id
            )
            return str(call.params["text"])

        since = len(h.fake.calls)
        card = await h.command(ann, "/sms +14155550199 Hello there")
        assert "SMS to <b>+1 415-555-0199</b>" in card["text"] or "SMS to +1 415-555-0199" in card["text"]
        assert "✓✓ delivered" in await settled(card["message_id"])
        cards = [c for c in h.fake.calls[since:] if c.method == "sendMessage" and "SMS to" in str(c.params)]
        assert len(cards) == 1  # queued, sent and delivered were one message

        # The user deleted the message before the news came: it comes once as a new message, then edits that.
        # The test gives the news itself, once the message is deleted and a step at a time: the sandbox's own,
        # 0.3 s after the send, could come before the deletion on a busy machine (the edit then lands) and was this
        # journey's one CI failure.
        sandbox = h.services.messaging.providers["sandbox"]
        assert isinstance(sandbox, SandboxSmsProvider)
        sandbox.status_delay_seconds = 3600
        since = len(h.fake.calls)
        gone = await h.command(ann, "/sms +14155550199 Second one")
        await h.front.application.bot.delete_message(chat_id=ann.id, message_id=gone["message_id"])
        sent_sms = await _status_card_recorded(db)

        async def tell(status: str) -> None:
            assert await h.services.messaging.apply_status(StatusUpdate(sent_sms, status, provider="sandbox"))

        await tell("sent")
        resent = await h.fake.wait_for(
            lambda c: c.ok and c.method == "sendMessage" and "SMS to" in str(c.params.get("text"))
            and c.result["message_id"] != gone["message_id"], since=since,
        )
        assert "✓ sent" in str(resent.params["text"])
        await tell("delivered")
        assert "✓✓ delivered" in await settled(resent.result["message_id"])
        news = [c for c in h.fake.calls[since:] if c.method == "sendMessage" and "SMS to" in str(c.params)]
        assert len(news) == 2  # the answer, and the one new status message that replaced it


async def _status_card_recorded(db: Database, within: float = 5.0) -> str:
    """The provider id of the newest SMS sent, once the chat message that shows its status is recorded (the
    answer reaches the chat a moment before it is), so that news about it has a message to edit."""
    for _ in range(int(within / 0.05)):
        async with db.read() as session:
            message = await session.scalar(
                select(Message).where(Message.direction == "outbound").order_by(Message.id.desc()).limit(1))
            if message is not None and message.provider_message_id and await session.scalar(
                    select(KeyValue.key).where(KeyValue.key == f"smsref:{message.id}")):
                return message.provider_message_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"no status message recorded for the newest SMS within {within} s")
