"""No 5xx for any malformed request: every provider webhook over real HTTP, with bodies from hypothesis.

Random bytes under random content types, random forms and JSON, unsigned and correctly signed (so that they get
past the signature check to the parsers and the database): each must be answered below 500 and logged below ERROR.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from core.messaging.service import MessagingService
from core.platform.db import Database
from core.providers.sandbox_sms import SandboxSmsProvider
from core.providers.verification import sign_webhook
from core.services import Services, build_services
from core.verification.service import build_verification_service
from tests.core.messaging.test_service import PUBLIC, sms_settings
from tests.fakes.twilio_api import DEFAULT_AUTH_TOKEN
from tests.fakes.vonage_api import DEFAULT_SIGNATURE_SECRET, sign_params
from webhooks import textverified, twilio, vonage
from webhooks.server import WebServer, create_app

TV_SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldA=="
POST_ROUTES = [
    "/webhooks/twilio/sms", "/webhooks/twilio/status", "/webhooks/vonage/inbound", "/webhooks/vonage/status",
    "/webhooks/textverified",
]
CONTENT_TYPES = [
    "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=latin-1",
    "application/x-www-form-urlencoded; charset=utf-16", "application/x-www-form-urlencoded; charset=nonsense",
    "application/json", "application/json; charset=utf-8", "multipart/form-data; boundary=xyz",
    "multipart/form-data", "text/plain", "text/xml", "application/octet-stream", "", "*/*", ";;;", "a/b; c=d",
]
HYPOTHESIS = settings(
    max_examples=100, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Server:
    services: Services
    base: str
    http: aiohttp.ClientSession

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        async with self.http.post(f"{self.base}{path}", data=body, headers=headers) as response:
            await response.read()
            return response.status

    async def get(self, path: str, query: str) -> int:
        async with self.http.get(f"{self.base}{path}?{query}") as response:
            await response.read()
            return response.status


@pytest.fixture
async def server(db: Database, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Server]:
    settings_ = sms_settings(db, textverified_webhook_secret=TV_SECRET)
    services = build_services(settings_, db=db)
    services.messaging = MessagingService(db, {"sandbox": SandboxSmsProvider()}, settings_, services.metrics)
    services.verification = build_verification_service(settings_, db, services.metrics, services.plan)
    web_server = WebServer(
        create_app(services, [textverified.add_routes, twilio.add_routes, vonage.add_routes]), "127.0.0.1", 0
    )
    await web_server.start()
    caplog.set_level(logging.WARNING)
    http = aiohttp.ClientSession()
    try:
        yield Server(services, f"http://127.0.0.1:{web_server.port}", http)
    finally:
        await http.close()
        await web_server.stop()
        await services.messaging.close()
        await services.verification.close()
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


# --- strategies ----------------------------------------------------------------------------------------------

# Text as providers never send it too: NUL, control characters, every plane, very long.
printable = st.characters(codec="utf-8", exclude_characters="\x00")
texts = (
    st.text(printable, max_size=40) | st.text(printable, min_size=100, max_size=400)
    | st.sampled_from(["", " ", "\x00", "a\x00", "+1", "ä", "\u202e", "١٢٣"])
)
numbers_as_text = st.integers(min_value=-(10**20), max_value=10**20).map(str)
values = texts | numbers_as_text
# Mostly with the fields a parser needs, so that signed ones get past it to the database; sometimes anything.
twilio_forms = st.fixed_dictionaries(
    {"MessageSid": values, "From": values, "To": values},
    optional={
        "Body": values, "NumMedia": st.integers(min_value=-5, max_value=10**12).map(str) | values,
        "MediaUrl0": values, "MediaUrl1": values, "MessageStatus": values | st.sampled_from(["delivered", "failed"]),
        "ErrorCode": values,
    },
) | st.dictionaries(texts, values, max_size=6)
vonage_params = st.fixed_dictionaries(
    {"msisdn": values, "to": values, "messageId": values},
    optional={
        "text": values, "concat": st.just("true") | values, "concat-ref": values,
        "concat-total": numbers_as_text | values, "concat-part": numbers_as_text | values,
        "message-timestamp": values, "status": values | st.just("delivered"), "err-code": values, "price": values,
    },
) | st.dictionaries(texts, values, max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
textverified_events = st.fixed_dictionaries(
    {"event": st.sampled_from(["v2.sms.received", "v2.verification.completed", "v2.reservation.created"]) | texts},
    optional={
        "id": values | json_values, "idempotencyKey": values | json_values, "occurredAt": values,
        "data": st.fixed_dictionaries(
            {},
            optional={"reservationId": values | json_values, "id": values | json_values, "smsContent": values,
                      "parsedCode": values | json_values, "createdAt": values, "type": values},
        ) | json_values,
    },
)


def _twilio_signature(path: str, params: dict[str, str]) -> str:
    return RequestValidator(DEFAULT_AUTH_TOKEN).compute_signature(f"{PUBLIC}{path}", params)


# --- every route, anything at all ----------------------------------------------------------------------------


@HYPOTHESIS
@given(
    path=st.sampled_from(POST_ROUTES), body=st.binary(max_size=600), content_type=st.sampled_from(CONTENT_TYPES),
    signed=st.booleans(),
)
async def test_random_bytes_under_any_content_type_never_get_a_5xx(
    server: Server, path: str, body: bytes, content_type: str, signed: bool
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    if signed:  # a signature over the raw body: TextVerified accepts it, so its parser sees the bytes
        headers["X-Webhook-Signature"] = sign_webhook(TV_SECRET, body)
        headers["X-Twilio-Signature"] = _twilio_signature(path, {})
    assert await server.post(path, body, headers) < 500


# Signed, and each field one character over its column: a failed INSERT (500) on PostgreSQL before webhooks/fits.py.
LONG = {"MessageSid": "SM" + "a" * 127, "From": "+1415555" + "1" * 25, "To": "+1212555" + "2" * 25}


@HYPOTHESIS
@given(path=st.sampled_from([p for p in POST_ROUTES if "twilio" in p]), form=twilio_forms, signed=st.booleans())
@example(path="/webhooks/twilio/sms", form={**LONG, "Body": "hi"}, signed=True)
@example(path="/webhooks/twilio/sms", form={"MessageSid": "SM1", "From": "+1", "To": "+2", "NumMedia": "999999999"},
         signed=True)
@example(path="/webhooks/twilio/status", form={"MessageSid": "SM1", "MessageStatus": "failed", "ErrorCode": "9" * 17},
         signed=True)
async def test_twilio_forms_signed_or_not_never_get_a_5xx(
    server: Server, path: str, form: dict[str, str], signed: bool
) -> None:
    body = urlencode(form).encode()  # the bytes a client sends for this form
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signed:
        headers["X-Twilio-Signature"] = _twilio_signature(path, form)
    assert await server.post(path, body, headers) < 500


@HYPOTHESIS
@given(
    path=st.sampled_from(["/webhooks/vonage/inbound", "/webhooks/vonage/status"]), params=vonage_params,
    how=st.sampled_from(["query", "form", "json"]), signed=st.booleans(),
)
@example(path="/webhooks/vonage/inbound", params={"msisdn": "4477009" + "0" * 30, "to": "1415", "messageId": "m" * 129,
                                                  "text": "hi"}, how="json", signed=True)
@example(path="/webhooks/vonage/inbound", params={"msisdn": "447700900001", "to": "14155550100", "messageId": "m1",
                                                  "text": "hi", "concat": "true", "concat-ref": "r",
                                                  "concat-total": str(10**15), "concat-part": "1"}, how="form",
         signed=True)
async def test_vonage_params_signed_or_not_never_get_a_5xx(
    server: Server, path: str, params: dict[str, str], how: str, signed: bool
) -> None:
    if signed:
        params = sign_params(DEFAULT_SIGNATURE_SECRET, params, "sha256")
    if how == "query":
        assert await server.get(path, urlencode(params)) < 500
    elif how == "form":
        body = urlencode(params).encode()
        assert await server.post(path, body, {"Content-Type": "application/x-www-form-urlencoded"}) < 500
    else:
        body = json.dumps(params).encode()
        assert await server.post(path, body, {"Content-Type": "application/json"}) < 500


@HYPOTHESIS
@given(event=textverified_events | json_values)
@example(event={"event": "v2.verification.completed", "id": "e" * 161, "data": {"id": "v1"}})
async def test_signed_textverified_json_never_gets_a_5xx(server: Server, event: Any) -> None:
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json", "X-Webhook-Signature": sign_webhook(TV_SECRET, body)}
    assert await server.post("/webhooks/textverified", body, headers) < 500
