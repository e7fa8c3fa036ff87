"""TextVerifiedProvider against the local fake TextVerified v2: auth, cache, actions, errors, webhooks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

from core.providers.textverified import TextVerifiedProvider, map_state, parse_datetime, to_e164
from core.providers.verification import (
    InsufficientBalance,
    NotAllowed,
    NotFound,
    PriceChanged,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
    VerificationProvider,
    sign_webhook,
    verify_webhook_signature,
)
from tests.fakes.textverified_api import FakeTextVerifiedServer

SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldA=="


class RecordingSleep:
    """Stands in for asyncio.sleep so backoff waits are checked without spending them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTextVerifiedServer]:
    async with FakeTextVerifiedServer(page_size=2) as server:
        yield server


@pytest.fixture
def sleeper() -> RecordingSleep:
    return RecordingSleep()


# The client's timeout, and how long the timeout tests' fake holds an answer: under a loaded CI machine a worker
# may stall for a few hundred milliseconds (0.3 s failed a plain retry's request there), so both have room.
CLIENT_TIMEOUT = 1.0
HELD = CLIENT_TIMEOUT + 0.5


@pytest.fixture
async def provider(
    fake: FakeTextVerifiedServer, sleeper: RecordingSleep
) -> AsyncIterator[TextVerifiedProvider]:
    tv = TextVerifiedProvider(SecretStr(fake.api_key), fake.username, fake.url, timeout=CLIENT_TIMEOUT, sleep=sleeper)
    yield tv
    await tv.close()


def auth_requests(fake: FakeTextVerifiedServer) -> int:
    return len(fake.requests_to("/auth", "POST"))


# ---- auth --------------------------------------------------------------------------------------------------


async def test_auth_sends_key_and_username_then_uses_bearer(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert await provider.balance_cents() == 1234
    auth, me = fake.requests
    assert (auth.method, auth.path) == ("POST", "/api/pub/v2/auth")
    assert auth.headers["X-API-KEY"] == fake.api_key
    assert auth.headers["X-API-USERNAME"] == fake.username
    assert "Authorization" not in auth.headers
    token = me.headers["Authorization"].removeprefix("Bearer ")
    assert token in fake.tokens
    assert "X-API-KEY" not in me.headers
    assert fake.api_key not in caplog.text and token not in caplog.text
    assert fake.api_key not in repr(provider)


async def test_token_is_reused_and_renewed_before_it_expires(sleeper: RecordingSleep) -> None:
    async with FakeTextVerifiedServer(token_ttl=0.6) as fake:
        async with TextVerifiedProvider(fake.api_key, fake.username, fake.url, sleep=sleeper) as tv:
            await tv.balance_cents()
            await tv.balance_cents()
            assert auth_requests(fake) == 1
            # Renewal is due at half the lifetime here (the usual 60 s margin exceeds this short life).
            await asyncio.sleep(0.35)
            await tv.balance_cents()
            assert auth_requests(fake) == 2
            assert fake.unauthorized_count == 0


async def test_revoked_token_is_renewed_once_after_a_401(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    await provider.balance_cents()
    fake.revoke_tokens()
    assert await provider.balance_cents() == 1234
    assert auth_requests(fake) == 2
    assert fake.unauthorized_count == 1


async def test_concurrent_calls_share_one_token(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    await asyncio.gather(*(provider.balance_cents() for _ in range(5)))
    assert auth_requests(fake) == 1


async def test_wrong_api_key_is_a_provider_error_without_retries(
    fake: FakeTextVerifiedServer, sleeper: RecordingSleep
) -> None:
    async with TextVerifiedProvider("wrong-key", fake.username, fake.url, sleep=sleeper) as tv:
        with pytest.raises(ProviderError) as caught:
            await tv.balance_cents()
    assert "wrong-key" not in str(caught.value)
    assert auth_requests(fake) == 1


# ---- services, price, create -------------------------------------------------------------------------------


async def test_services_are_fetched_once_and_cached(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    first = await provider.list_services()
    second = await provider.list_services()
    assert first == second
    assert {s.code for s in first} == set(fake.services)
    assert next(s for s in first if s.code == "whatsapp").name == "WhatsApp"
    calls = fake.requests_to("/services")
    assert len(calls) == 1
    assert calls[0].query == {"numberType": "mobile", "reservationType": "verification"}


async def test_price_is_in_integer_cents(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    quote = await provider.price("facebook")
    # 0.29 * 100 is 28.999...; truncating would lose a cent.
    assert (quote.service, quote.cost_cents) == ("facebook", 29)
    body = fake.requests_to("/pricing/verifications")[0].json
    assert body == {
        "serviceName": "facebook",
        "areaCode": False,
        "carrier": False,
        "numberType": "mobile",
        "capability": "sms",
    }


async def test_create_follows_the_location_to_the_details(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    verification = await provider.create("whatsapp", "order-1")
    post = fake.requests_to("/verifications", "POST")[0]
    assert post.headers["Idempotency-Key"] == "order-1"
    assert post.json == {"serviceName": "whatsapp", "capability": "sms"}
    assert fake.requests[-1].path == f"/api/pub/v2/verifications/{verification.id}"
    assert verification.service == "whatsapp"
    assert verification.number.startswith("+1") and len(verification.number) == 12
    assert verification.state == "active"
    assert verification.cost_cents == 115
    assert verification.ends_at is not None and verification.ends_at.tzinfo is not None
    assert verification.ends_at.utcoffset() == UTC.utcoffset(None)
    assert (verification.can_cancel, verification.can_report, verification.can_reuse) == (True, True, False)


async def test_same_idempotency_key_returns_the_same_verification(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    first = await provider.create("google", "order-2")
    again = await provider.create("google", "order-2")
    assert first.id == again.id
    assert len(fake.verifications) == 1


async def test_create_retried_after_a_timeout_buys_only_once(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    # The fake does the purchase, then holds the answer past the client's timeout.
    fake.delay_next("/api/pub/v2/verifications", HELD, method="POST")
    verification = await provider.create("telegram", "order-3")
    posts = fake.requests_to("/verifications", "POST")
    assert len(posts) == 2
    assert {p.headers["Idempotency-Key"] for p in posts} == {"order-3"}
    assert list(fake.verifications) == [verification.id]


async def test_create_refuses_to_pay_more_than_the_maximum(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    with pytest.raises(PriceChanged):
        await provider.create("whatsapp", "order-4", max_cost_cents=100)
    assert fake.requests_to("/verifications", "POST")[0].json["maxPrice"] == 1.0
    assert fake.verifications == {}


async def test_create_validates_the_idempotency_key(provider: TextVerifiedProvider) -> None:
    with pytest.raises(ValueError):
        await provider.create("whatsapp", "   ")


# ---- details, sms ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "ours"),
    [
        ("verificationPending", "active"),
        ("verificationCompleted", "completed"),
        ("verificationCanceled", "cancelled"),
        ("verificationTimedOut", "timed_out"),
        ("verificationReported", "reported"),
        ("verificationRefunded", "cancelled"),
        ("verificationReused", "completed"),
        ("verificationReactivated", "completed"),
        ("somethingNew", "pending"),
    ],
)
async def test_details_maps_states(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider, wire: str, ours: str
) -> None:
    created = await provider.create("discord", f"order-{wire}")
    fake.set_state(created.id, wire)
    assert (await provider.details(created.id)).state == ours


async def test_details_of_an_unknown_id_is_not_found(provider: TextVerifiedProvider) -> None:
    with pytest.raises(NotFound):
        await provider.details("lr_nope")


async def test_sms_follows_pagination_and_returns_oldest_first(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    verification = await provider.create("whatsapp", "order-5")
    other = await provider.create("google", "order-6")
    fake.deliver_sms(other.id, "G-111111 is your Google verification code.", "111111")
    for n in range(5):
        fake.deliver_sms(verification.id, f"Your WhatsApp code: 12{n}-456", f"12{n}456")
    messages = await provider.sms(verification.id)
    assert [m.parsed_code for m in messages] == [f"12{n}456" for n in range(5)]
    assert all(m.verification_id == verification.id for m in messages)
    assert all(m.received_at.tzinfo is not None for m in messages)
    pages = fake.requests_to("/sms")
    assert len(pages) == 3
    assert pages[0].query == {"reservationId": verification.id}
    assert (await provider.details(verification.id)).state == "completed"


async def test_sms_without_parsed_code(fake: FakeTextVerifiedServer, provider: TextVerifiedProvider) -> None:
    verification = await provider.create("whatsapp", "order-7")
    assert await provider.sms(verification.id) == []
    fake.deliver_sms(verification.id, "Welcome to WhatsApp")
    (message,) = await provider.sms(verification.id)
    assert (message.text, message.parsed_code) == ("Welcome to WhatsApp", None)


# ---- actions -----------------------------------------------------------------------------------------------


async def test_cancel_then_cancel_again(fake: FakeTextVerifiedServer, provider: TextVerifiedProvider) -> None:
    verification = await provider.create("whatsapp", "order-8")
    cancelled = await provider.cancel(verification.id)
    assert (cancelled.state, cancelled.can_cancel) == ("cancelled", False)
    with pytest.raises(NotAllowed) as caught:
        await provider.cancel(verification.id)
    assert caught.value.user_message


async def test_report(fake: FakeTextVerifiedServer, provider: TextVerifiedProvider) -> None:
    verification = await provider.create("google", "order-9")
    reported = await provider.report(verification.id)
    assert reported.state == "reported"
    assert fake.requests_to(f"/verifications/{verification.id}/report", "POST")


async def test_reactivate_moves_the_number_to_a_new_verification(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    verification = await provider.create("google", "order-10")
    fake.deliver_sms(verification.id, "G-222222 is your Google verification code.", "222222")
    fake.set_state(verification.id, "verificationCompleted", can_reactivate=True)
    assert (await provider.details(verification.id)).can_reactivate
    again = await provider.reactivate(verification.id)
    assert again.id != verification.id
    assert (again.number, again.state) == (verification.number, "active")


async def test_reuse_when_offered_and_refused_when_not(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    verification = await provider.create("whatsapp", "order-11")
    with pytest.raises(ProviderError):
        await provider.reuse(verification.id)
    fake.deliver_sms(verification.id, "Your WhatsApp code: 333-333", "333333")
    assert (await provider.details(verification.id)).can_reuse
    reused = await provider.reuse(verification.id)
    assert reused.id != verification.id and reused.number == verification.number


async def test_balance_is_in_cents(fake: FakeTextVerifiedServer, provider: TextVerifiedProvider) -> None:
    fake.balance = 0.07
    assert await provider.balance_cents() == 7


# ---- error mapping -----------------------------------------------------------------------------------------


async def test_402_is_insufficient_balance(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    fake.fail_next("/api/pub/v2/verifications", 402, method="POST")
    with pytest.raises(InsufficientBalance):
        await provider.create("whatsapp", "order-12")


async def test_documented_insufficient_balance_error_code(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    fake.balance = 0.10
    with pytest.raises(InsufficientBalance) as caught:
        await provider.create("whatsapp", "order-13")
    assert "balance" not in caught.value.user_message.lower()


async def test_out_of_stock_is_unavailable(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    fake.unavailable_services.add("tinder")
    fake.services["tinder"] = ("Tinder", 1.5)
    with pytest.raises(Unavailable):
        await provider.create("tinder", "order-14")
    fake.fail_next(
        "/api/pub/v2/verifications", 400, body={"errorCode": None, "errorDescription": "No numbers available"}
    )
    with pytest.raises(Unavailable):
        await provider.create("whatsapp", "order-15")


async def test_429_waits_for_retry_after_then_succeeds(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider, sleeper: RecordingSleep
) -> None:
    fake.fail_next("/account/me", 429, count=2, headers={"Retry-After": "3"})
    assert await provider.balance_cents() == 1234
    assert len(fake.requests_to("/account/me")) == 3
    assert len(sleeper.waits) == 2 and all(3 <= wait <= 4 for wait in sleeper.waits)


async def test_429_also_retries_non_idempotent_calls(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider, sleeper: RecordingSleep
) -> None:
    verification = await provider.create("whatsapp", "order-16")
    fake.fail_next("/cancel", 429)
    assert (await provider.cancel(verification.id)).state == "cancelled"
    assert len(fake.requests_to("/cancel")) == 2


async def test_429_forever_is_rate_limited(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider, sleeper: RecordingSleep
) -> None:
    fake.fail_next("/account/me", 429, count=100)
    with pytest.raises(RateLimited) as caught:
        await provider.balance_cents()
    assert len(fake.requests_to("/account/me")) == 4
    assert caught.value.retry_after is None
    # Without Retry-After the waits back off exponentially (with jitter).
    assert sleeper.waits[0] < sleeper.waits[-1]


async def test_429_with_a_long_retry_after_gives_up_at_once(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider, sleeper: RecordingSleep
) -> None:
    fake.fail_next("/account/me", 429, headers={"Retry-After": "120"})
    with pytest.raises(RateLimited) as caught:
        await provider.balance_cents()
    assert caught.value.retry_after == 120
    assert sleeper.waits == []


async def test_timeouts_on_reads_are_retried(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    verification = await provider.create("whatsapp", "order-17")
    fake.delay_next(f"/verifications/{verification.id}", HELD, method="GET")
    assert (await provider.details(verification.id)).id == verification.id
    assert len(fake.requests_to(f"/verifications/{verification.id}", "GET")) == 3  # create's read + 2


async def test_timeouts_on_cancel_are_not_retried(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    verification = await provider.create("whatsapp", "order-18")
    fake.delay_next("/cancel", HELD)
    with pytest.raises(ProviderTimeout):
        await provider.cancel(verification.id)
    assert len(fake.requests_to("/cancel")) == 1


async def test_server_errors_retried_on_reads_only(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    fake.fail_next("/account/me", 503)
    assert await provider.balance_cents() == 1234
    verification = await provider.create("whatsapp", "order-19")
    fake.fail_next("/cancel", 500, body="oops")
    with pytest.raises(ProviderError):
        await provider.cancel(verification.id)
    assert len(fake.requests_to("/cancel")) == 1


async def test_idempotency_conflict_is_waited_out(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    fake.fail_next(
        "/api/pub/v2/verifications",
        409,
        method="POST",
        body={
            "errorCode": "IdempotencyConflict",
            "errorDescription": "A request with this key is in progress.",
        },
    )
    verification = await provider.create("whatsapp", "order-20")
    assert len(fake.requests_to("/verifications", "POST")) == 2
    assert list(fake.verifications) == [verification.id]


async def test_unreachable_server_is_a_timeout(sleeper: RecordingSleep) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with TextVerifiedProvider("k", "u", transport=httpx.MockTransport(refuse), sleep=sleeper) as tv:
        with pytest.raises(ProviderTimeout):
            await tv.balance_cents()
    assert len(sleeper.waits) == 3


async def test_cancel_success_survives_a_failed_read_back(
    fake: FakeTextVerifiedServer, provider: TextVerifiedProvider
) -> None:
    verification = await provider.create("whatsapp", "order-21")
    fake.fail_next(f"/verifications/{verification.id}", 500, count=10, method="GET")
    cancelled = await provider.cancel(verification.id)
    assert (cancelled.id, cancelled.state) == (verification.id, "cancelled")
    assert fake.verifications[verification.id].state == "verificationCanceled"


# ---- webhooks ----------------------------------------------------------------------------------------------


def test_webhook_signature_good_wrong_missing_malformed() -> None:
    body = b'{"event":"v2.sms.received"}'
    good = FakeTextVerifiedServer.sign(SECRET, body)
    assert good.startswith("HMAC-SHA512=")
    assert verify_webhook_signature(SECRET, body, good)
    assert verify_webhook_signature(SECRET, body, "  " + good + " ")
    assert not verify_webhook_signature("whsec_other", body, good)
    assert not verify_webhook_signature(SECRET, body + b" ", good)
    assert not verify_webhook_signature(SECRET, body, None)
    assert not verify_webhook_signature(SECRET, body, "")
    assert not verify_webhook_signature("", body, good)
    assert not verify_webhook_signature(SECRET, body, good.removeprefix("HMAC-SHA512="))
    assert not verify_webhook_signature(SECRET, body, "HMAC-SHA256=" + good.removeprefix("HMAC-SHA512="))
    assert not verify_webhook_signature(SECRET, body, "HMAC-SHA512=not*base64!")
    assert not verify_webhook_signature(SECRET, body, "HMAC-SHA512=" + base64.b64encode(b"short").decode())


def test_webhook_signature_matches_the_documented_recipe() -> None:
    body = b'{"id":"evt_1"}'
    digest = hmac.new(b"plain-secret", body, hashlib.sha512).digest()
    assert verify_webhook_signature("plain-secret", body, "HMAC-SHA512=" + base64.b64encode(digest).decode())
    assert sign_webhook("plain-secret", body) == "HMAC-SHA512=" + base64.b64encode(digest).decode()
    # A whsec_ secret keyed by its base64 payload is accepted too (the docs do not say which is used).
    raw_key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(raw_key, body, hashlib.sha512).digest()
    assert verify_webhook_signature(SECRET, body, "HMAC-SHA512=" + base64.b64encode(digest).decode())


async def test_parse_sms_webhook(fake: FakeTextVerifiedServer, provider: TextVerifiedProvider) -> None:
    verification = await provider.create("whatsapp", "order-22")
    body = fake.webhook_payload(verification.id, "Your WhatsApp code: 444-555", "444555", event_id="evt_9")
    event = provider.parse_webhook(body)
    assert (event.kind, event.verification_id, event.event_key) == (
        "sms_received",
        verification.id,
        "whk_evt_9",
    )
    assert event.sms is not None
    assert (event.sms.text, event.sms.parsed_code) == ("Your WhatsApp code: 444-555", "444555")
    assert event.sms.received_at.tzinfo is not None
    # A redelivery of the same event dedupes to the same key.
    assert provider.parse_webhook(
        fake.webhook_payload(verification.id, "x", event_id="evt_9", attempt=2)
    ).event_key == ("whk_evt_9")


async def test_parse_other_webhooks() -> None:
    async with TextVerifiedProvider("k", "u") as tv:
        check_other_webhooks(tv)


def check_other_webhooks(tv: TextVerifiedProvider) -> None:
    created = json.dumps(
        {"id": "evt_2", "event": "v2.reservation.created", "data": {"id": "lr_1", "type": "verification"}}
    ).encode()
    event = tv.parse_webhook(created)
    assert (event.kind, event.verification_id, event.event_key) == ("verification_changed", "lr_1", "evt_2")
    rental = json.dumps(
        {"id": "evt_3", "event": "v2.rental.billingcycle.renewed", "Data": {"billingCycleId": "bc"}}
    )
    assert tv.parse_webhook(rental.encode()).kind == "other"
    capitalised = json.dumps(
        {"id": "evt_4", "event": "v2.sms.received", "Data": {"reservationId": "lr_2", "smsContent": "123456"}}
    )
    assert tv.parse_webhook(capitalised.encode()).verification_id == "lr_2"
    for bad in (b"not json", b"[]", b'{"id": "x"}', b'{"event": "v2.sms.received"}'):
        with pytest.raises(ProviderError):
            tv.parse_webhook(bad)


# ---- helpers -----------------------------------------------------------------------------------------------


def test_wire_helpers() -> None:
    assert to_e164("2223334444") == "+12223334444"
    assert to_e164("12223334444") == "+12223334444"
    assert to_e164("+44 7700 900123") == "+447700900123"
    assert parse_datetime("2020-06-15T00:41:35.1234567Z") == datetime(
        2020, 6, 15, 0, 41, 35, 123456, tzinfo=UTC
    )
    assert parse_datetime("2020-06-15T02:41:35+02:00") == datetime(2020, 6, 15, 0, 41, 35, tzinfo=UTC)
    assert parse_datetime("garbage") is None
    assert map_state("VERIFICATIONCOMPLETED") == "completed"


async def test_provider_satisfies_the_protocol() -> None:
    async with TextVerifiedProvider("k", "u") as tv:
        assert isinstance(tv, VerificationProvider)
