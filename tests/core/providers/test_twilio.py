"""TwilioProvider driving the real twilio SDK against FakeTwilioServer: base URL, errors, retries, cleanup."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
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
from core.providers.twilio import FALLBACK_MONTHLY_COST_CENTS, RebasedAsyncHttpClient, TwilioProvider
from tests.fakes.twilio_api import FakeTwilioServer

STATUS_URL = "https://cumapp.example/webhooks/twilio/status"
SMS_URL = "https://cumapp.example/webhooks/twilio/sms"
FROM = "+14155550100"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilioServer]:
    async with FakeTwilioServer() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeTwilioServer) -> AsyncIterator[TwilioProvider]:
    twilio = TwilioProvider(fake.account_sid, fake.auth_token, fake.base_url, backoff_seconds=0.001)
    yield twilio
    await twilio.close()


@pytest.fixture
def outgoing_urls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every URL any aiohttp session in the process is asked to open."""
    urls: list[str] = []
    original = aiohttp.ClientSession._request

    async def spy(self: aiohttp.ClientSession, method: str, str_or_url: Any, **kwargs: Any) -> Any:
        urls.append(str(str_or_url))
        return await original(self, method, str_or_url, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "_request", spy)
    return urls


async def exercise_every_call(provider: TwilioProvider) -> None:
    found = await provider.search_numbers("US", area_code="415", limit=2)
    bought = await provider.buy_number(found[0].e164, SMS_URL, STATUS_URL)
    await provider.send(bought.e164, "+14155550199", "hello", STATUS_URL)
    await provider.balance_cents()
    await provider.release_number(bought.provider_sid)


def test_satisfies_protocol() -> None:
    assert isinstance(TwilioProvider("AC" + "0" * 32, "token"), SmsProvider)


async def test_every_call_goes_to_the_base_url(
    fake: FakeTwilioServer, provider: TwilioProvider, outgoing_urls: list[str]
) -> None:
    await exercise_every_call(provider)

    assert outgoing_urls, "the spy saw no requests"
    assert all(url.startswith(fake.base_url + "/") for url in outgoing_urls), outgoing_urls
    seen = {(r.method, r.path) for r in fake.requests}
    prefix = f"/2010-04-01/Accounts/{fake.account_sid}"
    released = next(iter(fake.released_numbers))
    assert seen == {
        ("GET", f"{prefix}/AvailablePhoneNumbers/US/Local.json"),
        ("GET", "/v1/PhoneNumbers/Countries/US"),  # pricing.twilio.com, rebased too
        ("POST", f"{prefix}/IncomingPhoneNumbers.json"),
        ("POST", f"{prefix}/Messages.json"),
        ("GET", f"{prefix}/Balance.json"),
        ("DELETE", f"{prefix}/IncomingPhoneNumbers/{released}.json"),
    }
    assert len(outgoing_urls) == len(fake.requests)
    assert all(r.authorized for r in fake.requests)


async def test_region_and_edge_hosts_are_rebased_too(
    fake: FakeTwilioServer, monkeypatch: pytest.MonkeyPatch, outgoing_urls: list[str]
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    twilio = TwilioProvider(fake.account_sid, fake.auth_token, fake.base_url)
    try:
        await twilio.send(FROM, "+14155550199", "hi", STATUS_URL)
    finally:
        await twilio.close()
    assert outgoing_urls and all(url.startswith(fake.base_url) for url in outgoing_urls)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json", "http://h:1/pre/2010-04-01/Accounts/AC1/Messages.json"),
        ("https://pricing.twilio.com/v1/PhoneNumbers/Countries/US", "http://h:1/pre/v1/PhoneNumbers/Countries/US"),
        ("https://api.dublin.ie1.twilio.com/2010-04-01/x.json?Page=1", "http://h:1/pre/2010-04-01/x.json?Page=1"),
        ("http://elsewhere.example/x", "http://elsewhere.example/x"),
    ],
)
async def test_rebase(url: str, expected: str) -> None:
    assert RebasedAsyncHttpClient("http://h:1/pre/").rebase(url) == expected


async def test_no_base_url_keeps_twilio_hosts() -> None:
    url = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"
    assert RebasedAsyncHttpClient(None).rebase(url) == url


def test_bad_base_url_is_refused() -> None:
    with pytest.raises(ValueError):
        TwilioProvider("AC" + "0" * 32, "token", "ftp://example")


async def test_status_callback_on_every_create(fake: FakeTwilioServer, provider: TwilioProvider) -> None:
    results = [await provider.send(FROM, f"+1415555019{i}", f"message {i}", f"{STATUS_URL}?n={i}") for i in range(3)]

    creates = fake.requests_to("/Messages.json", "POST")
    assert len(creates) == 3
    for i, (request, result) in enumerate(zip(creates, results, strict=True)):
        assert request.form["StatusCallback"] == f"{STATUS_URL}?n={i}"
        assert request.form["From"] == FROM
        assert request.form["To"] == f"+1415555019{i}"
        assert request.form["Body"] == f"message {i}"
        assert result.provider_message_id.startswith("SM")
        assert result.status == "queued"
        assert result.cost_cents is None
        assert fake.messages[result.provider_message_id]["_status_callback"] == request.form["StatusCallback"]


async def test_price_becomes_positive_cents(fake: FakeTwilioServer, provider: TwilioProvider) -> None:
    fake.message_price = "-0.00790"
    result = await provider.send(FROM, "+14155550199", "hi", STATUS_URL)
    assert result.cost_cents == 1


@pytest.mark.parametrize(
    ("to", "error", "code"),
    [
        ("+15005550001", InvalidRecipient, "21211"),
        ("12345", InvalidRecipient, "21211"),
        ("+15005550004", RecipientOptedOut, "21610"),
        ("+15005550009", NotSmsCapable, "21614"),
    ],
)
async def test_error_codes_are_mapped(
    provider: TwilioProvider, to: str, error: type[SmsProviderError], code: str
) -> None:
    with pytest.raises(error) as raised:
        await provider.send(FROM, to, "hi", STATUS_URL)
    assert raised.value.code == code
    assert raised.value.retryable is False
    assert "Twilio" not in raised.value.message and "HTTP" not in raised.value.message


async def test_trial_account_unverified_recipient(fake: FakeTwilioServer, provider: TwilioProvider) -> None:
    fake.verified_numbers = {"+14155550111"}
    await provider.send(FROM, "+14155550111", "verified", STATUS_URL)
    with pytest.raises(UnverifiedTrialNumber) as raised:
        await provider.send(FROM, "+14155550112", "not verified", STATUS_URL)
    assert raised.value.code == "21608"


async def test_429_is_retried_then_succeeds(fake: FakeTwilioServer, provider: TwilioProvider) -> None:
    fake.fail_next("Messages.json", 429, 20429, count=2)
    result = await provider.send(FROM, "+14155550199", "hi", STATUS_URL)
    assert result.provider_message_id in fake.messages
    assert len(fake.requests_to("Messages.json", "POST")) == 3


async def test_429_without_code_is_rate_limited_too(fake: FakeTwilioServer) -> None:
    fake.fail_next("Messages.json", 429, None, count=10)
    twilio = TwilioProvider(fake.account_sid, fake.auth_token, fake.base_url, max_attempts=3, backoff_seconds=0.001)
    try:
        with pytest.raises(RateLimited) as raised:
            await twilio.send(FROM, "+14155550199", "hi", STATUS_URL)
    finally:
        await twilio.close()
    assert raised.value.retryable is True
    assert len(fake.requests_to("Messages.json", "POST")) == 3


async def test_429_on_a_list_page_is_retried(fake: FakeTwilioServer, provider: TwilioProvider) -> None:
    fake.fail_next("Local.json", 429, 20429, count=1)
    found = await provider.search_numbers("US", limit=3)
    assert len(found) == 3
    assert len(fake.requests_to("Local.json")) == 2


async def test_bad_credentials_are_not_retried(fake: FakeTwilioServer) -> None:
    twilio = TwilioProvider(fake.account_sid, "wrong-token", fake.base_url, backoff_seconds=0.001)
    try:
        with pytest.raises(ProviderUnavailable) as raised:
            await twilio.balance_cents()
    finally:
        await twilio.close()
    assert raised.value.retryable is False
    assert raised.value.code == "20003"
    assert len(fake.requests) == 1


async def test_server_errors_on_reads_are_retried(fake: FakeTwilioServer, provider: TwilioProvider) -> None:
    fake.fail_next("Balance.json", 503, 20500, count=1)
    assert await provider.balance_cents() == 2000
    assert len(fake.requests_to("Balance.json")) == 2


async def test_server_errors_on_send_are_not_retried(fake: FakeTwilioServer, provider: TwilioProvider) -> None:
    fake.fail_next("Messages.json", 500, 20500, count=1)
    with pytest.raises(ProviderUnavailable):
        await provider.send(FROM, "+14155550199", "hi", STATUS_URL)
    assert len(fake.requests_to("Messages.json")) == 1


async def test_unreachable_api_is_provider_unavailable() -> None:
    twilio = TwilioProvider("AC" + "0" * 32, "token", "http://127.0.0.1:9", max_attempts=2, backoff_seconds=0.001)
    try:
        with pytest.raises(ProviderUnavailable) as raised:
            await twilio.send(FROM, "+14155550199", "hi", STATUS_URL)
    finally:
        await twilio.close()
    assert raised.value.code == "network"


async def test_search_numbers(fake: FakeTwilioServer, provider: TwilioProvider) -> None:
    found = await provider.search_numbers("us", area_code="212", contains="0150", limit=5)
    assert [n.e164 for n in found] == ["+12125550150"]
    number = found[0]
    assert (number.country, number.locality, number.monthly_cost_cents, number.provider) == (
        "US", "New York", 115, "twilio",
    )
    query = fake.requests_to("Local.json")[0].query
    assert query["AreaCode"] == "212" and query["Contains"] == "0150" and query["SmsEnabled"] == "true"


async def test_search_unknown_country_is_empty(provider: TwilioProvider) -> None:
    assert await provider.search_numbers("ZZ") == []


async def test_pricing_outage_falls_back(fake: FakeTwilioServer, provider: TwilioProvider) -> None:
    fake.fail_next("/v1/PhoneNumbers", 404, 20404)
    found = await provider.search_numbers("US", limit=1)
    assert found[0].monthly_cost_cents == FALLBACK_MONTHLY_COST_CENTS


async def test_buy_and_release(fake: FakeTwilioServer, provider: TwilioProvider) -> None:
    bought = await provider.buy_number("+13125550142", SMS_URL, STATUS_URL)
    assert bought.provider_sid.startswith("PN")
    assert (bought.e164, bought.country, bought.monthly_cost_cents) == ("+13125550142", "US", 115)
    form = fake.requests_to("IncomingPhoneNumbers.json", "POST")[0].form
    assert form == {"PhoneNumber": "+13125550142", "SmsUrl": SMS_URL, "SmsMethod": "POST", "StatusCallback": STATUS_URL}

    with pytest.raises(SmsProviderError) as raised:
        await provider.buy_number("+13125550142", SMS_URL, STATUS_URL)
    assert raised.value.code == "21422"

    await provider.release_number(bought.provider_sid)
    assert fake.released_numbers == [bought.provider_sid]
    await provider.release_number(bought.provider_sid)  # already gone: no error


async def test_balance(fake: FakeTwilioServer, provider: TwilioProvider) -> None:
    fake.balance = "-1.505"
    assert await provider.balance_cents() == -151


async def test_close_closes_the_session(provider: TwilioProvider) -> None:
    await provider.send(FROM, "+14155550199", "hi", STATUS_URL)
    session = provider.http_client.session
    assert session is not None and not session.closed
    await provider.close()
    assert session.closed
    assert provider.http_client.session is None
    await provider.close()  # twice is fine


async def test_no_unclosed_session_warnings(fake: FakeTwilioServer) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        twilio = TwilioProvider(fake.account_sid, fake.auth_token, fake.base_url)
        await exercise_every_call(twilio)
        await twilio.close()
        del twilio
        gc.collect()
    assert not [w for w in caught if "nclosed" in str(w.message) or issubclass(w.category, DeprecationWarning)]


async def test_close_without_any_call() -> None:
    twilio = TwilioProvider("AC" + "0" * 32, "token")
    await twilio.close()


async def test_auth_token_never_logged(
    fake: FakeTwilioServer, provider: TwilioProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await provider.send(FROM, "+14155550199", "hi", STATUS_URL)
    with pytest.raises(InvalidRecipient):
        await provider.send(FROM, "+15005550001", "hi", STATUS_URL)
    assert caplog.records
    assert fake.auth_token not in caplog.text
    assert fake.auth_token not in repr(provider)
