"""Journeys through the router and the terminal chat: buy a number, text, reply, inbox, block, stale buttons."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

# Imported for their registrations (/numbers, /sms, /inbox) until the registry lists them.
import bot.handlers.numbers
import bot.handlers.sms  # noqa: F401
from bot.console import ConsoleFrontEnd
from bot.handlers import router
from bot.handlers.screens import SentRef
from bot.handlers.sms import split_recipient
from core.messaging.service import MessagingService
from core.models import ChatIdentity, Conversation, Message, PhoneNumber
from core.money.accounts import Contact
from core.platform.db import Database
from core.platform.outbox import OutboxDispatcher
from core.providers.sms import InboundSms
from core.providers.twilio import TwilioProvider
from core.services import Services, build_services
from tests.core.messaging.test_service import give_number, sms_settings
from tests.fakes.twilio_api import FakeTwilioServer
from tests.harness import deliveries_recorded
from webhooks import twilio as twilio_routes
from webhooks import vonage as vonage_routes
from webhooks.server import WebServer, create_app

SENDER = "+14155550199"
NUMBER_LABEL = re.compile(r"^\+1 \d{3}-\d{3}-\d{4}$")


class ChatOutput(io.StringIO):
    """The terminal's output, announcing every write so tests wait for text without polling."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        self.changed.set()
        return written


@dataclass
class App:
    services: Services
    front: ConsoleFrontEnd
    out: ChatOutput
    twilio: FakeTwilioServer
    mark: int = 0

    async def type(self, line: str) -> str:
        """Type a line in the terminal chat; returns what the chat printed in answer."""
        self.mark = len(self.out.getvalue())
        await self.front.handle_line(line)
        return self.out.getvalue()[self.mark:]

    def choice(self, label: str | re.Pattern[str]) -> str:
        for number, button in self.front.chat.choices.items():
            if (label.match(button.label) if isinstance(label, re.Pattern) else button.label == label):
                return str(number)
        labels = [b.label for b in self.front.chat.choices.values()]
        raise AssertionError(f"no button {label!r} among {labels}")

    def label(self, pattern: re.Pattern[str]) -> str:
        return self.front.chat.choices[int(self.choice(pattern))].label

    async def press(self, label: str | re.Pattern[str]) -> str:
        return await self.type(self.choice(label))

    async def printed(self, text: str, timeout: float = 5.0) -> str:
        """Wait until the outbox has printed `text` (relayed SMS and notices come that way)."""
        async with asyncio.timeout(timeout):
            while text not in self.out.getvalue()[self.mark:]:
                self.out.changed.clear()
                await self.out.changed.wait()
        return self.out.getvalue()[self.mark:]

    async def delivered(self) -> None:
        """Until every chat message is recorded as sent: replying in the chat needs the recorded message id."""
        await deliveries_recorded(self.services.db)

    async def buy_a_number(self) -> str:
        await self.type("/numbers")
        await self.press("Buy")
        await self.press("United States")
        await self.press("Any")
        label = self.label(NUMBER_LABEL)
        await self.press(label)
        await self.press("Confirm")
        return "+" + re.sub(r"\D", "", label)


@pytest.fixture
async def app(db: Database) -> AsyncIterator[App]:
    async with FakeTwilioServer() as fake:
        settings = sms_settings(db, signup_bonus_cents=1000)
        services = build_services(settings, db=db)
        provider = TwilioProvider(fake.account_sid, fake.auth_token, fake.base_url, backoff_seconds=0.001)
        services.messaging = MessagingService(db, {"twilio": provider}, settings, services.metrics)
        server = WebServer(create_app(services, [twilio_routes.add_routes, vonage_routes.add_routes]), "127.0.0.1", 0)
        await server.start()
        # Twilio reaches our loopback server directly here, so that is the public address signatures use.
        settings.public_base_url = f"http://127.0.0.1:{server.port}"
        out = ChatOutput()
        front = ConsoleFrontEnd(services, out=out, lines=asyncio.Queue())
        dispatcher = OutboxDispatcher(db, {"console": front.sender}, metrics=services.metrics, base_backoff=0.05)
        services.outbox = dispatcher
        await dispatcher.start()
        try:
            yield App(services, front, out, fake)
        finally:
            await dispatcher.stop()
            await server.stop()
            await services.messaging.close()


async def test_buy_a_number_step_by_step_and_see_it_listed(app: App, db: Database) -> None:
    assert "You don't own a number yet" in await app.type("/numbers")
    countries = await app.press("Buy")
    assert "United States" in countries and "Canada" in countries and "United Kingdom" in countries
    area = await app.press("United States")
    assert "area code" in area and "] Any" in area
    numbers = await app.press("Any")
    assert "Pick one" in numbers
    label = app.label(NUMBER_LABEL)
    quote = await app.press(label)
    assert "Monthly price: $1.50" in quote and "Available: $10.00" in quote
    assert "] Confirm" in quote and "] Cancel" in quote
    bought = await app.press("Confirm")
    assert f"{label} is yours for $1.50/month" in bought
    listed = await app.type("/numbers")
    assert f"{label} · $1.50/month" in listed and f"Release {label}" in listed
    assert "Available: <b>$8.50</b>" not in listed
    e164 = "+" + re.sub(r"\D", "", label)
    (bought_at_twilio,) = app.twilio.incoming_numbers.values()
    assert bought_at_twilio["phone_number"] == e164
    assert bought_at_twilio["sms_url"] == f"{app.services.settings.public_base_url}/webhooks/twilio/sms"


async def test_typed_area_code_and_cancel(app: App) -> None:
    await app.type("/numbers")
    await app.press("Buy")
    await app.press("United States")
    assert "3 digits" in await app.type("12")
    results = await app.type("212")
    assert "(212)" in results and "+1 212-" in results
    await app.press(app.label(NUMBER_LABEL))
    assert "Nothing was charged" in await app.press("Cancel")
    assert not app.twilio.incoming_numbers
    await app.type("/numbers")
    await app.press("Buy")
    await app.press("Canada")
    assert "+1 416-" in await app.type("any")


async def test_sms_to_an_invalid_number_gets_a_clear_error(app: App) -> None:
    await app.buy_a_number()
    answer = await app.type("/sms +1 555 hello")
    assert "+1 555 isn't a number I can text" in answer and "country code" in answer
    assert not app.twilio.requests_to("Messages.json")
    usage = await app.type("/sms")
    assert "/sms +14155550123" in usage


async def test_sms_then_status_updates_and_a_failure_notice(app: App, db: Database) -> None:
    own = await app.buy_a_number()
    answer = await app.type(f"/sms {SENDER} Hello there")
    assert "SMS to +1 415-555-0199" in answer and "1 part(s) · $0.02" in answer
    (sid,) = app.twilio.messages
    assert app.twilio.messages[sid]["from"] == own and app.twilio.messages[sid]["body"] == "Hello there"
    assert app.twilio.messages[sid]["_status_callback"].endswith("/webhooks/twilio/status")
    for status, shown in (("sent", "✓ sent"), ("delivered", "✓✓ delivered")):
        app.mark = len(app.out.getvalue())
        assert await app.twilio.deliver_status(sid, status) == 200
        async with db.read() as session:
            assert await session.scalar(select(Message.status).where(Message.provider_message_id == sid)) == status
        assert "SMS to +1 415-555-0199" in await app.printed(shown)  # the answer to /sms, updated
    await app.type("/sms +1 (415) 555-0123 second try")
    (second,) = [s for s in app.twilio.messages if s != sid]
    assert await app.twilio.deliver_status(second, "undelivered", 30003) == 200
    notice = await app.printed("was not delivered")
    assert "+1 415-555-0123" in notice and "phone is off" in notice


async def test_a_relayed_sms_is_answered_with_a_chat_reply_from_the_same_number(app: App, db: Database) -> None:
    own = await app.buy_a_number()
    app.mark = len(app.out.getvalue())
    assert await app.twilio.deliver_inbound(own, SENDER, "Are you free <tonight> & tomorrow?") == 200
    relayed = await app.printed("Are you free")
    assert "+1 415-555-0199" in relayed and "<tonight> & tomorrow?" in relayed
    for label in ("Reply", "Suggest reply", "Analyze", "Block"):
        assert f"] {label}" in relayed
    await app.delivered()
    answer = await app.type("> Yes, at 6")
    assert "SMS to +1 415-555-0199" in answer
    (reply,) = app.twilio.messages.values()
    assert (reply["from"], reply["to"], reply["body"]) == (own, SENDER, "Yes, at 6")

    # The Reply button asks for the text, and the next line is sent the same way.
    assert await app.twilio.deliver_inbound(own, SENDER, "Great, and Sunday?") == 200
    await app.printed("and Sunday?")
    assert "Write your reply" in await app.press("Reply")
    assert "SMS to" in await app.type("Sunday works")
    assert [m["body"] for m in app.twilio.messages.values()] == ["Yes, at 6", "Sunday works"]
    assert all(m["from"] == own for m in app.twilio.messages.values())


async def test_inbox_lists_unread_and_opening_marks_read(app: App, db: Database) -> None:
    own = await app.buy_a_number()
    assert "No conversations yet" in await app.type("/inbox")
    app.mark = len(app.out.getvalue())
    for text in ("one", "two"):
        await app.twilio.deliver_inbound(own, SENDER, text)
    await app.printed("two")
    inbox = await app.type("/inbox")
    assert "🔵 2 · +1 415-555-0199" in inbox
    opened = await app.press("🔵 2 · +1 415-555-0199")
    assert "⬅️" in opened and "one" in opened and "two" in opened and "] Reply" in opened
    assert "🔵" not in await app.type("/inbox")
    answer = await app.type("> replying from the conversation view")
    assert "SMS to +1 415-555-0199" in answer


async def test_block_stops_the_relay_and_unblock_restores_it(app: App, db: Database) -> None:
    own = await app.buy_a_number()
    app.mark = len(app.out.getvalue())
    await app.twilio.deliver_inbound(own, SENDER, "buy cheap stuff")
    await app.printed("cheap stuff")
    assert "is blocked" in await app.press("Block")
    app.mark = len(app.out.getvalue())
    assert await app.twilio.deliver_inbound(own, SENDER, "more spam") == 200
    await asyncio.sleep(0.3)
    assert "more spam" not in app.out.getvalue()[app.mark:]
    async with db.read() as session:
        # Bodies are encrypted at rest: the database cannot compare them, Python can.
        assert "more spam" in (await session.scalars(select(Message.body))).all()
    assert "is unblocked" in await app.press("Unblock")
    await app.twilio.deliver_inbound(own, SENDER, "hello again")
    await app.printed("hello again")


async def test_foreign_and_stale_buttons(app: App, db: Database) -> None:
    own = await app.buy_a_number()
    await app.twilio.deliver_inbound(own, SENDER, "hi")
    async with db.read() as session:
        conversation = await session.scalar(select(Conversation))
        number = await session.scalar(select(PhoneNumber))
    assert conversation is not None and number is not None
    stranger = Contact("telegram", "555", chat_id="555", display_name="Mallory")
    services = app.services
    for data in (f"conv:{conversation.id}:0", f"sms_block:{conversation.id}", f"sms_reply:{conversation.id}",
                 f"num_rel:{number.id}", f"num_relok:{number.id}"):
        (screen,) = await router.handle_action(services, stranger, data)
        assert screen.toast == "This button belongs to someone else.", data
        assert not screen.text
    for data in ("conv:abc", "num_rel:x", "num_cc:XX", "num_pick:nope", "unknown:1", "num_ok:expired-token"):
        (screen,) = await router.handle_action(services, stranger, data)
        assert screen.toast, data
    # A chat reply whose context names someone else's conversation is refused too.
    ref = SentRef("telegram", "555", "77")
    await router.remember_reply_context(services, ref, {"kind": "sms", "conversation_id": conversation.id})
    (screen,) = await router.handle_text(services, stranger, "hijack", reply_to=ref)
    assert "belongs to someone else" in screen.text
    assert not app.twilio.messages
    async with db.read() as session:
        assert (await session.get(Conversation, conversation.id)).blocked is False  # type: ignore[union-attr]

    # Release asks first; once released, the old buttons answer with a short toast.
    await app.type("/numbers")
    confirm = await app.press(re.compile(r"^Release "))
    assert "Texts to it will stop coming" in confirm
    assert "was released" in await app.press("Confirm")
    (screen,) = await router.handle_action(services, app.front.contact, f"num_relok:{number.id}")
    assert screen.toast and "already released" in screen.toast and not screen.text
    (screen,) = await router.handle_action(services, app.front.contact, f"sms_reply:{conversation.id}")
    assert screen.toast and "released" in screen.toast
    assert app.twilio.released_numbers


def test_split_recipient_takes_the_number_and_keeps_the_text() -> None:
    assert split_recipient("+1 415 555 0199 See you at 5") == ("+1 415 555 0199", "See you at 5")
    assert split_recipient("+14155550199 10 minutes late") == ("+14155550199", "10 minutes late")
    assert split_recipient("(415) 555-0199 line one\nline two") == ("(415) 555-0199", "line one\nline two")
    assert split_recipient("+1 555 hi") == ("+1 555", "hi")  # not a number, but clearly meant as one
    assert split_recipient("hello there") == ("hello", "there")
    assert split_recipient("+14155550199") == ("+14155550199", "")


# --- the same journey in Telegram (python-telegram-bot against the fake Bot API) -------------------------------


async def test_telegram_reply_to_a_relayed_sms_and_the_reply_button(db: Database) -> None:
    from tests.harness import buttons, telegram_app

    async with FakeTwilioServer() as twilio, telegram_app(db) as h:
        provider = TwilioProvider(twilio.account_sid, twilio.auth_token, twilio.base_url, backoff_seconds=0.001)
        messaging = MessagingService(db, {"twilio": provider}, h.services.settings, h.services.metrics)
        h.services.messaging = messaging
        ann = h.user(1001)
        await h.command(ann, "/start")
        async with db.read() as session:
            identity = await session.scalar(select(ChatIdentity).where(ChatIdentity.platform_user_id == "1001"))
        assert identity is not None
        own = await give_number(db, identity.user_id, "+12125550100")

        async def relayed(text: str) -> dict[str, Any]:
            call = await h.fake.wait_for(lambda c: c.method == "sendMessage" and text in str(c.params.get("text")))
            await deliveries_recorded(db)  # a reply needs the delivery's message id on record
            return call.result  # type: ignore[no-any-return]

        async def texts_at_twilio(count: int) -> list[str]:
            for _ in range(500):
                if len(twilio.messages) >= count:
                    return [m["body"] for m in twilio.messages.values()]
                await asyncio.sleep(0.01)
            raise AssertionError(f"expected {count} SMS, got {list(twilio.messages.values())}")

        await messaging.receive_inbound(InboundSms("twilio", "SMin1", SENDER, own.e164, "Dinner <8pm> & wine?"))
        message = await relayed("Dinner")
        assert set(buttons(message)) == {"Reply", "Suggest reply", "Analyze", "Block"}
        assert "Dinner <8pm> & wine?" in message["text"]
        await h.reply(ann, message, "Yes please")
        assert await texts_at_twilio(1) == ["Yes please"]

        await messaging.receive_inbound(InboundSms("twilio", "SMin2", SENDER, own.e164, "Which wine?"))
        second = await relayed("Which wine?")
        await h.press(ann, second, buttons(second)["Reply"])
        prompt = await h.fake.wait_for(lambda c: c.method == "sendMessage" and "Write your reply" in str(c.params))
        await h.reply(ann, prompt.result, "Red")
        assert await texts_at_twilio(2) == ["Yes please", "Red"]
        assert all(m["from"] == own.e164 and m["to"] == SENDER for m in twilio.messages.values())

        since = len(h.fake.calls)
        await h.command(ann, "just chatting")  # the prompt is answered: this is no SMS
        await h.fake.wait_for(lambda c: c.method == "sendMessage", since=since)
        assert len(twilio.messages) == 2
        await messaging.close()
