"""VonageProvider against FakeVonageServer: wire format, status mapping, retries, numbers, balance, cleanup."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from core.providers.sms import (
    InvalidRecipient,
    NotSmsCapable,
    ProviderUnavailable,
    RateLimited,
    RecipientOptedOut,
    SmsProvider,
    SmsProviderError,
    UnverifiedTrialNumber,
)
from core.providers.vonage import VonageProvider
from tests.fakes.vonage_api import FakeVonageServer

STATUS_URL = "https://cumapp.example/webhooks/vonage/status"
SMS_URL = "https://cumapp.example/webhooks/vonage/sms"
FROM = "+14155550100"
TO = "+447700900001"


@pytest.fixture
async def fake() -> AsyncIterator[FakeVonageServer]:
    async with FakeVonageServer() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeVonageServer) -> AsyncIterator[VonageProvider]:
    vonage = VonageProvider(fake.api_key, fake.api_secret, rest_base_url=fake.base_url, backoff_seconds=0.001)
    yield vonage
    await vonage.close()


def test_satisfies_protocol() -> None:
    assert isinstance(VonageProvider("key", "secret"), SmsProvider)


async def test_send_wire_format(fake: FakeVonageServer, provider: VonageProvider) -> None:
    result = await provider.send(FROM, TO, "Hello there", STATUS_URL)

    assert result.status == "accepted"
    assert result.cost_cents == 1  # 0.0075 rounds up
    form = fake.requests_to("/sms/json")[0].form
    assert form["from"] == "14155550100" and form["to"] == "447700900001"
    assert form["text"] == "Hello there"
    assert form["callback"] == STATUS_URL
    assert form["api_key"] == fake.api_key and form["api_secret"] == fake.api_secret
    assert "type" not in form
    assert fake.sent[0].message_ids == [result.provider_message_id]


async def test_non_gsm_text_goes_as_unicode(fake: FakeVonageServer, provider: VonageProvider) -> None:
    await provider.send(FROM, TO, "Привет 👋", STATUS_URL)
    assert fake.requests_to("/sms/json")[0].form["type"] == "unicode"


async def test_long_text_sums_part_prices(fake: FakeVonageServer, provider: VonageProvider) -> None:
    result = await provider.send(FROM, TO, "x" * 400, STATUS_URL)  # 3 GSM-7 parts
    assert len(fake.sent[0].message_ids) == 3
    assert result.provider_message_id == fake.sent[0].message_ids[0]
    assert result.cost_cents == 3  # 3 x 0.75 = 2.25, rounded up


@pytest.mark.parametrize(
    ("status", "text", "error", "retryable"),
    [
        ("2", "Missing to param", InvalidRecipient, False),
        ("3", "Invalid to address", InvalidRecipient, False),
        ("3", "Invalid from param", SmsProviderError, False),
        ("6", "Invalid Message", NotSmsCapable, False),
        ("7", "Number barred", RecipientOptedOut, False),
        ("9", "Partner quota exceeded", ProviderUnavailable, False),
        ("5", "Internal Error", ProviderUnavailable, True),
        ("29", "Non White-listed Destination - rejected", UnverifiedTrialNumber, False),
    ],
)
async def test_status_codes_are_mapped(
    fake: FakeVonageServer,
    provider: VonageProvider,
    status: str,
    text: str,
    error: type[SmsProviderError],
    retryable: bool,
) -> None:
    fake.fail_next("/sms/json", vonage_status=status, error_text=text)
    with pytest.raises(SmsProviderError) as raised:
        await provider.send(FROM, TO, "hi", STATUS_URL)
    assert type(raised.value) is error
    assert raised.value.code == status
    assert raised.value.retryable is retryable
    assert text not in raised.value.message
    assert len(fake.requests_to("/sms/json")) == 1


async def test_trial_whitelist(fake: FakeVonageServer, provider: VonageProvider) -> None:
    fake.whitelist = {"447700900001"}
    await provider.send(FROM, TO, "ok", STATUS_URL)
    with pytest.raises(UnverifiedTrialNumber):
        await provider.send(FROM, "+447700900002", "not ok", STATUS_URL)


async def test_throttled_is_retried_then_succeeds(fake: FakeVonageServer, provider: VonageProvider) -> None:
    fake.fail_next("/sms/json", vonage_status="1", error_text="Throughput Rate Exceeded", count=2)
    result = await provider.send(FROM, TO, "hi", STATUS_URL)
    assert result.provider_message_id
    assert len(fake.requests_to("/sms/json")) == 3


async def test_throttled_gives_up_as_rate_limited(fake: FakeVonageServer) -> None:
    fake.fail_next("/sms/json", vonage_status="1", count=10)
    vonage = VonageProvider(
        fake.api_key, fake.api_secret, rest_base_url=fake.base_url, max_attempts=2, backoff_seconds=0.001
    )
    try:
        with pytest.raises(RateLimited):
            await vonage.send(FROM, TO, "hi", STATUS_URL)
    finally:
        await vonage.close()
    assert len(fake.requests_to("/sms/json")) == 2


async def test_bad_credentials(fake: FakeVonageServer) -> None:
    vonage = VonageProvider(fake.api_key, "wrong", rest_base_url=fake.base_url, backoff_seconds=0.001)
    try:
        with pytest.raises(ProviderUnavailable) as sms_error:
            await vonage.send(FROM, TO, "hi", STATUS_URL)
        with pytest.raises(ProviderUnavailable) as balance_error:
            await vonage.balance_cents()
    finally:
        await vonage.close()
    assert sms_error.value.code == "4" and not sms_error.value.retryable
    assert balance_error.value.code == "401" and not balance_error.value.retryable


async def test_numbers_and_account_use_basic_auth(fake: FakeVonageServer, provider: VonageProvider) -> None:
    found = await provider.search_numbers("US", limit=1)
    await provider.buy_number(found[0].e164, SMS_URL, STATUS_URL)
    await provider.balance_cents()
    non_sms = [r for r in fake.requests if r.path != "/sms/json"]
    assert non_sms and all(r.basic_auth and r.authorized for r in non_sms)
    assert all("api_secret" not in r.query and "api_secret" not in r.form for r in non_sms)


async def test_search_by_area_code_and_contains(fake: FakeVonageServer, provider: VonageProvider) -> None:
    by_area = await provider.search_numbers("US", area_code="212", limit=3)
    assert [n.e164 for n in by_area] == ["+12125550100", "+12125550101", "+12125550102"]
    assert all(n.monthly_cost_cents == 90 and n.provider == "vonage" and n.country == "US" for n in by_area)
    query = fake.requests_to("/number/search")[0].query
    assert (query["pattern"], query["search_pattern"], query["features"]) == ("1212", "0", "SMS")

    both = await provider.search_numbers("US", area_code="415", contains="0142")
    assert [n.e164 for n in both] == ["+14155550142"]
    by_digits = await provider.search_numbers("GB", contains="900150")
    assert [n.e164 for n in by_digits] == ["+447700900150"]
    assert await provider.search_numbers("FR") == []


async def test_buy_sets_inbound_url_and_release_cancels(fake: FakeVonageServer, provider: VonageProvider) -> None:
    bought = await provider.buy_number("+447700900123", SMS_URL, STATUS_URL)  # never searched: looked up first
    assert (bought.provider_sid, bought.e164, bought.country, bought.monthly_cost_cents) == (
        "447700900123", "+447700900123", "GB", 100,
    )
    assert fake.owned["447700900123"]["moHttpUrl"] == SMS_URL
    assert fake.requests_to("/number/buy")[0].form == {"country": "GB", "msisdn": "447700900123"}

    with pytest.raises(SmsProviderError) as raised:
        await provider.buy_number("+447700900123", SMS_URL, STATUS_URL)
    assert "no longer available" in raised.value.message

    await provider.release_number(bought.provider_sid)
    assert fake.cancelled == ["447700900123"]


async def test_numbers_api_429_is_retried(fake: FakeVonageServer, provider: VonageProvider) -> None:
    fake.fail_next("/number/search", http_status=429, error_text="rate limited")
    assert len(await provider.search_numbers("US", limit=2)) == 2
    assert len(fake.requests_to("/number/search")) == 2


async def test_balance(fake: FakeVonageServer, provider: VonageProvider) -> None:
    fake.balance = 10.28
    assert await provider.balance_cents() == 1028


async def test_transport_errors_become_provider_unavailable() -> None:
    calls: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    vonage = VonageProvider(
        "key", "secret", transport=httpx.MockTransport(refuse), max_attempts=3, backoff_seconds=0.001
    )
    try:
        with pytest.raises(ProviderUnavailable) as raised:
            await vonage.balance_cents()
        assert raised.value.code == "network"
        assert len(calls) == 3  # a read is retried
        with pytest.raises(ProviderUnavailable):
            await vonage.send(FROM, TO, "hi", STATUS_URL)
        assert len(calls) == 4  # a send is not, it may have gone through
    finally:
        await vonage.close()
    assert all(str(c.url).startswith("https://rest.nexmo.com/") for c in calls)


async def test_close(provider: VonageProvider) -> None:
    await provider.close()
    assert provider._http.is_closed


async def test_secret_never_logged(
    fake: FakeVonageServer, provider: VonageProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.fail_next("/sms/json", vonage_status="1", count=1)
    await provider.send(FROM, TO, "hi", STATUS_URL)
    await provider.balance_cents()
    assert caplog.records
    assert fake.api_secret not in caplog.text
    assert fake.api_secret not in repr(provider)
