"""Inbound webhook helpers: Twilio and Vonage signature checks and parsing of messages and delivery reports."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from multidict import MultiDict

from core.providers.sms import (
    compute_vonage_signature,
    is_gsm7,
    parse_twilio_inbound,
    parse_twilio_status,
    parse_vonage_inbound,
    parse_vonage_status,
    price_to_cents,
    segment_count,
    validate_twilio_signature,
    validate_vonage_signature,
)
from tests.fakes.twilio_api import build_inbound_webhook, build_status_webhook
from tests.fakes.vonage_api import build_concat_inbound, build_dlr, build_inbound, sign_params

TOKEN = "twilio-test-token"
URL = "https://cumapp.example/webhooks/twilio/sms?tenant=1"
SECRET = "vonage-signature-secret"

# --- Twilio --------------------------------------------------------------------------------------------------


def test_twilio_signature_good_forged_missing() -> None:
    hook = build_inbound_webhook(TOKEN, URL, from_="+14155550199", to="+14155550100", body="Hi & bye = ok")
    assert validate_twilio_signature(TOKEN, hook.url, hook.params, hook.signature)

    tampered = {**hook.params, "Body": "send me money"}
    assert not validate_twilio_signature(TOKEN, hook.url, tampered, hook.signature)
    assert not validate_twilio_signature("another-token", hook.url, hook.params, hook.signature)
    assert not validate_twilio_signature(TOKEN, "https://evil.example/webhooks/twilio/sms?tenant=1", hook.params, hook.signature)
    assert not validate_twilio_signature(TOKEN, hook.url, hook.params, "bm90IGEgc2lnbmF0dXJl")
    assert not validate_twilio_signature(TOKEN, hook.url, hook.params, None)
    assert not validate_twilio_signature(TOKEN, hook.url, hook.params, "")
    assert not validate_twilio_signature("", hook.url, hook.params, hook.signature)


def test_twilio_signature_ignores_default_port() -> None:
    hook = build_inbound_webhook(TOKEN, "https://cumapp.example/sms", from_="+14155550199", to="+14155550100", body="x")
    assert validate_twilio_signature(TOKEN, "https://cumapp.example:443/sms", hook.params, hook.signature)
    # Signed over the URL with its port, called without: the second form the check tries.
    signed_with_port = build_inbound_webhook(TOKEN, "https://cumapp.example:443/sms", from_="+14155550199",
                                             to="+14155550100", body="x")
    assert validate_twilio_signature(TOKEN, "https://cumapp.example/sms", signed_with_port.params,
                                     signed_with_port.signature)
    assert not validate_twilio_signature(TOKEN, "https://cumapp.example:8443/sms", signed_with_port.params,
                                         signed_with_port.signature)


def test_twilio_headers_look_like_twilio() -> None:
    hook = build_status_webhook(TOKEN, URL, message_sid="SM1", status="sent", from_="+1", to="+2")
    assert hook.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert hook.headers["X-Twilio-Signature"] == hook.signature
    assert hook.body.startswith(b"SmsSid=SM1")


def test_parse_twilio_inbound_with_media() -> None:
    media = [("https://api.twilio.com/media/ME1", "image/jpeg"), ("https://api.twilio.com/media/ME2", "image/png")]
    hook = build_inbound_webhook(TOKEN, URL, from_="+14155550199", to="+14155550100", body="look", media=media)
    sms = parse_twilio_inbound(hook.params)
    assert sms.provider == "twilio"
    assert sms.provider_message_id == hook.params["MessageSid"] and sms.provider_message_id.startswith("MM")
    assert (sms.from_e164, sms.to_e164, sms.body) == ("+14155550199", "+14155550100", "look")
    assert sms.media_urls == ("https://api.twilio.com/media/ME1", "https://api.twilio.com/media/ME2")
    assert sms.received_at.tzinfo is not None and sms.part is None


def test_parse_twilio_inbound_plain_and_broken() -> None:
    hook = build_inbound_webhook(TOKEN, URL, from_="+14155550199", to="+14155550100", body="")
    sms = parse_twilio_inbound(hook.params)
    assert sms.body == "" and sms.media_urls == ()
    with pytest.raises(ValueError):
        parse_twilio_inbound({"Body": "no sid"})


@pytest.mark.parametrize(
    ("raw", "status", "error"),
    [
        ("queued", "queued", None),
        ("sending", "sending", None),
        ("sent", "sent", None),
        ("delivered", "delivered", None),
        ("undelivered", "undelivered", "30003"),
        ("failed", "failed", "30008"),
        ("accepted", "queued", None),
        ("something_new", "sent", None),
    ],
)
def test_parse_twilio_status(raw: str, status: str, error: str | None) -> None:
    hook = build_status_webhook(TOKEN, URL, message_sid="SMabc", status=raw, from_="+1415", to="+1416", error_code=error)
    update = parse_twilio_status(hook.params)
    assert (update.provider_message_id, update.status, update.error_code, update.provider) == (
        "SMabc", status, error, "twilio",
    )


def test_parse_twilio_status_needs_a_status() -> None:
    with pytest.raises(ValueError):
        parse_twilio_status({"MessageSid": "SM1"})


# --- Vonage --------------------------------------------------------------------------------------------------


def test_vonage_md5hash_matches_the_sdk_test_vector() -> None:
    # The vector from Vonage's own Python SDK tests (secret "secret", md5hash).
    params = {"a": "1", "b": "2", "timestamp": "1461605396", "sig": "6af838ef94998832dbfc29020b564830"}
    assert compute_vonage_signature("secret", params) == params["sig"]
    assert validate_vonage_signature("secret", params, max_age_seconds=None)
    assert not validate_vonage_signature("secret", params)  # 2016: far too old


@pytest.mark.parametrize("method", ["md5hash", "md5", "sha1", "sha256", "sha512"])
def test_vonage_signature_methods(method: str) -> None:
    params = build_inbound(SECRET, to="14155550100", msisdn="447700900001", text="a&b=c", method=method)  # type: ignore[arg-type]
    assert validate_vonage_signature(SECRET, params)
    assert validate_vonage_signature(SECRET, params, method=method)  # type: ignore[arg-type]
    assert validate_vonage_signature(SECRET, {**params, "sig": params["sig"].upper()})  # HMACs arrive in capitals


def test_vonage_signature_rejections() -> None:
    params = build_inbound(SECRET, to="14155550100", msisdn="447700900001", text="hello", method="sha256")
    assert not validate_vonage_signature("wrong-secret", params)
    assert not validate_vonage_signature(SECRET, {**params, "text": "hello!"})
    assert not validate_vonage_signature(SECRET, {k: v for k, v in params.items() if k != "sig"})
    assert not validate_vonage_signature(SECRET, {k: v for k, v in params.items() if k != "timestamp"})
    assert not validate_vonage_signature(SECRET, {**params, "sig": "0" * 64})
    assert not validate_vonage_signature(SECRET, params, method="md5hash")
    assert not validate_vonage_signature("", params)
    assert not validate_vonage_signature(SECRET, {**params, "timestamp": "nan"}, max_age_seconds=None)
    stale = sign_params(SECRET, {"msisdn": "1", "timestamp": str(int(time.time()) - 3600)}, "sha256")
    assert not validate_vonage_signature(SECRET, stale)
    assert validate_vonage_signature(SECRET, stale, max_age_seconds=None)


def test_parse_vonage_concatenated_inbound() -> None:
    first, second = build_concat_inbound(
        SECRET, to="14155550100", msisdn="447700900001", parts=["This is a long message that ", "arrives in two parts"]
    )
    assert validate_vonage_signature(SECRET, first) and validate_vonage_signature(SECRET, second)
    one, two = parse_vonage_inbound(first), parse_vonage_inbound(second)
    assert one.part is not None and two.part is not None
    assert one.part[0] == two.part[0] == first["concat-ref"]
    assert (one.part[1:], two.part[1:]) == ((2, 1), (2, 2))
    assert one.body + two.body == "This is a long message that arrives in two parts"
    assert (one.provider, one.from_e164, one.to_e164) == ("vonage", "+447700900001", "+14155550100")
    assert one.provider_message_id != two.provider_message_id


def test_parse_vonage_single_inbound() -> None:
    params = build_inbound(SECRET, to="14155550100", msisdn="447700900001", text="Hi", message_id="0A0000001234")
    params["message-timestamp"] = "2024-03-01 12:30:05"
    sms = parse_vonage_inbound(params)
    assert sms.part is None and sms.body == "Hi" and sms.provider_message_id == "0A0000001234"
    assert sms.received_at == datetime(2024, 3, 1, 12, 30, 5, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_vonage_inbound({**params, "concat": "true", "concat-total": "x"})


@pytest.mark.parametrize(
    ("raw", "status", "err", "error"),
    [
        ("delivered", "delivered", "0", None),
        ("accepted", "sent", "0", None),
        ("buffered", "sending", "0", None),
        ("expired", "undelivered", "5", "5"),
        ("failed", "failed", "1", "1"),
        ("rejected", "failed", "6", "6"),
    ],
)
def test_parse_vonage_status(raw: str, status: str, err: str, error: str | None) -> None:
    params = build_dlr(SECRET, message_id="0B00000012345678", status=raw, err_code=err, msisdn="447700900001",
                       to="14155550100", price="0.03330000")
    assert validate_vonage_signature(SECRET, params)
    update = parse_vonage_status(params)
    assert (update.provider_message_id, update.status, update.error_code) == ("0B00000012345678", status, error)
    assert update.provider == "vonage" and update.cost_cents == 4


# --- small helpers -------------------------------------------------------------------------------------------


def test_price_and_segments() -> None:
    assert price_to_cents("-0.00790") == 1
    assert price_to_cents("-1.00") == 100
    assert price_to_cents(None) is None and price_to_cents("n/a") is None
    assert is_gsm7("Hello {world} €5") and not is_gsm7("Привет")
    assert segment_count("x" * 160) == 1 and segment_count("x" * 161) == 2
    assert segment_count("я" * 70) == 1 and segment_count("я" * 71) == 2


def test_twilio_signature_with_a_multidict() -> None:
    hook = build_inbound_webhook(TOKEN, URL, from_="+14155550199", to="+14155550100", body="hi")
    assert validate_twilio_signature(TOKEN, hook.url, MultiDict(hook.params), hook.signature)
