"""MessagingService on both engines: buying numbers, sending (routing, charging, errors), status, inbound, inbox."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from core.messaging.errors import InvalidNumber, MessagingError, ProviderRefused
from core.messaging.inbound import at_once
from core.messaging.service import MessagingService, build_messaging_service
from core.models import (
    ApiEvent,
    ApiWebhookEndpoint,
    ChatIdentity,
    Conversation,
    Hold,
    KeyValue,
    Message,
    OutboxDelivery,
    PhoneNumber,
    User,
)
from core.money import accounts, ledger
from core.money.accounts import Contact
from core.money.limits import LimitReached
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.i18n import t
from core.platform.outbox import OutboxDispatcher, OutgoingMessage
from core.platform.settings import Settings
from core.providers.plan import ProviderPlan
from core.providers.sandbox_sms import SandboxSmsProvider
from core.providers.sms import InboundSms, SmsProvider, StatusUpdate
from core.providers.twilio import TwilioProvider
from core.providers.vonage import VonageProvider
from tests.conftest import make_settings
from tests.fakes.chat_sender import RecordingSender
from tests.fakes.twilio_api import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilioServer
from tests.fakes.vonage_api import DEFAULT_SIGNATURE_SECRET, FakeVonageServer

PUBLIC = "https://cumapp.example"
OUTSIDE = "+14155550199"
OUTSIDE_2 = "+12125550142"


# --- helpers shared with test_sms_webhooks.py and test_sms_flows.py -------------------------------------------


def sms_settings(db: Database, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "public_base_url": PUBLIC, "twilio_account_sid": DEFAULT_ACCOUNT_SID, "twilio_auth_token": DEFAULT_AUTH_TOKEN,
        "vonage_signature_secret": DEFAULT_SIGNATURE_SECRET,
    }
    values.update(overrides)
    return make_settings(db.url, **values)


async def new_user(
    db: Database, uid: str, *, cents: int = 1000, platform: str = "telegram", role: str = "user"
) -> User:
    """An account with a reachable chat (chat id = uid) and `cents` of credit."""
    contact = Contact(platform, uid, chat_id=uid, display_name=f"user {uid}", language_code="en")
    async with db.transaction() as session:
        user = (await accounts.get_or_create(session, contact)).user
        if cents:
            await ledger.post(session, user.id, cents, kind="topup", idempotency_key=f"seed:{platform}:{uid}")
        user.role = role
    return user


async def give_number(
    db: Database, user_id: int, e164: str, provider: str = "twilio", country: str = "US"
) -> PhoneNumber:
    """A number owned without going through a purchase (for tests about sending and receiving)."""
    async with db.transaction() as session:
        number = PhoneNumber(
            user_id=user_id, provider=provider, provider_sid=f"PN{e164[1:]}", e164=e164, country=country,
            state="active", monthly_price_cents=150, purchased_at=utcnow(),
        )
        session.add(number)
        await session.flush()
    return number


async def balance(db: Database, user_id: int) -> ledger.BalanceView:
    async with db.read() as session:
        view = await ledger.balance(session, user_id)
        assert await ledger.ledger_sums(session, user_id) == view  # the cached sums follow the ledger
        return view


async def count(db: Database, model: Any, *where: Any) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def deliveries(db: Database, kind: str | None = None) -> list[OutboxDelivery]:
    async with db.read() as session:
        query = select(OutboxDelivery).order_by(OutboxDelivery.id)
        if kind is not None:
            query = query.where(OutboxDelivery.kind == kind)
        return list((await session.scalars(query)).all())


def inbound(to: str, from_: str = OUTSIDE, body: str = "hello", sid: str | None = None, **kw: Any) -> InboundSms:
    return InboundSms(
        provider=kw.pop("provider", "twilio"), provider_message_id=sid or f"SM{abs(hash((to, from_, body))):x}",
        from_e164=from_, to_e164=to, body=body, **kw,
    )


def batch_sizes(service: MessagingService) -> list[int]:
    """The size of each group commit the service writes from now on (it still writes them)."""
    sizes: list[int] = []
    store_batch = service.inbound._store_batch

    async def spy(batch: Any) -> Any:
        sizes.append(len(batch))
        return await store_batch(batch)

    service.inbound._store_batch = spy  # type: ignore[method-assign]
    return sizes


@asynccontextmanager
async def twilio_service(
    db: Database, settings: Settings | None = None, **fake_options: Any
) -> AsyncIterator[tuple[MessagingService, FakeTwilioServer]]:
    """The real TwilioProvider against FakeTwilioServer, inside a MessagingService."""
    async with FakeTwilioServer(**fake_options) as fake:
        provider = TwilioProvider(fake.account_sid, fake.auth_token, fake.base_url, backoff_seconds=0.001)
        service = MessagingService(db, {"twilio": provider}, settings or sms_settings(db))
        try:
            yield service, fake
        finally:
            await service.close()


# --- buying numbers -----------------------------------------------------------------------------------------


async def test_buy_number_at_twilio_charges_once_and_points_the_webhooks_at_us(db: Database) -> None:
    user = await new_user(db, "1")
    async with twilio_service(db) as (service, fake):
        found = await service.search_numbers("US", "415")
        assert found and all(n.e164.startswith("+1415") for n in found)
        quote = await service.quote_number(user.id, found[0].e164)
        assert quote.monthly_price_cents == 150  # Twilio's $1.15 + the free tier's 30 %, rounded up
        number = await service.buy_number(user.id, found[0].e164, request_key=quote.token)

        (bought,) = fake.incoming_numbers.values()
        assert bought["phone_number"] == found[0].e164
        assert bought["sms_url"] == f"{PUBLIC}/webhooks/twilio/sms"
        assert bought["status_callback"] == f"{PUBLIC}/webhooks/twilio/status"
    assert number.provider == "twilio" and number.monthly_price_cents == 150 and number.state == "active"
    assert [n.e164 for n in await service.list_numbers(user.id)] == [found[0].e164]
    view = await balance(db, user.id)
    assert (view.balance_cents, view.held_cents) == (1000 - 150, 0)
    async with db.read() as session:
        (hold,) = (await session.scalars(select(Hold))).all()
        assert hold.state == "captured" and hold.purpose == "number"


async def test_buy_number_at_vonage_sets_the_inbound_url(db: Database) -> None:
    user = await new_user(db, "1")
    async with FakeVonageServer() as fake:
        provider = VonageProvider(fake.api_key, fake.api_secret, rest_base_url=fake.base_url, backoff_seconds=0.001)
        service = MessagingService(db, {"vonage": provider}, sms_settings(db))
        found = await service.search_numbers("GB")
        quote = await service.quote_number(user.id, found[0].e164)
        number = await service.buy_number(user.id, found[0].e164, request_key=quote.token)
        await service.close()
        assert fake.owned[number.e164[1:]]["moHttpUrl"] == f"{PUBLIC}/webhooks/vonage/inbound"
    assert number.monthly_price_cents == 130  # €1.00 cost + 30 %


async def test_second_number_on_the_free_tier_is_refused_before_the_provider(db: Database) -> None:
    user = await new_user(db, "1")
    async with twilio_service(db) as (service, fake):
        found = await service.search_numbers("US")
        first = await service.quote_number(user.id, found[0].e164)
        await service.buy_number(user.id, found[0].e164, request_key=first.token)
        with pytest.raises(LimitReached):
            await service.check_can_buy(user.id)
        second = await service.quote_number(user.id, found[1].e164)
        with pytest.raises(LimitReached) as refused:
            await service.buy_number(user.id, found[1].e164, request_key=second.token)
        assert refused.value.limit == "numbers_owned"
        assert len(fake.requests_to("IncomingPhoneNumbers.json", "POST")) == 1
    assert (await balance(db, user.id)).balance_cents == 1000 - 150


async def test_double_click_on_confirm_buys_once(db: Database) -> None:
    user = await new_user(db, "1")
    async with twilio_service(db) as (service, fake):
        found = await service.search_numbers("US")
        quote = await service.quote_number(user.id, found[0].e164)
        results = await asyncio.gather(
            *(service.buy_number(user.id, found[0].e164, request_key=quote.token) for _ in range(2)),
            return_exceptions=True,
        )
        for result in results:
            assert isinstance(result, PhoneNumber) or (
                isinstance(result, MessagingError) and result.key == "num_buy_in_progress"
            ), result
        again = await service.buy_number(user.id, found[0].e164, request_key=quote.token)
        assert again.e164 == found[0].e164
        assert len(fake.incoming_numbers) == 1
    assert await count(db, PhoneNumber) == 1
    assert (await balance(db, user.id)).balance_cents == 1000 - 150


async def test_refused_purchase_releases_the_hold(db: Database) -> None:
    user = await new_user(db, "1")
    async with twilio_service(db) as (service, fake):
        found = await service.search_numbers("US")
        quote = await service.quote_number(user.id, found[0].e164)
        fake.fail_next("IncomingPhoneNumbers.json", 400, 21422)
        with pytest.raises(ProviderRefused) as refused:
            await service.buy_number(user.id, found[0].e164, request_key=quote.token)
        assert "no longer available" in refused.value.text("en")
    view = await balance(db, user.id)
    assert (view.balance_cents, view.held_cents) == (1000, 0)
    assert await count(db, PhoneNumber) == 0


async def test_buy_and_release_in_the_sandbox(db: Database) -> None:
    user = await new_user(db, "1")
    service = build_messaging_service(sms_settings(db), db, None, ProviderPlan("sandbox", ("sandbox",), "sandbox"))
    assert isinstance(service.providers["sandbox"], SandboxSmsProvider)
    found = await service.search_numbers("US", "212")
    quote = await service.quote_number(user.id, found[0].e164)
    number = await service.buy_number(user.id, found[0].e164, request_key=quote.token)
    assert number.provider == "sandbox" and number.monthly_price_cents == 130
    released = await service.release_number(user.id, number.id)
    assert released.state == "released" and released.released_at is not None
    with pytest.raises(MessagingError) as again:
        await service.release_number(user.id, number.id)
    assert again.value.key == "num_already_released"
    other = await new_user(db, "2")
    with pytest.raises(MessagingError) as foreign:
        await service.release_number(other.id, number.id)
    assert foreign.value.key == "error_not_yours"
    await service.close()


# --- sending -------------------------------------------------------------------------------------------------


async def test_send_normalises_to_e164_and_stores_provider_and_cost(db: Database) -> None:
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, fake):
        sent = await service.send_sms(user.id, "(415) 555-0199", "Hi there", request_key="r1")
        (created,) = fake.messages.values()
        assert created["to"] == OUTSIDE and created["from"] == own.e164
        assert created["_status_callback"] == f"{PUBLIC}/webhooks/twilio/status"
    assert (sent.to_e164, sent.provider, sent.segments, sent.cost_cents, sent.price_cents) == (OUTSIDE, "twilio", 1, 1, 2)
    async with db.read() as session:
        message = await session.get(Message, sent.message_id)
        assert message is not None
        assert (message.provider, message.provider_message_id, message.status) == ("twilio", created["sid"], "queued")
        assert (message.cost_cents, message.price_cents, message.encoding) == (1, 2, "GSM-7")
    view = await balance(db, user.id)
    assert (view.balance_cents, view.held_cents) == (998, 0)


async def test_same_request_key_sends_once(db: Database) -> None:
    user = await new_user(db, "1")
    await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, fake):
        first = await service.send_sms(user.id, OUTSIDE, "once", request_key="same")
        second = await service.send_sms(user.id, OUTSIDE, "once", request_key="same")
        assert second.duplicate and second.message_id == first.message_id
        assert len(fake.messages) == 1
    assert (await balance(db, user.id)).balance_cents == 998


async def test_long_unicode_text_is_priced_per_segment(db: Database) -> None:
    user = await new_user(db, "1")
    await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):
        sent = await service.send_sms(user.id, OUTSIDE, "😀" * 40, request_key="r1")  # 80 UTF-16 units: 2 parts
    assert (sent.encoding, sent.segments, sent.cost_cents, sent.price_cents) == ("UCS-2", 2, 2, 3)


@pytest.mark.parametrize("raw", ["+1 555", "hello", "+999 1234567", "415555"])
async def test_invalid_number_makes_no_provider_call_and_charges_nothing(db: Database, raw: str) -> None:
    user = await new_user(db, "1")
    await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, fake):
        with pytest.raises(InvalidNumber) as refused:
            await service.send_sms(user.id, raw, "hi", request_key="r1")
        assert not fake.requests, "the provider must not be called"
    text = refused.value.text("en")
    assert raw in text and "country code" in text
    assert "+" in refused.value.text("es")
    assert await count(db, Message) == 0 and await count(db, Conversation) == 0
    view = await balance(db, user.id)
    assert (view.balance_cents, view.held_cents) == (1000, 0)


async def test_sending_needs_a_number_and_refuses_a_released_one(db: Database) -> None:
    user = await new_user(db, "1")
    async with twilio_service(db) as (service, fake):
        with pytest.raises(MessagingError) as none:
            await service.send_sms(user.id, OUTSIDE, "hi", request_key="r1")
        assert none.value.key == "sms_no_number"
        number = await give_number(db, user.id, "+12125550100")
        await service.release_number(user.id, number.id)
        with pytest.raises(MessagingError) as released:
            await service.send_sms(user.id, OUTSIDE, "hi", from_number_id=number.id, request_key="r2")
        assert released.value.key in ("sms_number_released", "sms_no_number")
        other = await new_user(db, "2")
        theirs = await give_number(db, other.id, "+12125550111")
        with pytest.raises(MessagingError) as foreign:
            await service.send_sms(user.id, OUTSIDE, "hi", from_number_id=theirs.id, request_key="r3")
        assert foreign.value.key == "error_not_yours"
        assert not fake.requests_to("Messages.json")


async def test_cost_routing_picks_the_cheaper_provider_for_the_country(db: Database) -> None:
    costs = {"twilio": {"US": 1, "GB": 4, "*": 6}, "vonage": {"US": 2, "GB": 3, "*": 5}}
    settings = sms_settings(db, sms_costs=costs)
    user = await new_user(db, "1")
    await give_number(db, user.id, "+12125550100", "twilio")
    await give_number(db, user.id, "+14155550100", "vonage")
    async with FakeTwilioServer() as twilio, FakeVonageServer() as vonage:
        service = MessagingService(db, {
            "twilio": TwilioProvider(twilio.account_sid, twilio.auth_token, twilio.base_url),
            "vonage": VonageProvider(vonage.api_key, vonage.api_secret, rest_base_url=vonage.base_url),
        }, settings)
        to_gb = await service.send_sms(user.id, "+447400123456", "hello UK", request_key="gb")
        to_us = await service.send_sms(user.id, OUTSIDE, "hello US", request_key="us")
        to_de = await service.send_sms(user.id, "+4915123456789", "hallo", request_key="de")
        await service.close()
        assert (to_gb.provider, to_gb.from_e164, to_gb.cost_cents) == ("vonage", "+14155550100", 3)
        assert (to_us.provider, to_us.from_e164, to_us.cost_cents) == ("twilio", "+12125550100", 1)
        assert (to_de.provider, to_de.cost_cents) == ("vonage", 5)  # "*" fallback
        assert [s.params["to"] for s in vonage.sent] == ["447400123456", "4915123456789"]
        assert vonage.sent[0].params["callback"] == f"{PUBLIC}/webhooks/vonage/status"
        assert [m["to"] for m in twilio.messages.values()] == [OUTSIDE]
    async with db.read() as session:
        stored = {m.to_e164: (m.provider, m.cost_cents) for m in (await session.scalars(select(Message))).all()}
    assert stored == {"+447400123456": ("vonage", 3), OUTSIDE: ("twilio", 1), "+4915123456789": ("vonage", 5)}
    usage = {(u.provider, u.direction): u for u in await service.usage(since=utcnow().replace(hour=0, minute=0))}
    assert usage[("vonage", "outbound")].messages == 2 and usage[("vonage", "outbound")].cost_cents == 8


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (21211, "isn't valid"),
        (21610, "opted out"),
        (21614, "can't receive text messages"),
        (21608, "trial"),
    ],
)
async def test_provider_errors_become_plain_words_and_charge_nothing(db: Database, code: int, words: str) -> None:
    user = await new_user(db, "1")
    await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, fake):
        fake.fail_next("Messages.json", 400, code)
        with pytest.raises(ProviderRefused) as refused:
            await service.send_sms(user.id, OUTSIDE, "hi", request_key="r1")
    text = refused.value.text("en")
    assert words in text and "Nothing was charged" in text and str(code) not in text
    assert "No se cobró nada" in refused.value.text("es")
    view = await balance(db, user.id)
    assert (view.balance_cents, view.held_cents) == (1000, 0)
    async with db.read() as session:
        message = await session.scalar(select(Message))
        assert message is not None and message.status == "rejected" and message.error_code == str(code)
        conversation = await session.scalar(select(Conversation))
        assert conversation is not None and conversation.opted_out == (code == 21610)
    assert await count(db, Hold, Hold.state == "released") == 1


async def test_rejected_texts_do_not_use_up_the_daily_limit(db: Database) -> None:
    settings = sms_settings(db, tier_limits={"free": {"sms_per_day": 2}})
    user = await new_user(db, "1")
    await give_number(db, user.id, "+12125550100")
    async with twilio_service(db, settings) as (service, fake):
        fake.fail_next("Messages.json", 400, 21614)
        with pytest.raises(ProviderRefused):
            await service.send_sms(user.id, OUTSIDE, "a", request_key="r0")
        await service.send_sms(user.id, OUTSIDE, "b", request_key="r1")
        await service.send_sms(user.id, OUTSIDE, "c", request_key="r2")
        with pytest.raises(LimitReached):
            await service.send_sms(user.id, OUTSIDE, "d", request_key="r3")
        assert len(fake.messages) == 2


# --- delivery status -----------------------------------------------------------------------------------------


async def test_status_moves_forward_only_and_repeats_are_no_ops(db: Database) -> None:
    user = await new_user(db, "1")
    await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):
        sent = await service.send_sms(user.id, OUTSIDE, "hi", request_key="r1")
        async with db.read() as session:
            sid = (await session.get(Message, sent.message_id)).provider_message_id  # type: ignore[union-attr]
        assert sid is not None

        async def status() -> str:
            async with db.read() as session:
                return (await session.get(Message, sent.message_id)).status  # type: ignore[union-attr]

        steps = [("sent", True, "sent"), ("sent", False, "sent"), ("queued", False, "sent"),
                 ("delivered", True, "delivered"), ("sent", False, "delivered"), ("failed", False, "delivered")]
        for new, changed, now in steps:
            assert await service.apply_status(StatusUpdate(sid, new, provider="twilio")) is changed  # type: ignore[arg-type]
            assert await status() == now
    assert await deliveries(db, "sms_status") == []  # a delivered text needs no news


async def test_failed_delivery_is_told_in_the_chat(db: Database) -> None:
    user = await new_user(db, "1")
    await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):
        sent = await service.send_sms(user.id, OUTSIDE, "are you there?", request_key="r1")
        async with db.read() as session:
            sid = (await session.get(Message, sent.message_id)).provider_message_id  # type: ignore[union-attr]
        assert sid is not None
        update = StatusUpdate(sid, "undelivered", error_code="30003", provider="twilio")
        assert await service.apply_status(update)
        assert not await service.apply_status(update)
    (notice,) = await deliveries(db, "sms_status")
    text = OutgoingMessage.from_payload(notice.payload).text
    assert notice.chat_id == "1" and "+1 415-555-0199" in text and "phone is off" in text and "are you there?" in text
    async with db.read() as session:
        message = await session.get(Message, sent.message_id)
        assert message is not None and (message.status, message.error_code) == ("undelivered", "30003")


async def test_a_status_that_overtakes_our_commit_is_not_lost(db: Database) -> None:
    user = await new_user(db, "1")
    await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):
        provider = service.providers["twilio"]
        original = provider.send

        async def send_then_callback(*args: Any) -> Any:
            result = await original(*args)
            # Twilio's callback arrives before send_sms has stored the message id.
            assert not await service.apply_status(StatusUpdate(result.provider_message_id, "delivered", provider="twilio"))
            return result

        provider.send = send_then_callback  # type: ignore[method-assign]
        sent = await service.send_sms(user.id, OUTSIDE, "quick", request_key="r1")
    assert sent.status == "delivered"


async def test_unknown_message_status_is_ignored(db: Database) -> None:
    async with twilio_service(db) as (service, _fake):
        assert not await service.apply_status(StatusUpdate("SMnope", "delivered", provider="vonage"))
    assert await count(db, Message) == 0


# --- inbound, conversations ----------------------------------------------------------------------------------


async def test_inbound_is_stored_relayed_once_and_counted_unread(db: Database) -> None:
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):
        first = await service.receive_inbound(inbound(own.e164, sid="SM1", body="Dinner at 8?"))
        again = await service.receive_inbound(inbound(own.e164, sid="SM1", body="Dinner at 8?"))
    assert first.outcome == "relayed" and again.outcome == "duplicate"
    (relay,) = await deliveries(db, "sms")
    message = OutgoingMessage.from_payload(relay.payload)
    assert relay.priority > 0 and relay.source_received_at is not None and relay.dedupe_key == f"sms:{first.message_id}:telegram"
    assert "+1 415-555-0199" in message.text and "+1 212-555-0100" in message.text and "Dinner at 8?" in message.text
    labels = [b.label for row in message.buttons for b in row]
    actions = [b.action for row in message.buttons for b in row]
    assert labels == ["Reply", "Suggest reply", "Analyze", "Block"]
    assert actions[1:3] == [f"ai:sug:{first.message_id}", f"ai:an:{first.message_id}"]
    assert message.reply_context == {"kind": "sms", "conversation_id": first.conversation_id,
                                     "message_id": first.message_id}
    async with db.read() as session:
        conversation = await session.get(Conversation, first.conversation_id)
        assert conversation is not None and conversation.unread_count == 1


async def test_conversations_unread_counts_and_history_pages(db: Database) -> None:
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):
        for i in range(12):
            await service.receive_inbound(inbound(own.e164, OUTSIDE, f"message {i}", sid=f"A{i}"))
        for i in range(3):
            await service.receive_inbound(inbound(own.e164, OUTSIDE_2, f"other {i}", sid=f"B{i}"))
        views, total = await service.conversations(user.id, 0, 10)
        assert total == 2
        assert [(v.remote_e164, v.unread_count, v.last_body) for v in views] == [
            (OUTSIDE_2, 3, "other 2"), (OUTSIDE, 12, "message 11"),
        ]
        page1 = await service.history(views[1].id, 0, 10, user_id=user.id)
        page2 = await service.history(views[1].id, 10, 10, user_id=user.id)
        assert [m.body for m in page1[1]] == [f"message {i}" for i in range(11, 1, -1)]
        assert [m.body for m in page2[1]] == ["message 1", "message 0"] and page2[2] == 12
        views, _ = await service.conversations(user.id, 0, 1)
        assert len(views) == 1
        _, total = await service.conversations(user.id, 1, 1)
        assert total == 2
        after, _ = await service.conversations(user.id, 0, 10)
        assert {v.remote_e164: v.unread_count for v in after} == {OUTSIDE: 0, OUTSIDE_2: 3}
        other = await new_user(db, "2")
        with pytest.raises(MessagingError):
            await service.history(views[0].id, user_id=other.id)


async def test_stop_opts_out_and_start_opts_back_in(db: Database) -> None:
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, fake):
        stopped = await service.receive_inbound(inbound(own.e164, body="Stop", sid="S1"))
        with pytest.raises(MessagingError) as refused:
            await service.send_sms(user.id, OUTSIDE, "please?", request_key="r1")
        assert refused.value.key == "sms_opted_out" and "STOP" in refused.value.text("en")
        assert not fake.requests_to("Messages.json")
        await service.receive_inbound(inbound(own.e164, body="START", sid="S2"))
        await service.send_sms(user.id, OUTSIDE, "welcome back", request_key="r2")
        assert len(fake.messages) == 1
    texts = [OutgoingMessage.from_payload(d.payload).text for d in await deliveries(db, "sms")]
    assert "opted out (STOP)" in texts[0] and "opted back in" in texts[1]
    async with db.read() as session:
        conversation = await session.get(Conversation, stopped.conversation_id)
        assert conversation is not None and conversation.opted_out is False


@pytest.mark.parametrize("keyword", ["STOPALL", "unsubscribe", "Cancel", "END", "quit."])
async def test_every_opt_out_keyword(db: Database, keyword: str) -> None:
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):
        result = await service.receive_inbound(inbound(own.e164, body=keyword, sid="K1"))
        not_a_keyword = await service.receive_inbound(inbound(own.e164, OUTSIDE_2, "please stop texting me", sid="K2"))
    async with db.read() as session:
        assert (await session.get(Conversation, result.conversation_id)).opted_out  # type: ignore[union-attr]
        assert not (await session.get(Conversation, not_a_keyword.conversation_id)).opted_out  # type: ignore[union-attr]


async def test_blocked_sender_is_stored_but_not_relayed(db: Database) -> None:
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):
        first = await service.receive_inbound(inbound(own.e164, body="spam 1", sid="X1"))
        assert first.conversation_id is not None
        view = await service.block(user.id, first.conversation_id)
        assert view.blocked
        second = await service.receive_inbound(inbound(own.e164, body="spam 2", sid="X2"))
        assert second.outcome == "blocked"
        with pytest.raises(MessagingError) as refused:
            await service.send_sms(user.id, OUTSIDE, "hi", request_key="r1")
        assert refused.value.key == "sms_blocked"
        await service.block(user.id, first.conversation_id, False)
        third = await service.receive_inbound(inbound(own.e164, body="hello again", sid="X3"))
        assert third.outcome == "relayed"
    assert await count(db, Message) == 3
    assert len(await deliveries(db, "sms")) == 2


async def test_sandbox_replies_take_the_webhook_path(db: Database) -> None:
    user = await new_user(db, "1")
    settings = sms_settings(db, sandbox_sms_success_rate=1.0)
    service = build_messaging_service(settings, db, None, ProviderPlan("sandbox", ("sandbox",), "sandbox"))
    sandbox = service.providers["sandbox"]
    assert isinstance(sandbox, SandboxSmsProvider)
    sandbox.status_delay_seconds = sandbox.reply_delay_seconds = 0.01
    replied = asyncio.Event()
    relay = sandbox.on_inbound
    assert relay is not None

    async def relay_then_note(sms: InboundSms) -> None:
        await relay(sms)  # type: ignore[misc]
        replied.set()

    sandbox.on_inbound = relay_then_note
    found = await service.search_numbers("US")
    quote = await service.quote_number(user.id, found[0].e164)
    number = await service.buy_number(user.id, found[0].e164, request_key=quote.token)
    sent = await service.send_sms(user.id, OUTSIDE, "Are you coming?", request_key="r1")
    await asyncio.wait_for(replied.wait(), timeout=5)
    async with db.read() as session:
        reply = await session.scalar(select(Message).where(Message.direction == "inbound"))
        out = await session.get(Message, sent.message_id)
    assert reply is not None and reply.to_e164 == number.e164 and reply.from_e164 == OUTSIDE
    assert out is not None and out.status == "delivered"
    assert len(await deliveries(db, "sms")) == 1
    await service.close()


def test_every_relay_text_exists_in_both_languages() -> None:
    for locale in ("en", "es"):
        for key in ("sms_btn_reply", "sms_btn_suggest", "sms_btn_analyze", "sms_btn_block", "num_btn_buy"):
            assert t(locale, key)
    assert isinstance(TwilioProvider("AC" + "0" * 32, "x"), SmsProvider)


async def test_concurrent_inbound_is_grouped_and_keeps_every_rule(db: Database) -> None:
    user = await new_user(db, "1")
    await new_user(db, "9", role="admin")
    own = await give_number(db, user.id, "+12125550100")
    stopper, blocked_sender = "+13125550177", OUTSIDE_2
    async with twilio_service(db) as (service, _fake):
        first = await service.receive_inbound(inbound(own.e164, blocked_sender, "before the block", sid="PRE"))
        assert first.conversation_id is not None
        await service.block(user.id, first.conversation_id)
        async with db.transaction() as session:  # an integrator's webhook: each event is also queued for it
            endpoint = ApiWebhookEndpoint(user_id=user.id, url="https://hooks.example/cumapp", secret="s")
            session.add(endpoint)
            session.add(ApiWebhookEndpoint(user_id=user.id, url="https://hooks.example/old", secret="s",
                                           deleted_at=utcnow()))  # deleted: queued nothing
            await session.flush()
            endpoint_id = endpoint.id
        sizes = batch_sizes(service)
        sms = [inbound(own.e164, OUTSIDE, f"burst {i}", sid=f"BURST{i}") for i in range(10)]
        sms += [inbound(own.e164, OUTSIDE, "burst 3", sid="BURST3"), inbound(own.e164, OUTSIDE, "burst 4", sid="BURST4")]
        sms += [inbound(own.e164, stopper, "STOP", sid="STOP1")]
        sms += [inbound(own.e164, blocked_sender, f"spam {i}", sid=f"SPAM{i}") for i in range(2)]
        sms += [inbound("+13125550000", OUTSIDE, "nobody's", sid="LOST1")]
        outcomes = await asyncio.gather(*(service.submit_inbound(s) for s in sms))
    assert max(sizes) > 1, sizes
    assert [o.outcome for o in outcomes] == (
        ["relayed"] * 10 + ["duplicate"] * 2 + ["relayed"] + ["blocked"] * 2 + ["unknown_destination"]
    )
    assert await count(db, Message) == 1 + 10 + 1 + 2 + 1
    relays = await deliveries(db, "sms")
    assert len(relays) == 1 + 10 + 1  # the pre-block relay, the burst and the STOP
    assert {d.dedupe_key for d in relays} >= {f"sms:{o.message_id}:telegram" for o in outcomes[:10]}
    texts = [OutgoingMessage.from_payload(d.payload).text for d in relays]
    assert sum("opted out (STOP)" in text for text in texts) == 1
    assert len(await deliveries(db, "alert")) == 1
    async with db.read() as session:
        threads = {c.remote_e164: c for c in (await session.scalars(select(Conversation))).all()}
    assert threads[OUTSIDE].unread_count == 10
    assert threads[stopper].opted_out and threads[stopper].unread_count == 1
    assert threads[blocked_sender].unread_count == 1  # only the text before the block
    # One message.received per relayed SMS, written with the batch; each queued once for the webhook.
    async with db.read() as session:
        events = (await session.scalars(select(ApiEvent).order_by(ApiEvent.id))).all()
    relayed = [o.message_id for o in outcomes if o.outcome == "relayed"]
    assert [e.dedupe_key for e in events] == [
        f"msg:{first.message_id}:received", *(f"msg:{m}:received" for m in relayed)
    ]
    assert [e.data["text"] for e in events[1:]] == [f"burst {i}" for i in range(10)] + ["STOP"]
    webhook = await deliveries(db, "api_event")
    assert [d.dedupe_key for d in webhook] == [f"evt:{e.id}:{endpoint_id}" for e in events[1:]]


async def test_a_burst_without_keywords_is_written_at_once_and_keeps_every_rule(db: Database) -> None:
    """With no STOP or START in it, a batch is written in one statement on PostgreSQL (at_once), which must keep
    what the statement-per-step path keeps: a retried webhook's SMS stored before is a duplicate with nothing
    relayed, counted or sent to integrators again, and a blocked sender's texts are stored only."""
    user = await new_user(db, "1")
    await new_user(db, "9", role="admin")
    own = await give_number(db, user.id, "+12125550100")
    statements = at_once._statement.cache_info()
    async with twilio_service(db) as (service, _fake):
        first = await service.receive_inbound(inbound(own.e164, OUTSIDE_2, "before the block", sid="PRE"))
        assert first.conversation_id is not None
        await service.block(user.id, first.conversation_id)
        earlier = await service.receive_inbound(inbound(own.e164, OUTSIDE, "stored before", sid="RETRY"))
        async with db.transaction() as session:
            endpoint = ApiWebhookEndpoint(user_id=user.id, url="https://hooks.example/cumapp", secret="s")
            session.add(endpoint)
            session.add(ApiWebhookEndpoint(user_id=user.id, url="https://hooks.example/old", secret="s",
                                           deleted_at=utcnow()))
            await session.flush()
            endpoint_id = endpoint.id
        sizes = batch_sizes(service)
        sms = [inbound(own.e164, OUTSIDE, f"burst {i}", sid=f"BURST{i}") for i in range(8)]
        sms += [inbound(own.e164, OUTSIDE, "burst 3", sid="BURST3"), inbound(own.e164, OUTSIDE, "stored before", sid="RETRY")]
        sms += [inbound(own.e164, OUTSIDE_2, f"spam {i}", sid=f"SPAM{i}") for i in range(2)]
        sms += [inbound(own.e164, OUTSIDE_2, "before the block", sid="PRE")]
        sms += [inbound("+13125550000", OUTSIDE, "nobody's", sid="LOST1")]
        outcomes = await asyncio.gather(*(service.submit_inbound(s) for s in sms))
    assert max(sizes) > 1, sizes
    if db.engine.dialect.name == "postgresql":
        grew = at_once._statement.cache_info()
        assert grew.hits + grew.misses > statements.hits + statements.misses
    assert [o.outcome for o in outcomes] == (
        ["relayed"] * 8 + ["duplicate"] * 2 + ["blocked"] * 2 + ["duplicate", "unknown_destination"]
    )
    assert outcomes[9].conversation_id == earlier.conversation_id
    assert await count(db, Message) == 2 + 8 + 2 + 1
    relays = await deliveries(db, "sms")
    assert sorted(d.dedupe_key for d in relays) == sorted(
        f"sms:{o.message_id}:telegram" for o in [first, earlier, *outcomes[:8]]
    )
    async with db.read() as session:
        threads = {c.remote_e164: c for c in (await session.scalars(select(Conversation))).all()}
        events = (await session.scalars(select(ApiEvent).order_by(ApiEvent.id))).all()
    assert threads[OUTSIDE].unread_count == 1 + 8
    assert threads[OUTSIDE_2].unread_count == 1
    assert [e.dedupe_key for e in events] == [
        f"msg:{m}:received" for m in [first.message_id, earlier.message_id, *(o.message_id for o in outcomes[:8])]
    ]
    assert [e.data["text"] for e in events[2:]] == [f"burst {i}" for i in range(8)]
    webhook = await deliveries(db, "api_event")
    assert [d.dedupe_key for d in webhook] == [f"evt:{e.id}:{endpoint_id}" for e in events[2:]]
    assert [json.loads(OutgoingMessage.from_payload(d.payload).text)["id"] for d in webhook] == [
        str(e.id) for e in events[2:]]


async def test_a_grouped_burst_reaches_every_reachable_chat_of_each_owner_once(db: Database) -> None:
    """Chats are learnt with the owners in the batch: two numbers of one owner, a second chat on Discord and an
    unreachable third chat; each SMS goes once to each reachable chat, with enqueue_for_user's dedupe keys."""
    user = await new_user(db, "1")
    other = await new_user(db, "2")
    async with db.transaction() as session:
        session.add(ChatIdentity(user_id=user.id, platform="discord", platform_user_id="d1", chat_id="771"))
        session.add(ChatIdentity(user_id=user.id, platform="telegram", platform_user_id="gone", chat_id="772",
                                 unreachable_at=utcnow()))
    first, second = await give_number(db, user.id, "+12125550100"), await give_number(db, user.id, "+12125550101")
    theirs = await give_number(db, other.id, "+12125550102")
    async with twilio_service(db) as (service, _fake):
        sms = [inbound(number.e164, body=f"to {number.e164} #{i}", sid=f"G{number.e164[-3:]}{i}")
               for i in range(4) for number in (first, second, theirs)]
        outcomes = await asyncio.gather(*(service.submit_inbound(s) for s in sms))
    assert [o.outcome for o in outcomes] == ["relayed"] * 12
    relays = await deliveries(db, "sms")
    expected = set()
    for item, outcome in zip(sms, outcomes, strict=True):
        if item.to_e164 == theirs.e164:
            expected.add((f"sms:{outcome.message_id}:telegram", "telegram", "2"))
        else:
            expected |= {(f"sms:{outcome.message_id}:telegram", "telegram", "1"),
                         (f"sms:{outcome.message_id}:discord", "discord", "771")}
    assert sorted((d.dedupe_key, d.platform, d.chat_id) for d in relays) == sorted(expected)
    assert all(OutgoingMessage.from_payload(d.payload).text for d in relays)


@pytest.mark.postgres_only
async def test_each_idle_chat_gets_its_first_relay_of_a_burst_at_commit_and_the_rest_in_order(db: Database) -> None:
    """The first relay to a chat with nothing queued is claimed for this process's dispatcher in the inserting
    transaction, by the single path and the grouped one alike; what follows waits its turn behind it."""
    user, other = await new_user(db, "1"), await new_user(db, "2")
    mine, theirs = await give_number(db, user.id, "+12125550100"), await give_number(db, other.id, "+12125550102")
    sender = RecordingSender(latency=0.3)  # each chat stays busy for the whole burst
    dispatcher = OutboxDispatcher(db, {"telegram": sender}, poll_interval=30)
    taken: list[OutboxDelivery] = []
    take = dispatcher.take

    def spy(claimed: list[OutboxDelivery]) -> None:
        taken.extend(claimed)
        take(claimed)

    dispatcher.take = spy  # type: ignore[method-assign]
    await dispatcher.start()
    try:
        async with twilio_service(db) as (service, _fake):
            sizes = batch_sizes(service)
            sms = [inbound(number.e164, body=f"{number.e164[-3:]} #{i}", sid=f"E{number.e164[-3:]}{i}")
                   for i in range(5) for number in (mine, theirs)]
            outcomes = await asyncio.gather(*(service.submit_inbound(s) for s in sms))
            await sender.wait_for(10, within=10)
    finally:
        await dispatcher.stop()
    assert [o.outcome for o in outcomes] == ["relayed"] * 10
    assert max(sizes) > 1, sizes
    relays = await deliveries(db, "sms")
    firsts = {chat: min(d.id for d in relays if d.chat_id == chat) for chat in ("1", "2")}
    assert sorted(d.id for d in taken) == sorted(firsts.values())
    assert [text.rpartition("\n")[2] for text in sender.texts("1")] == [f"100 #{i}" for i in range(5)]
    assert [text.rpartition("\n")[2] for text in sender.texts("2")] == [f"102 #{i}" for i in range(5)]
    assert sender.overlaps == 0
    assert {(d.state, d.attempts) for d in relays} == {("sent", 1)}


async def test_an_sms_queued_as_the_last_writer_finishes_is_not_left_waiting(db: Database) -> None:
    """The webhook woken by its batch's commit submits the next SMS before the finished writer's task is gone
    (with one writer allowed, so that no second writer hides it)."""
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):
        service.inbound.max_writers = 1

        async def one_after_another() -> list[str]:
            # Each is submitted the moment the one before it is answered, as a webhook client with one
            # connection does; a queue that believes a finished writer still runs never answers it.
            return [(await service.submit_inbound(inbound(own.e164, body=f"n{i}", sid=f"SEQ{i}"))).outcome
                    for i in range(5)]

        assert await asyncio.wait_for(one_after_another(), 10) == ["relayed"] * 5
    assert await count(db, Message) == 5


async def test_a_long_text_missing_a_part_is_relayed_after_a_wait(db: Database) -> None:
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100", "vonage")
    async with twilio_service(db) as (service, _fake):
        part = inbound(own.e164, body="The first half", sid="P1", provider="vonage", part=("77", 2, 1))
        assert (await service.receive_inbound(part)).outcome == "part_stored"
        assert await service.sweep() == 0
        assert await service.sweep(utcnow() + timedelta(minutes=11)) == 1
        assert await service.sweep(utcnow() + timedelta(minutes=11)) == 0
    async with db.read() as session:
        (message,) = (await session.scalars(select(Message))).all()
    assert (message.body, message.provider_message_id) == ("The first half[…]", "P1")
    (relay,) = await deliveries(db, "sms")
    assert "The first half[…]" in OutgoingMessage.from_payload(relay.payload).text


async def test_sweep_removes_expired_offers_and_quotes(db: Database) -> None:
    user = await new_user(db, "1")
    async with twilio_service(db) as (service, _fake):
        found = await service.search_numbers("US")
        quote = await service.quote_number(user.id, found[0].e164)
        await service.sweep(utcnow() + timedelta(hours=1))
        with pytest.raises(MessagingError) as expired:
            await service.quoted_number(user.id, quote.token)
        assert expired.value.key == "num_quote_expired"
    assert await count(db, KeyValue) == 0


async def test_delivery_news_updates_the_sent_message_in_place(db: Database) -> None:
    user = await new_user(db, "1")
    await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, fake):
        sent = await service.send_sms(user.id, OUTSIDE, "hi", request_key="r1")
        await service.remember_status_message(sent.message_id, "telegram", "1", "55")
        (sid,) = fake.messages
        assert await service.apply_status(StatusUpdate(sid, "delivered", provider="twilio"))
    (edit,) = await deliveries(db, "sms_status")
    assert (edit.chat_id, edit.dedupe_key) == ("1", f"smsstatus:{sent.message_id}:delivered")
    edited = OutgoingMessage.from_payload(edit.payload)
    assert edited.edit_message_id == "55" and "✓✓ delivered" in edited.text
    assert [b.action for row in edited.buttons for b in row] == [f"conv:{sent.conversation_id}:0"]
