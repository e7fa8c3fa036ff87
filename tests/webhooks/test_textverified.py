"""POST /webhooks/textverified: forged, missing and unconfigured signatures, malformed bodies, duplicates, a valid code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select

from core.models import LedgerEntry, OutboxDelivery, Verification, VerificationSms, WebhookEvent
from core.money import accounts
from core.money.accounts import Contact
from core.platform.db import Database
from core.providers.verification import sign_webhook
from core.services import Services, build_services
from core.verification.service import build_verification_service
from tests.conftest import make_settings
from tests.fakes.textverified_api import FakeTextVerifiedServer
from webhooks.server import create_app
from webhooks.textverified import PATH, add_routes

SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldA=="
ANN = Contact("telegram", "1001", chat_id="1001", username="ann", display_name="Ann")


@dataclass
class Setup:
    services: Services
    client: TestClient
    fake: FakeTextVerifiedServer
    verification: Verification


async def _setup(db: Database, fake: FakeTextVerifiedServer, secret: str | None) -> AsyncIterator[Setup]:
    settings = make_settings(
        db.url, sandbox="auto", textverified_api_key=fake.api_key, textverified_api_username=fake.username,
        textverified_base_url=fake.url, textverified_webhook_secret=secret,
    )
    services = build_services(settings, db=db)
    assert services.plan.verification == "textverified"
    services.verification = build_verification_service(settings, db, services.metrics, services.plan)
    async with db.transaction() as session:
        user = (await accounts.get_or_create(session, ANN, signup_bonus_cents=500)).user
    verification = await services.verification.start(user.id, "whatsapp", "k1")
    client = TestClient(TestServer(create_app(services, [add_routes])))
    await client.start_server()
    try:
        yield Setup(services, client, fake, verification)
    finally:
        await client.close()
        await services.verification.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTextVerifiedServer]:
    async with FakeTextVerifiedServer() as server:
        yield server


@pytest.fixture
async def setup(db: Database, fake: FakeTextVerifiedServer) -> AsyncIterator[Setup]:
    async for built in _setup(db, fake, SECRET):
        yield built


def metric(services: Services, outcome: str) -> float:
    value = services.metrics.registry.get_sample_value(
        "cumapp_webhooks_total", {"provider": "textverified", "outcome": outcome}
    )
    return value or 0.0


async def count(db: Database, model: type) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def body_for(s: Setup, text: str = "Your WhatsApp code: 123-456", event_id: str = "evt_1") -> bytes:
    return s.fake.webhook_payload(s.verification.provider_verification_id or "", text, event_id=event_id)


async def post(s: Setup, body: bytes, signature: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Webhook-Signature"] = signature
    response = await s.client.post(PATH, data=body, headers=headers)
    return response.status


async def nothing_stored(db: Database) -> bool:
    return all([await count(db, model) == 0 for model in (WebhookEvent, VerificationSms, OutboxDelivery)])


async def test_a_forged_signature_is_refused_and_changes_nothing(setup: Setup, db: Database) -> None:
    body = body_for(setup)
    assert await post(setup, body, sign_webhook("whsec_someone_else", body)) == 403
    assert await post(setup, body, sign_webhook(SECRET, body + b" ")) == 403  # signed a different body
    assert await post(setup, body, "HMAC-SHA512=not-base64!") == 403
    assert await nothing_stored(db)
    assert metric(setup.services, "forbidden") == 3


async def test_a_missing_signature_is_refused(setup: Setup, db: Database) -> None:
    assert await post(setup, body_for(setup), None) == 403
    assert await nothing_stored(db)
    assert metric(setup.services, "forbidden") == 1


async def test_without_a_configured_secret_everything_is_refused(db: Database, fake: FakeTextVerifiedServer) -> None:
    async for s in _setup(db, fake, None):
        body = body_for(s)
        assert await post(s, body, sign_webhook(SECRET, body)) == 403
        assert await nothing_stored(db)
        assert metric(s.services, "forbidden") == 1


async def test_a_malformed_body_is_a_bad_request(setup: Setup, db: Database) -> None:
    for body in (b"{not json", b"[]", b'{"event": "v2.sms.received"}'):
        assert await post(setup, body, sign_webhook(SECRET, body)) == 400
    assert await nothing_stored(db)
    assert metric(setup.services, "malformed") == 3


async def test_a_valid_webhook_delivers_the_code_once_even_when_repeated(setup: Setup, db: Database) -> None:
    body = body_for(setup)
    assert await post(setup, body, sign_webhook(SECRET, body)) == 200
    async with db.read() as session:
        verification = await session.get(Verification, setup.verification.id)
        assert verification is not None and verification.state == "code_received" and verification.code == "123456"
    redelivered = body_for(setup, event_id="evt_1")  # TextVerified retries with the same event
    assert await post(setup, redelivered, sign_webhook(SECRET, redelivered)) == 200
    assert await count(db, WebhookEvent) == 1 and await count(db, VerificationSms) == 1
    async with db.read() as session:
        codes = await session.scalar(
            select(func.count()).select_from(OutboxDelivery).where(OutboxDelivery.kind == "code")
        )
        captures = await session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "capture")
        )
    assert (codes, captures) == (1, 1)
    assert metric(setup.services, "handled") == 1 and metric(setup.services, "duplicate") == 1


async def test_a_webhook_for_someone_elses_rental_is_accepted_and_ignored(setup: Setup, db: Database) -> None:
    body = setup.fake.webhook_payload("lr_not_ours", "Your code: 999999", event_id="evt_x")
    assert await post(setup, body, sign_webhook(SECRET, body)) == 200
    assert await count(db, VerificationSms) == 0
    assert metric(setup.services, "unknown") == 1
