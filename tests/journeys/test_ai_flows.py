"""AI assistance and templates through the real Telegram front end: relayed SMS → Suggest reply → Send → Twilio."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

# Importing a flow module registers its commands and buttons (until bot/handlers/registry.py lists them):
# ai and templates are under test, numbers maps messaging's refusals, sms serves the buttons of a sent SMS.
import bot.handlers.ai
import bot.handlers.numbers
import bot.handlers.sms
import bot.handlers.templates  # noqa: F401
from core.ai.service import AiService, build_ai_assistant
from core.messaging.service import MessagingService
from core.models import ChatIdentity, Conversation, Message, PhoneNumber, User
from core.platform.db import Database
from core.providers.plan import plan_providers
from core.providers.sms import InboundSms
from core.providers.twilio import TwilioProvider
from tests.fakes.groq_api import FakeGroqServer
from tests.fakes.telegram_api import FakeUser
from tests.fakes.twilio_api import FakeTwilioServer
from tests.harness import TelegramHarness, buttons, telegram_app

OWN = "+14155550100"
THEM = "+14155550142"
GROQ_LABEL = "Groq (openai/gpt-oss-20b)"
DRAFTS = [
    "Friday works! Does 9:30 suit you?",
    "Of course, I've moved you to Friday. See you then!",
    "Friday is full, sorry <3 Could Monday work instead?",
]


@dataclass
class AiApp:
    h: TelegramHarness
    twilio: FakeTwilioServer
    groq: FakeGroqServer
    db: Database

    async def sign_up(self, user_id: int, *, opted_in: bool = False, locale: str = "en") -> FakeUser:
        """A Telegram user with an account, one number and (optionally) AI turned on."""
        user = self.h.user(user_id, first_name="Sam", language_code=locale)
        await self.h.command(user, "/start")
        async with self.db.transaction() as session:
            account = await _account(session, user_id)
            account.ai_opt_in = opted_in
            session.add(PhoneNumber(
                user_id=account.id, provider="twilio", provider_sid=f"PN{user_id}", e164=OWN, country="US",
                monthly_price_cents=150,
            ))
        return user

    async def relay(self, user: FakeUser, body: str, sender: str = THEM) -> tuple[dict[str, Any], int]:
        """An SMS arrives for the user's number; returns the relayed chat message and the SMS's id."""
        since = len(self.h.fake.calls)
        outcome = await self.h.services.messaging.receive_inbound(
            InboundSms(provider="twilio", provider_message_id=f"SM{secrets.token_hex(8)}", from_e164=sender,
                       to_e164=OWN, body=body)
        )
        assert outcome.outcome == "relayed" and outcome.message_id is not None
        call = await self.h.fake.wait_for(
            lambda c: c.ok and c.method == "sendMessage" and c.chat_id == user.id and "Suggest reply" in str(
                c.params.get("reply_markup")
            ),
            since=since,
        )
        return call.result, outcome.message_id

    async def reply(self, user: FakeUser, message: dict[str, Any], text: str) -> dict[str, Any]:
        since = len(self.h.fake.calls)
        await self.h.reply(user, message, text)
        return (await self.h.answer_after(since, user.id)).result

    async def type(self, user: FakeUser, text: str) -> dict[str, Any]:
        return await self.h.command(user, text)

    def sms_at_twilio(self) -> list[dict[str, Any]]:
        return list(self.twilio.messages.values())


async def _account(session: Any, telegram_id: int) -> User:
    identity = await session.scalar(
        select(ChatIdentity).where(ChatIdentity.platform == "telegram",
                                   ChatIdentity.platform_user_id == str(telegram_id))
    )
    assert identity is not None
    user = await session.get(User, identity.user_id)
    assert user is not None
    return user


@asynccontextmanager
async def ai_app(db: Database, *, groq: bool = True) -> AsyncIterator[AiApp]:
    async with FakeTwilioServer() as twilio, FakeGroqServer() as fake_groq:
        overrides: dict[str, Any] = {
            "sandbox": "auto", "twilio_account_sid": twilio.account_sid, "twilio_auth_token": twilio.auth_token,
            "public_base_url": "https://cumapp.example",
        }
        if groq:
            overrides.update(groq_api_key="gsk_flows_test_key", groq_base_url=fake_groq.url, groq_timeout_seconds=2)
        async with telegram_app(db, **overrides) as h:
            services = h.services
            provider = TwilioProvider(twilio.account_sid, twilio.auth_token, twilio.base_url, backoff_seconds=0.001)
            services.messaging = MessagingService(db, {"twilio": provider}, services.settings, services.metrics)
            assistant = build_ai_assistant(services.settings, plan_providers(services.settings),
                                           answer_timeout_seconds=1.5)
            services.ai = AiService(db, assistant, services.settings, services.metrics)
            try:
                yield AiApp(h, twilio, fake_groq, db)
            finally:
                await services.ai.close()
                await services.messaging.close()


def label_for(message: dict[str, Any], prefix: str) -> str:
    found = [label for label in buttons(message) if label.startswith(prefix)]
    assert found, f"no button starting with {prefix!r} in {list(buttons(message))}"
    return found[0]


def data_for(message: dict[str, Any], prefix: str) -> str:
    return buttons(message)[label_for(message, prefix)]


# --- analysis ------------------------------------------------------------------------------------------------


async def test_analyze_text_full_of_markup_and_then_opting_in(db: Database) -> None:
    async with ai_app(db) as app:
        sam = await app.sign_up(201)
        tricky = "WIN a <b>FREE</b> iPhone & 🎁 gift card now: http://bit.ly/fr33 <script>"
        answer = await app.type(sam, f"/analyze {tricky}")
        text = answer["text"]
        assert "Intent: spam or phishing" in text and "This looks like spam or phishing" in text
        assert "Summary: Likely phishing: offers a prize or refund and pushes a link to bit[.]ly." in text
        assert "Sentiment: negative" in text and "Urgency: high" in text and "Warning: High risk of phishing" in text
        assert "Answer from offline rules" in text and "AI assistance is off" in text
        assert app.groq.requests == []
        assert all(c.status == 200 for c in app.h.fake.calls if c.method == "sendMessage")

        explain = await app.h.tap(sam, answer, data_for(answer, "🔓 Turn on AI assistance"))
        assert "with verification codes and phone numbers masked" in explain["text"]
        assert buttons(explain) == {"AI assistance: off": "set:ai"}
        settings = await app.h.tap(sam, explain, "set:ai")
        assert "AI assistance: on" in buttons(settings)

        app.groq.respond_with({
            "intent": "spam_phishing", "sentiment": "positive", "sentiment_score": 0.6, "urgency": "low",
            "summary": "A prize message pushing a short link <b>.", "warning": "Prize SMS with a short link & no sender.",
        })
        again = await app.type(sam, f"/analyze {tricky}")
        assert f"Answer from {GROQ_LABEL}" in again["text"]
        assert "Warning: Prize SMS with a short link & no sender." in again["text"]
        assert "Sentiment: positive (+0.60)" in again["text"]
        assert "🔓 Turn on AI assistance" not in buttons(again)
        assert len(app.groq.requests) == 1 and "iPhone" in app.groq.requests[0].user


async def test_analyze_without_text_asks_for_it_and_the_analyze_button(db: Database) -> None:
    async with ai_app(db, groq=False) as app:
        sam = await app.sign_up(202)
        prompt = await app.type(sam, "/analyze")
        assert "Send me the text to analyze" in prompt["text"]
        answer = await app.type(sam, "Your Acme verification code is 482913")
        assert "Intent: verification code" in answer["text"] and "Urgency: high" in answer["text"]
        # Without Groq configured, opting in changes nothing: no privacy nag, the engine says so.
        assert "AI assistance is off" not in answer["text"] and buttons(answer) == {}

        relayed, message_id = await app.relay(sam, "Hi! Are we still on for dinner tonight?")
        analysis = await app.h.tap(sam, relayed, f"ai:an:{message_id}")
        assert "Analysis of the SMS from +1 415-555-0142" in analysis["text"]
        assert "Intent: question" in analysis["text"] and "offline rules" in analysis["text"]
        # The relayed SMS itself is left as it was.
        assert "Suggest reply" in str(app.h.fake.messages_by_id(sam.id)[relayed["message_id"]]["reply_markup"])


# --- reply drafts: Suggest reply → Send → the SMS at the provider --------------------------------------------


async def test_suggest_reply_on_a_relayed_sms_then_send_reaches_twilio(db: Database) -> None:
    async with ai_app(db) as app:
        sam = await app.sign_up(203, opted_in=True)
        app.groq.respond_with({"drafts": DRAFTS})
        relayed, message_id = await app.relay(sam, "Could I move my cleaning to Friday? My code is 771204.")

        drafts = await app.h.tap(sam, relayed, f"ai:sug:{message_id}")
        text = drafts["text"]
        assert "Reply drafts for +1 415-555-0142" in text
        assert "Last message: Could I move my cleaning to Friday?" in text
        for number, draft in enumerate(DRAFTS, 1):
            assert f"{number}. {draft}" in text
        assert f"Answer from {GROQ_LABEL}" in text and "Nothing is sent until you press Send." in text
        labels = list(buttons(drafts))
        assert labels[:3] == ["📤 Send 1", "✏️ Edit 1", "🔄 New 1"] and "📤 Send 3" in labels
        (request,) = app.groq.requests
        assert "771204" not in request.user and "[CODE]" in request.user
        assert app.sms_at_twilio() == []  # drafts alone never send anything

        sent = await app.h.tap(sam, drafts, data_for(drafts, "📤 Send 2"))
        assert "SMS to +1 415-555-0142" in sent["text"]
        assert "Open conversation" in buttons(sent)
        (sms,) = app.sms_at_twilio()
        assert (sms["to"], sms["from"], sms["body"]) == (THEM, OWN, DRAFTS[1])
        assert sms["_status_callback"].startswith("https://cumapp.example/webhooks/twilio/status")
        async with db.read() as session:
            out = (await session.scalars(select(Message).where(Message.direction == "outbound"))).all()
            account = await _account(session, sam.id)
        assert [(m.body, m.to_e164, m.status) for m in out] == [(DRAFTS[1], THEM, "queued")]
        assert account.balance_cents == 500 - out[0].price_cents  # charged through the ledger

        # The old drafts message has no buttons left; a stale Send press is not a second SMS.
        await app.h.press(sam, drafts, buttons(drafts)["📤 Send 2"], strict=False)
        await asyncio.sleep(0.2)
        assert len(app.sms_at_twilio()) == 1


async def test_edit_a_draft_by_replying_then_by_typing(db: Database) -> None:
    async with ai_app(db, groq=False) as app:
        sam = await app.sign_up(204)
        relayed, message_id = await app.relay(sam, "Your parcel will arrive today between 2 and 4 pm.")
        drafts = await app.h.tap(sam, relayed, f"ai:sug:{message_id}")
        assert "offline rules" in drafts["text"] and "Thanks for the update!" in drafts["text"]

        since = len(app.h.fake.calls)
        edit = await app.h.tap(sam, drafts, data_for(drafts, "✏️ Edit 2"))
        call = next(c for c in app.h.fake.calls[since:] if c.method == "sendMessage" and c.chat_id == sam.id)
        assert "<code>Please leave the package at the door. Thank you!</code>" in call.params["text"]
        assert buttons(edit)["📋 Copy draft"] == "Please leave the package at the door. Thank you!"
        assert app.sms_at_twilio() == []

        sent = await app.reply(sam, edit, "Please leave it with the neighbour at no. 5 & ring twice")
        assert "SMS to +1 415-555-0142" in sent["text"]
        assert [m["body"] for m in app.sms_at_twilio()] == ["Please leave it with the neighbour at no. 5 & ring twice"]
        # The Edit step's pending question was answered by the reply: the next text is not another SMS.
        stray = await app.type(sam, "thanks bot")
        assert "/help" in stray["text"]
        assert len(app.sms_at_twilio()) == 1

        # On a platform without replies (Discord's modal, the terminal) the typed answer is the edit.
        edit_again = await app.h.tap(sam, drafts, data_for(drafts, "✏️ Edit 1"))
        assert "Edit draft 1" in edit_again["text"]
        await app.type(sam, "Great, see you later")
        assert [m["body"] for m in app.sms_at_twilio()][-1] == "Great, see you later"

        # Edit, then another button: the user moved on, and what they type next is not an SMS.
        await app.h.tap(sam, drafts, data_for(drafts, "✏️ Edit 3"))
        await app.h.press(sam, drafts, data_for(drafts, "🔄 New 1"))
        assert "/help" in (await app.type(sam, "what was that?"))["text"]
        assert len(app.sms_at_twilio()) == 2


async def test_regenerate_one_draft(db: Database) -> None:
    async with ai_app(db) as app:
        sam = await app.sign_up(205, opted_in=True)
        app.groq.respond_with({"drafts": DRAFTS}, times=1)
        relayed, message_id = await app.relay(sam, "Could I move my cleaning to Friday?")
        drafts = await app.h.tap(sam, relayed, f"ai:sug:{message_id}")
        app.groq.respond_with({"drafts": [DRAFTS[0], "Friday at 3pm is free. Shall I book it?", DRAFTS[2]]}, times=1)
        since = len(app.h.fake.calls)
        regenerated = await app.h.tap(sam, drafts, data_for(drafts, "🔄 New 3"))
        assert "3. Friday at 3pm is free. Shall I book it?" in regenerated["text"]
        assert f"1. {DRAFTS[0]}" in regenerated["text"] and f"2. {DRAFTS[1]}" in regenerated["text"]
        answer = next(c for c in app.h.fake.calls[since:] if c.method == "answerCallbackQuery")
        assert answer.params.get("text") in (None, "New draft 3.")

        sent = await app.h.tap(sam, regenerated, data_for(regenerated, "📤 Send 3"))
        assert "SMS to" in sent["text"]
        assert app.sms_at_twilio()[-1]["body"] == "Friday at 3pm is free. Shall I book it?"

    async with ai_app(db, groq=False) as app:
        ann = await app.sign_up(206)
        relayed, message_id = await app.relay(ann, "hello", sender="+14155550177")
        drafts = await app.h.tap(ann, relayed, f"ai:sug:{message_id}")
        call = await app.h.press(ann, drafts, data_for(drafts, "🔄 New 1"))
        assert "offline rules have no other suggestion" in call.params["text"]


async def test_suggest_command_and_picking_a_conversation(db: Database) -> None:
    async with ai_app(db, groq=False) as app:
        sam = await app.sign_up(207)
        nothing = await app.type(sam, "/suggest")
        assert "No conversations yet" in nothing["text"]
        await app.relay(sam, "Is the bike still for sale?", sender="+14155550133")
        await app.relay(sam, "Hola, ¿qué tal?", sender="+14155550144")
        latest = await app.type(sam, "/suggest")
        assert "Reply drafts for +1 415-555-0144" in latest["text"]
        picker = await app.h.tap(sam, latest, buttons(latest)["💬 Other conversation"])
        assert "Pick a conversation" in picker["text"]
        older = await app.h.tap(sam, picker, buttons(picker)["+1 415-555-0133"])
        assert "Reply drafts for +1 415-555-0133" in older["text"]
        assert "Let me check and get back to you shortly." in older["text"]


async def test_not_opted_in_nothing_reaches_groq_in_any_chat_flow(db: Database) -> None:
    async with ai_app(db) as app:
        sam = await app.sign_up(208, opted_in=False)
        relayed, message_id = await app.relay(sam, "Your code is 123456. Reply with it to win!")
        drafts = await app.h.tap(sam, relayed, f"ai:sug:{message_id}")
        assert "AI assistance is off" in drafts["text"] and "🔓 Turn on AI assistance" in buttons(drafts)
        await app.h.press(sam, drafts, data_for(drafts, "🔄 New 1"))
        await app.h.tap(sam, relayed, f"ai:an:{message_id}")
        await app.type(sam, "/analyze hello there")
        await app.type(sam, "/suggest")
        listing = await app.type(sam, "/templates")
        ask = await app.h.tap(sam, listing, buttons(listing)["✨ Draft with AI"])
        assert "Describe the template" in ask["text"]
        await app.type(sam, "remind clients their invoice is due")
        assert app.groq.requests == []


async def test_a_refused_send_says_why_and_sends_nothing(db: Database) -> None:
    async with ai_app(db, groq=False) as app:
        sam = await app.sign_up(209)
        relayed, message_id = await app.relay(sam, "Buy cheap meds now")
        drafts = await app.h.tap(sam, relayed, f"ai:sug:{message_id}")
        async with db.transaction() as session:
            conversation = await session.scalar(select(Conversation).where(Conversation.remote_e164 == THEM))
            assert conversation is not None
            conversation.blocked = True
        since = len(app.h.fake.calls)
        call = await app.h.press(sam, drafts, data_for(drafts, "📤 Send 1"))
        answer = call.params.get("text") or (await app.h.answer_after(since, sam.id)).params.get("text", "")
        assert "blocked" in answer.lower()
        assert app.sms_at_twilio() == []


# --- templates --------------------------------------------------------------------------------------------------


async def test_template_dialog_fills_checks_and_sends(db: Database) -> None:
    async with ai_app(db, groq=False) as app:
        sam = await app.sign_up(210)
        await app.relay(sam, "Hi, I'd like to book a cleaning.")
        async with db.transaction() as session:
            conversation = await session.scalar(select(Conversation).where(Conversation.remote_e164 == THEM))
            assert conversation is not None
            conversation.contact_name = "Dana"
        listing = await app.type(sam, "/templates")
        assert "Built-in: Appointment reminder, Delivery update, Verification notice, Follow-up" in listing["text"]
        card = await app.h.tap(sam, listing, buttons(listing)["📌 Appointment reminder"])
        assert "Variables: {name} (optional), {date}, {time}" in card["text"]
        name_step = await app.h.tap(sam, card, buttons(card)["📤 Dana (+1 415-555-0142)"])
        assert "1 of 3" in name_step["text"] and "{name}" in name_step["text"]
        date_step = await app.h.tap(sam, name_step, buttons(name_step)["Dana"])
        assert "2 of 3" in date_step["text"] and "{date}" in date_step["text"]

        refused = await app.type(sam, "31/02/2025")
        assert "“31/02/2025” doesn't fit {date}: expected a date such as" in refused["text"]
        assert "2 of 3" in refused["text"]
        time_step = await app.type(sam, "2025-07-01")
        assert "3 of 3" in time_step["text"]
        bad_time = await app.type(sam, "teatime")
        assert "doesn't fit {time}" in bad_time["text"]
        preview = await app.h.tap(sam, bad_time, buttons(bad_time)["09:00"])
        expected = ("Hi Dana, this is a reminder of your appointment on 2025-07-01 at 09:00. "
                    "Reply YES to confirm or call us to reschedule.")
        assert "Ready to send to Dana (+1 415-555-0142)" in preview["text"] and expected in preview["text"]
        assert app.sms_at_twilio() == []
        sent = await app.h.tap(sam, preview, buttons(preview)["📤 Send"])
        assert "SMS to +1 415-555-0142" in sent["text"]
        assert [m["body"] for m in app.sms_at_twilio()] == [expected]
        # The dialog is over: plain text is not taken as a template value any more.
        assert "/help" in (await app.type(sam, "09:30"))["text"]


async def test_a_template_without_variables_goes_out_in_two_taps(db: Database) -> None:
    async with ai_app(db, groq=False) as app:
        sam = await app.sign_up(211)
        await app.relay(sam, "Hello!")
        listing = await app.type(sam, "/templates")
        ask_name = await app.h.tap(sam, listing, buttons(listing)["➕ New template"])
        assert "name for the template" in ask_name["text"]
        ask_body = await app.type(sam, "Closed <Monday> & Tuesday")
        assert "Now send the text of Closed <Monday> & Tuesday" in ask_body["text"]
        malformed = await app.type(sam, "We are closed on {day}. Sorry!")
        assert "{day} is not a variable I know" in malformed["text"] and "Please send it again." in malformed["text"]
        broken = await app.type(sam, "We are closed {tomorrow. Sorry!")
        assert "brace that is not part of a variable" in broken["text"]
        card = await app.type(sam, "We are closed today & tomorrow. Sorry!")
        assert "Template Closed <Monday> & Tuesday saved." in card["text"]
        assert "Variables: none" in card["text"]

        # Two taps from the list: the template, then the conversation.
        listing = await app.type(sam, "/templates")
        card = await app.h.tap(sam, listing, buttons(listing)["📝 Closed <Monday> & Tuesday"])
        sent = await app.h.tap(sam, card, buttons(card)["📤 +1 415-555-0142"])
        assert "SMS to +1 415-555-0142" in sent["text"]
        assert [m["body"] for m in app.sms_at_twilio()] == ["We are closed today & tomorrow. Sorry!"]


async def test_edit_rename_and_delete_with_confirmation(db: Database) -> None:
    async with ai_app(db, groq=False) as app:
        sam = await app.sign_up(212)
        listing = await app.type(sam, "/templates")
        await app.h.tap(sam, listing, buttons(listing)["➕ New template"])
        await app.type(sam, "Pickup")
        card = await app.type(sam, "Hi {name}, order {order} is ready.")
        assert "To send it you need a conversation first" in card["text"]

        ask = await app.h.tap(sam, card, buttons(card)["✏️ Edit text"])
        assert buttons(ask)["📋 Copy draft"] == "Hi {name}, order {order} is ready."
        updated = await app.type(sam, "Hi {name}, order {order} is ready at {place}.")
        assert "Template Pickup updated." in updated["text"] and "{place}" in updated["text"]
        listing = await app.type(sam, "/templates")
        card = await app.h.tap(sam, listing, buttons(listing)["📝 Pickup"])
        await app.h.tap(sam, card, buttons(card)["🏷 Rename"])
        renamed = await app.type(sam, "Order ready")
        assert "Template Order ready updated." in renamed["text"]

        # Someone else cannot delete it by forging the button: it reads as missing to them.
        async with db.read() as session:
            from core.models import MessageTemplate

            template_id = await session.scalar(select(MessageTemplate.id))
        eve = await app.sign_up(213)
        shown = await app.type(eve, "/templates")
        call = await app.h.press(eve, shown, f"tpl:delok:{template_id}", strict=False)
        assert "doesn't exist anymore" in call.params.get("text", "")

        confirm = await app.h.tap(sam, renamed, buttons(renamed)["🗑 Delete"])
        assert "Delete the template Order ready? This can't be undone." in confirm["text"]
        back = await app.h.tap(sam, confirm, buttons(confirm)["Cancel"])
        assert "Order ready" in back["text"]
        confirm = await app.h.tap(sam, back, buttons(back)["🗑 Delete"])
        gone = await app.h.tap(sam, confirm, buttons(confirm)["🗑 Yes, delete"])
        assert "Template Order ready deleted." in gone["text"] and "Yours: none yet" in gone["text"]


async def test_draft_a_template_with_ai_then_save_it(db: Database) -> None:
    async with ai_app(db) as app:
        sam = await app.sign_up(214, opted_in=True)
        app.groq.respond_with({"name": "Invoice due", "body": "Hi {name}, invoice {order} for {amount} is due {when}."},
                              times=1)
        listing = await app.type(sam, "/templates")
        await app.h.tap(sam, listing, buttons(listing)["✨ Draft with AI"])
        preview = await app.type(sam, "remind clients their invoice is due")
        assert "Draft template: Invoice due" in preview["text"] and GROQ_LABEL in preview["text"]
        # The model used a variable we cannot check: saving waits until the text is fixed.
        assert "{when} is not a variable I know" in preview["text"] and "💾 Save" not in buttons(preview)
        app.groq.respond_with({"name": "Invoice due", "body": "Hi {name}, invoice {order} for {amount} is due {date}."},
                              times=1)
        retried = await app.h.tap(sam, preview, buttons(preview)["🔄 Try again"])
        assert "💾 Save" in buttons(retried)
        card = await app.h.tap(sam, retried, buttons(retried)["💾 Save"])
        assert "Template Invoice due saved." in card["text"]
        assert "Variables: {name} (optional), {order}, {amount}, {date}" in card["text"]
        assert len(app.groq.requests) == 2 and "remind clients" in app.groq.requests[0].user

        # A second draft with the same name is saved under a free one, after the user's own fix.
        listing = await app.type(sam, "/templates")
        await app.h.tap(sam, listing, buttons(listing)["✨ Draft with AI"])
        app.groq.respond_with({"name": "Invoice due", "body": "Pay {amount} by {date} {oops"}, times=1)
        preview = await app.type(sam, "another invoice reminder")
        assert "brace that is not part of a variable" in preview["text"]
        await app.h.tap(sam, preview, buttons(preview)["✏️ Edit text"])
        card = await app.type(sam, "Please pay {amount} by {date}.")
        assert "Template Invoice due (2) saved." in card["text"]
    async with db.read() as session:
        from core.models import MessageTemplate

        names = sorted((await session.scalars(select(MessageTemplate.name))).all())
    assert names == ["Invoice due", "Invoice due (2)"]


async def test_spanish_user_gets_spanish_screens(db: Database) -> None:
    async with ai_app(db, groq=False) as app:
        ana = await app.sign_up(215, locale="es")
        answer = await app.type(ana, "/analyze Tu pedido llega mañana")
        assert "Intención: aviso de entrega" in answer["text"] and "reglas sin conexión" in answer["text"]
        # An English scam, read by a Spanish user: the offline answer speaks the user's language, not the SMS's.
        scam = await app.type(ana, "/analyze USPS: your package is on hold. Pay the $1.99 fee at usps-redeliver.top/x")
        assert "Intención: spam o phishing" in scam["text"] and "Tono: negativo" in scam["text"]
        assert "Urgencia: alta" in scam["text"] and "Atención: Riesgo alto de phishing" in scam["text"]
        assert "Resumen: Posible phishing que suplanta a USPS: pide pagar $1.99" in scam["text"]
        listing = await app.type(ana, "/templates")
        assert "Recordatorio de cita" in listing["text"] and "✨ Redactar con IA" in buttons(listing)


@pytest.fixture(autouse=True)
def _quiet_ptb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
