"""Bounded bodies: the JSON and form helpers every webhook uses, the parsers behind them, and the routes' answers."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.providers.sms import (
    parse_twilio_inbound,
    parse_twilio_status,
    parse_vonage_inbound,
    parse_vonage_status,
)
from core.providers.textverified_parse import parse_webhook_body
from core.providers.verification import ProviderError, sign_webhook
from tests.fakes.vonage_api import DEFAULT_SIGNATURE_SECRET, build_inbound
from tests.webhooks.test_malformed_requests import TV_SECRET, Server
from tests.webhooks.test_malformed_requests import server as server
from webhooks.bodies import (
    MAX_FIELD_CHARS,
    MAX_FORM_FIELDS,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    BadBody,
    _form_pairs,
    json_depth_exceeds,
    parse_form,
    parse_json,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BOMB = b"[" * 100_000 + b"]" * 100_000


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=30,
)
mappings = st.dictionaries(st.text(max_size=12), st.text(max_size=30) | st.integers().map(str), max_size=12)


# --- the helpers -----------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_the_depth_scan_agrees_with_the_parsed_value(value: Any) -> None:
    raw = json.dumps(value).encode()
    for limit in (0, 1, 2, 3, 5):
        assert json_depth_exceeds(raw, limit) == (_depth(value) > limit)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_parse_json_returns_a_value_or_refuses_with_400_or_413(raw: bytes) -> None:
    try:
        parse_json(raw)
    except BadBody as error:
        assert error.status in (400, 413)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300), charset=st.sampled_from([None, "utf-8", "latin-1", "utf-16", "bogus"]))
def test_parse_form_returns_fields_or_refuses_with_400_or_413(raw: bytes, charset: str | None) -> None:
    try:
        parse_form(raw, charset)
    except BadBody as error:
        assert error.status in (400, 413)


form_text = st.text(st.sampled_from("ab=&+% 2E9CFé\u00ff\u20ac") | st.characters(codec="utf-8"), max_size=60)


@settings(max_examples=500, deadline=None)
@given(text=form_text | mappings.map(urlencode), encoding=st.sampled_from(["utf-8", "latin-1"]))
def test_form_pairs_are_what_parse_qsl_gives(text: str, encoding: str) -> None:
    try:
        expected: list[tuple[str, str]] | type[Exception] = parse_qsl(
            text, keep_blank_values=True, encoding=encoding, errors="strict")
    except UnicodeError:
        expected = UnicodeError
    if expected is UnicodeError:
        with pytest.raises(UnicodeError):
            _form_pairs(text, encoding)
    else:
        assert _form_pairs(text, encoding) == expected


def test_json_limits() -> None:
    assert parse_json(b'{"a": [1, {"b": "\\u00e9"}]}') == {"a": [1, {"b": "é"}]}
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(nested) is not None
    for raw, status in [
        (BOMB, 400),  # 200,000 bytes, but a nesting bomb is named as one
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), 400),
        (b'{"a": "' + b"x" * MAX_JSON_BYTES + b'"}', 413),
        (b'{"a": NaN}', 400), (b'{"a": Infinity}', 400), (b"\xff\xfe{}", 400), (b'{"a": 1', 400),
        (b'{"a": "\\u0000"}', 400), (b'{"a": "\\ud800"}', 400), (b'{"\\ud800": 1}', 400), (b"1" * 5000, 400),
    ]:
        with pytest.raises(BadBody) as refused:
            parse_json(raw)
        assert refused.value.status == status, raw[:40]
    # Brackets inside strings are text, not depth.
    assert parse_json(json.dumps({"a": "[" * 100}).encode()) == {"a": "[" * 100}


def test_json_depth_bomb_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(BadBody) as refused:
        parse_json(BOMB, max_bytes=len(BOMB))
    assert refused.value.status == 400 and "deeper" in refused.value.reason


def test_form_limits() -> None:
    form = parse_form(b"a=1&a=2&b=%C3%A9&c=", "utf-8")
    assert form.getall("a") == ["1", "2"] and form["b"] == "é" and form["c"] == ""
    assert parse_form(b"b=%E9", "latin-1")["b"] == "é"
    for raw, status in [
        (b"Body=%FF%FE", 400), (b"Body=\xff", 400), (b"Body=a%00b", 400),
        (b"&".join([b"a=1"] * (MAX_FORM_FIELDS + 1)), 413), (b"Body=" + b"x" * (MAX_FIELD_CHARS + 1), 413),
    ]:
        with pytest.raises(BadBody) as refused:
            parse_form(raw)
        assert refused.value.status == status, raw[:40]
    with pytest.raises(BadBody):
        parse_form(b"a=1", "no-such-charset")


# --- the providers' parsers: a value or ValueError (ProviderError), nothing else --------------------------------


@settings(max_examples=300, deadline=None)
@given(params=mappings)
def test_sms_webhook_parsers_return_or_raise_value_error(params: Mapping[str, str]) -> None:
    for parse in (parse_twilio_inbound, parse_twilio_status, parse_vonage_inbound, parse_vonage_status):
        try:
            parse(params)
        except ValueError:
            pass


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_textverified_parser_returns_or_raises_provider_error(value: Any) -> None:
    for envelope in (value, {"event": "v2.sms.received", "id": "e1", "data": value},
                     {"event": "v2.verification.completed", "idempotencyKey": value, "data": {"id": value}}):
        try:
            parse_webhook_body(json.dumps(envelope).encode())
        except ProviderError:
            pass


# --- the routes ------------------------------------------------------------------------------------------------


def _warned_not_errored(caplog: pytest.LogCaptureFixture, logger: str) -> None:
    records = caplog.get_records("call")
    assert any(r.levelno == logging.WARNING and r.name == logger for r in records)
    assert not [r for r in records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("path", ["/webhooks/twilio/sms", "/webhooks/twilio/status", "/webhooks/vonage/inbound",
                                  "/webhooks/vonage/status"])
async def test_a_form_that_is_not_utf8_is_a_400_with_a_warning(
    server: Server, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Latin-1 "é" as raw bytes and percent-escaped: request.post() used to raise UnicodeDecodeError (500).
    assert await server.post(path, b"From=%2B1415&Body=caf\xe9", FORM) == 400
    assert await server.post(path, b"From=%2B1415&Body=caf%E9", FORM) == 400
    _warned_not_errored(caplog, f"webhooks.{path.split('/')[2]}")


@pytest.mark.parametrize("path", ["/webhooks/twilio/sms", "/webhooks/vonage/inbound"])
async def test_wrong_content_types_huge_fields_and_too_many_fields(server: Server, path: str) -> None:
    assert await server.post(path, b"--xyz\r\n\r\n--xyz--", {"Content-Type": "multipart/form-data; boundary=xyz"}) == 400
    assert await server.post(path, b"hello", {"Content-Type": "text/plain"}) == 400
    assert await server.post(path, urlencode({"Body": "x" * (MAX_FIELD_CHARS + 1)}).encode(), FORM) == 413
    assert await server.post(path, b"&".join([b"a=1"] * (MAX_FORM_FIELDS + 1)), FORM) == 413
    assert await server.post(path, b"x" * (server.services.settings.http_max_body_bytes + 1), FORM) == 413


async def test_a_json_bomb_to_vonage_is_a_400_signed_or_not(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    assert await server.post("/webhooks/vonage/inbound", BOMB, {"Content-Type": "application/json"}) == 400
    assert await server.post("/webhooks/vonage/inbound", deep, {"Content-Type": "application/json"}) == 400
    # Vonage's JSON is one flat object; anything nested cannot be one of its webhooks, signed or not.
    params = build_inbound(DEFAULT_SIGNATURE_SECRET, to="14155550100", msisdn="447700900001", text="hi")
    nested = {**params, "text": {"nested": [1, 2]}}
    assert await server.post("/webhooks/vonage/inbound", json.dumps(nested).encode(),
                             {"Content-Type": "application/json"}) == 400
    _warned_not_errored(caplog, "webhooks.vonage")


async def test_textverified_checks_the_signature_before_parsing_and_bounds_the_signed_body(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Content-Type": "application/json"}
    # Unsigned: 403 whatever the body, so nothing about it was parsed.
    assert await server.post("/webhooks/textverified", BOMB, headers) == 403
    # Signed but nested 100,000 deep: 400, no RecursionError.
    signed = {**headers, "X-Webhook-Signature": sign_webhook(TV_SECRET, BOMB)}
    assert await server.post("/webhooks/textverified", BOMB, signed) == 400
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    signed = {**headers, "X-Webhook-Signature": sign_webhook(TV_SECRET, deep)}
    assert await server.post("/webhooks/textverified", deep, signed) == 400
    # Signed, flat and over the JSON bound: 413.
    big = json.dumps({"event": "v2.sms.received", "data": {"smsContent": "x" * MAX_JSON_BYTES}}).encode()
    signed = {**headers, "X-Webhook-Signature": sign_webhook(TV_SECRET, big)}
    assert await server.post("/webhooks/textverified", big, signed) == 413
    _warned_not_errored(caplog, "webhooks.textverified")
