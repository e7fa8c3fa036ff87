"""Twilio and Vonage webhooks over real HTTP: signatures, malformed bodies, duplicates, relays, parts and escaping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from core.messaging.service import MessagingService
from core.models import Message, OutboxDelivery
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.outbox import OutgoingMessage
from core.platform.outbox import store as outbox_store
from core.providers.sandbox_sms import SandboxSmsProvider
from core.services import Services, build_services
from tests.core.messaging.test_service import PUBLIC, count, deliveries, give_number, new_user, sms_settings
from tests.fakes.telegram_api import parse_html
from tests.fakes.twilio_api import (
    DEFAULT_AUTH_TOKEN,
    SignedWebhook,
    build_inbound_webhook,
    build_status_webhook,
)
from tests.fakes.vonage_api import (
    DEFAULT_SIGNATURE_SECRET,
    build_concat_inbound,
    build_dlr,
    build_inbound,
    sign_params,
)
from webhooks import twilio as twilio_routes
from webhooks import vonage as vonage_routes
from webhooks.server import WebServer, create_app

OWN = "+12125550100"
SENDER = "+14155550199"
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
TWILIO_SMS = f"{PUBLIC}/webhooks/twilio/sms"
TWILIO_STATUS = f"{PUBLIC}/webhooks/twilio/status"


@dataclass
class Hooks:
    """Our webhook server on loopback; requests are signed for PUBLIC (as behind a proxy) and sent here."""

    services: Services
    local: str
    http: aiohttp.ClientSession

    def local_url(self, public_url: str) -> str:
        parts = urlsplit(public_url)
        return f"{self.local}{parts.path}" + (f"?{parts.query}" if parts.query else "")

    async def twilio(self, hook: SignedWebhook, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        async with self.http.post(
            self.local_url(hook.url), data=hook.params, headers=hook.headers if headers is None else headers
        ) as response:
            return response.status, await response.text(), response.headers.get("Content-Type", "")

    async def vonage_get(self, path: str, params: dict[str, str]) -> int:
        async with self.http.get(f"{self.local}{path}", params=params) as response:
            return response.status

    async def vonage_post(self, path: str, params: dict[str, Any], *, as_json: bool = False) -> int:
        kwargs: dict[str, Any] = {"json": params} if as_json else {"data": params}
        async with self.http.post(f"{self.local}{path}", **kwargs) as response:
            return response.status

    def metric(self, provider: str, outcome: str) -> float:
        return self.services.metrics.webhooks.labels(provider, outcome)._value.get()


async def start_hooks(db: Database, **settings: Any) -> tuple[Hooks, WebServer]:
    services = build_services(sms_settings(db, **settings), db=db)
    # The sandbox stands in for the providers: these tests are about what comes in, not what goes out.
    services.messaging = MessagingService(db, {"sandbox": SandboxSmsProvider()}, services.settings, services.metrics)
    server = WebServer(create_app(services, [twilio_routes.add_routes, vonage_routes.add_routes]), "127.0.0.1", 0)
    await server.start()
    return Hooks(services, f"http://127.0.0.1:{server.port}", aiohttp.ClientSession()), server


@pytest.fixture
async def hooks(db: Database) -> AsyncIterator[Hooks]:
    started, server = await start_hooks(db)
    yield started
    await started.http.close()
    await server.stop()
    await started.services.messaging.close()


@pytest.fixture
async def owner(db: Database) -> int:
    user = await new_user(db, "42")
    await give_number(db, user.id, OWN)
    return user.id


def twilio_inbound(body: str = "hello", **kwargs: Any) -> SignedWebhook:
    return build_inbound_webhook(DEFAULT_AUTH_TOKEN, TWILIO_SMS, from_=SENDER, to=OWN, body=body, **kwargs)


def relay_text(delivery: OutboxDelivery) -> str:
    return OutgoingMessage.from_payload(delivery.payload).text


# --- Twilio --------------------------------------------------------------------------------------------------


async def test_twilio_valid_inbound_is_stored_relayed_and_answered_with_empty_twiml(
    db: Database, hooks: Hooks, owner: int
) -> None:
    status, body, content_type = await hooks.twilio(twilio_inbound("See you at 5"))
    assert (status, body) == (200, TWIML) and content_type.startswith("text/xml")
    async with db.read() as session:
        message = await session.scalar(select(Message))
    assert message is not None and (message.user_id, message.body, message.from_e164) == (owner, "See you at 5", SENDER)
    (delivery,) = await deliveries(db, "sms")
    assert delivery.chat_id == "42" and "See you at 5" in relay_text(delivery)
    assert delivery.source_received_at is not None and delivery.source_received_at <= utcnow()
    assert hooks.metric("twilio", "relayed") == 1


async def test_twilio_forged_or_missing_signature_is_refused_and_changes_nothing(
    db: Database, hooks: Hooks, owner: int
) -> None:
    forged = build_inbound_webhook("not-the-token", TWILIO_SMS, from_=SENDER, to=OWN, body="hi")
    assert (await hooks.twilio(forged))[0] == 403
    genuine = twilio_inbound("hi")
    assert (await hooks.twilio(genuine, headers={}))[0] == 403
    # Signed for the address we listen on rather than PUBLIC_BASE_URL, which Twilio would never do.
    wrong_url = build_inbound_webhook(DEFAULT_AUTH_TOKEN, hooks.local_url(TWILIO_SMS), from_=SENDER, to=OWN, body="x")
    wrong_url.url = TWILIO_SMS
    assert (await hooks.twilio(wrong_url))[0] == 403
    tampered = twilio_inbound("original")
    tampered.params["Body"] = "changed"
    assert (await hooks.twilio(tampered))[0] == 403
    assert await count(db, Message) == 0 and await deliveries(db) == []
    assert hooks.metric("twilio", "forbidden") == 4


async def test_twilio_without_an_auth_token_refuses_everything(db: Database, owner: int) -> None:
    started, server = await start_hooks(db, twilio_auth_token=None, twilio_account_sid=None)
    try:
        assert (await started.twilio(twilio_inbound()))[0] == 403
    finally:
        await started.http.close()
        await server.stop()
    assert await count(db, Message) == 0


async def test_twilio_malformed_is_a_400(db: Database, hooks: Hooks, owner: int) -> None:
    params = {k: v for k, v in twilio_inbound().params.items() if k != "From"}
    headers = {"X-Twilio-Signature": RequestValidator(DEFAULT_AUTH_TOKEN).compute_signature(TWILIO_SMS, params)}
    assert (await hooks.twilio(SignedWebhook(TWILIO_SMS, params, headers)))[0] == 400
    assert await count(db, Message) == 0 and hooks.metric("twilio", "malformed") == 1


async def test_twilio_duplicate_is_accepted_and_relayed_once(db: Database, hooks: Hooks, owner: int) -> None:
    hook = twilio_inbound("only once")
    assert (await hooks.twilio(hook))[:2] == (200, TWIML)
    assert (await hooks.twilio(hook))[:2] == (200, TWIML)
    assert await count(db, Message) == 1 and len(await deliveries(db, "sms")) == 1
    assert hooks.metric("twilio", "duplicate") == 1


async def test_message_and_delivery_are_written_in_one_transaction(
    db: Database, hooks: Hooks, owner: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("outbox down")

    monkeypatch.setattr(outbox, "enqueue", broken)
    monkeypatch.setattr(outbox_store, "enqueue", broken)  # enqueue_for_user's own reference
    monkeypatch.setattr(outbox, "enqueue_many", broken)  # the relays' (core.messaging.inbound.store)
    hook = twilio_inbound("atomic")
    assert (await hooks.twilio(hook))[0] == 500  # Twilio retries a 5xx
    assert await count(db, Message) == 0
    monkeypatch.undo()
    assert (await hooks.twilio(hook))[0] == 200
    assert await count(db, Message) == 1 and len(await deliveries(db, "sms")) == 1


async def test_unknown_destination_is_stored_admins_alerted_once_and_answered(db: Database, hooks: Hooks) -> None:
    admin = await new_user(db, "7", role="admin")
    for i in range(3):
        hook = build_inbound_webhook(DEFAULT_AUTH_TOKEN, TWILIO_SMS, from_=SENDER, to="+13125550111", body=f"lost {i}")
        assert (await hooks.twilio(hook))[:2] == (200, TWIML)
    async with db.read() as session:
        stored = (await session.scalars(select(Message))).all()
    assert len(stored) == 3 and all(m.user_id is None and m.conversation_id is None for m in stored)
    (alert,) = await deliveries(db, "alert")
    assert alert.user_id == admin.id and "+13125550111" in relay_text(alert)
    assert await deliveries(db, "sms") == []


async def test_media_links_and_hostile_text_are_escaped(db: Database, hooks: Hooks, owner: int) -> None:
    body = 'Tom & Jerry <b>bold</b> <script>alert("x")</script> 5<6 🎉👍🏽 &amp;'
    media = [("https://api.twilio.com/2010-04-01/Media/ME1?a=1&b=<2>", "image/jpeg"),
             ("https://api.twilio.com/2010-04-01/Media/ME2", "image/png")]
    assert (await hooks.twilio(twilio_inbound(body, media=media)))[0] == 200
    async with db.read() as session:
        message = await session.scalar(select(Message))
    assert message is not None and message.body == body and message.media_urls == [url for url, _ in media]
    (delivery,) = await deliveries(db, "sms")
    text = relay_text(delivery)
    assert "<script>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text and "&amp;amp;" in text
    plain, entities = parse_html(text)  # the strict Telegram parser accepts it
    assert body in plain
    # Twilio's media need the account's credentials: the relay carries them for the outbox to fetch (and send as
    # photos, tests/journeys/test_mms.py), not as links the user could not open.
    assert [e for e in entities if e["type"] == "text_link"] == []
    assert [item["url"] for item in delivery.payload["media"]] == [url for url, _ in media]


async def test_twilio_status_callbacks_move_the_message_forward(db: Database, hooks: Hooks, owner: int) -> None:
    async with db.transaction() as session:
        session.add(Message(
            user_id=owner, direction="outbound", provider="twilio", provider_message_id="SMout1", from_e164=OWN,
            to_e164=SENDER, body="hi", status="queued",
        ))

    async def post(status: str, code: str | None = None) -> int:
        hook = build_status_webhook(DEFAULT_AUTH_TOKEN, TWILIO_STATUS, message_sid="SMout1", status=status,
                                    from_=OWN, to=SENDER, error_code=code)
        result = await hooks.twilio(hook)
        assert result[1] == TWIML
        return result[0]

    async def current() -> str:
        async with db.read() as session:
            return (await session.scalar(select(Message.status)))  # type: ignore[return-value]

    assert await post("sent") == 200 and await current() == "sent"
    assert await post("delivered") == 200 and await current() == "delivered"
    assert await post("sent") == 200 and await current() == "delivered"
    forged = build_status_webhook("nope", TWILIO_STATUS, message_sid="SMout1", status="failed", from_=OWN, to=SENDER)
    assert (await hooks.twilio(forged))[0] == 403
    assert await current() == "delivered"


# --- Vonage --------------------------------------------------------------------------------------------------

VONAGE_INBOUND = "/webhooks/vonage/inbound"
VONAGE_STATUS = "/webhooks/vonage/status"


async def test_vonage_inbound_by_get_form_and_json(db: Database, hooks: Hooks, owner: int) -> None:
    get = build_inbound(DEFAULT_SIGNATURE_SECRET, to=OWN, msisdn=SENDER, text="by GET")
    form = build_inbound(DEFAULT_SIGNATURE_SECRET, to=OWN, msisdn=SENDER, text="by form")
    as_json = build_inbound(DEFAULT_SIGNATURE_SECRET, to=OWN, msisdn=SENDER, text="by JSON")
    assert await hooks.vonage_get(VONAGE_INBOUND, get) == 200
    assert await hooks.vonage_post(VONAGE_INBOUND, form) == 200
    assert await hooks.vonage_post(VONAGE_INBOUND, as_json, as_json=True) == 200
    async with db.read() as session:
        stored = (await session.scalars(select(Message).order_by(Message.id))).all()
    assert [(m.provider, m.body, m.from_e164, m.to_e164) for m in stored] == [
        ("vonage", text, SENDER, OWN) for text in ("by GET", "by form", "by JSON")
    ]
    assert len(await deliveries(db, "sms")) == 3


async def test_vonage_refuses_forged_missing_and_stale_signatures(db: Database, hooks: Hooks, owner: int) -> None:
    forged = build_inbound("wrong-secret", to=OWN, msisdn=SENDER, text="forged")
    assert await hooks.vonage_get(VONAGE_INBOUND, forged) == 403
    unsigned = {k: v for k, v in build_inbound(DEFAULT_SIGNATURE_SECRET, to=OWN, msisdn=SENDER, text="x").items()
                if k != "sig"}
    assert await hooks.vonage_post(VONAGE_INBOUND, unsigned) == 403
    stale = sign_params(DEFAULT_SIGNATURE_SECRET, {"msisdn": SENDER[1:], "to": OWN[1:], "messageId": "OLD1",
                                                  "text": "replayed", "timestamp": "1000000000"})
    assert await hooks.vonage_get(VONAGE_INBOUND, stale) == 403
    assert await hooks.vonage_post(VONAGE_INBOUND, {"not": "json"}, as_json=False) == 403
    assert await count(db, Message) == 0
    assert hooks.metric("vonage", "forbidden") == 4
    assert await hooks.vonage_get(VONAGE_INBOUND, {}) == 200  # the dashboard's URL check


async def test_vonage_without_a_signature_secret_refuses_everything(db: Database, owner: int) -> None:
    started, server = await start_hooks(db, vonage_signature_secret=None)
    try:
        hook = build_inbound(DEFAULT_SIGNATURE_SECRET, to=OWN, msisdn=SENDER, text="unsigned deployment")
        assert await started.vonage_get(VONAGE_INBOUND, hook) == 403
        assert await started.vonage_get(VONAGE_INBOUND, {}) == 200
    finally:
        await started.http.close()
        await server.stop()
    assert await count(db, Message) == 0


async def test_vonage_malformed_is_a_400(db: Database, hooks: Hooks, owner: int) -> None:
    signed = sign_params(DEFAULT_SIGNATURE_SECRET, {"to": OWN[1:], "messageId": "M1", "text": "no sender"})
    assert await hooks.vonage_get(VONAGE_INBOUND, signed) == 400
    async with hooks.http.post(f"{hooks.local}{VONAGE_INBOUND}", data=b"{not json",
                               headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400
    assert await count(db, Message) == 0


async def test_vonage_two_part_text_is_joined_once_in_any_order(db: Database, hooks: Hooks, owner: int) -> None:
    first_half = "A" * 153
    second_half = "…and the end & <more>"
    part1, part2 = build_concat_inbound(DEFAULT_SIGNATURE_SECRET, to=OWN, msisdn=SENDER, parts=[first_half, second_half])
    assert await hooks.vonage_get(VONAGE_INBOUND, part2) == 200
    assert await hooks.vonage_get(VONAGE_INBOUND, part2) == 200  # a retried part
    assert await count(db, Message) == 0 and await deliveries(db) == []
    assert await hooks.vonage_get(VONAGE_INBOUND, part1) == 200
    assert await hooks.vonage_get(VONAGE_INBOUND, part1) == 200
    async with db.read() as session:
        (message,) = (await session.scalars(select(Message))).all()
    assert message.body == first_half + second_half and message.provider_message_id == part1["messageId"]
    (delivery,) = await deliveries(db, "sms")
    assert "…and the end &amp; &lt;more&gt;" in relay_text(delivery)


async def test_vonage_delivery_receipt(db: Database, hooks: Hooks, owner: int) -> None:
    async with db.transaction() as session:
        session.add(Message(
            user_id=owner, direction="outbound", provider="vonage", provider_message_id="0A0000001", from_e164=OWN,
            to_e164=SENDER, body="hi", status="accepted",
        ))
    receipt = build_dlr(DEFAULT_SIGNATURE_SECRET, message_id="0A0000001", status="delivered", msisdn=SENDER, to=OWN)
    assert await hooks.vonage_get(VONAGE_STATUS, receipt) == 200
    async with db.read() as session:
        assert await session.scalar(select(Message.status)) == "delivered"
    failed = build_dlr(DEFAULT_SIGNATURE_SECRET, message_id="0A0000001", status="failed", msisdn=SENDER, to=OWN,
                       err_code="6")
    assert await hooks.vonage_post(VONAGE_STATUS, failed, as_json=True) == 200
    async with db.read() as session:
        assert await session.scalar(select(Message.status)) == "delivered"


# --- concurrency ---------------------------------------------------------------------------------------------


@pytest.mark.postgres_only
async def test_the_same_webhook_twenty_times_at_once_is_one_message_and_one_delivery(
    db: Database, hooks: Hooks, owner: int
) -> None:
    hook = twilio_inbound("twenty times")
    results = await asyncio.gather(*(hooks.twilio(hook) for _ in range(20)))
    assert [status for status, _, _ in results] == [200] * 20
    assert await count(db, Message) == 1 and len(await deliveries(db, "sms")) == 1
    parts = build_concat_inbound(DEFAULT_SIGNATURE_SECRET, to=OWN, msisdn=SENDER, parts=["x" * 153, "y" * 10, "z"])
    statuses = await asyncio.gather(*(hooks.vonage_get(VONAGE_INBOUND, part) for part in parts * 5))
    assert statuses == [200] * 15
    assert await count(db, Message) == 2 and len(await deliveries(db, "sms")) == 2
    async with db.read() as session:
        joined = await session.scalar(select(Message.body).where(Message.provider == "vonage"))
    assert joined == "x" * 153 + "y" * 10 + "z"


def test_webhook_paths_are_the_contract() -> None:
    assert json.dumps([TWILIO_SMS, TWILIO_STATUS]) == json.dumps(
        [f"{PUBLIC}/webhooks/twilio/sms", f"{PUBLIC}/webhooks/twilio/status"]
    )
