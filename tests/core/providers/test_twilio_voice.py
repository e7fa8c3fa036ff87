"""Twilio voice pieces without a database: webhook fields, TwiML answers, and where recordings may be fetched."""

from __future__ import annotations

import pytest

from core.providers.sms import SmsProviderError
from core.providers.twilio import TwilioProvider
from core.providers.twilio_voice import forward_twiml, parse_incoming_call, parse_recording, voicemail_twiml
from tests.fakes.twilio_api import FakeTwilioServer


def test_withheld_callers_and_missing_fields() -> None:
    assert parse_incoming_call({"CallSid": "CA1", "From": "Anonymous", "To": "+14155550100"}).from_e164 == ""
    assert parse_incoming_call({"CallSid": "CA1", "From": "+266696687", "To": "+14155550100"}).from_e164 == ""
    assert parse_incoming_call({"CallSid": "CA1", "From": "+14155550142", "To": "+14155550100"}).from_e164 == (
        "+14155550142")
    with pytest.raises(ValueError, match="CallSid"):
        parse_incoming_call({"From": "+14155550142", "To": "+14155550100"})
    with pytest.raises(ValueError, match="RecordingSid"):
        parse_recording({"CallSid": "CA1", "RecordingUrl": "https://api.twilio.com/x"})
    report = parse_recording({"CallSid": "CA1", "RecordingSid": "RE1", "RecordingUrl": "https://api.twilio.com/x",
                              "RecordingDuration": "oops"})
    assert (report.status, report.duration_seconds) == (None, 0)


def test_twiml_escapes_the_greeting_and_dials_the_number() -> None:
    twiml = voicemail_twiml("Hi <there> & bye", "es", "https://cumapp.example/webhooks/twilio/recording")
    assert '<Say language="es-ES">Hi &lt;there&gt; &amp; bye</Say>' in twiml and 'maxLength="60"' in twiml
    assert forward_twiml("+14155552671").endswith("<Dial timeout=\"25\">+14155552671</Dial></Response>")


async def test_recordings_are_fetched_from_twilio_only() -> None:
    async with FakeTwilioServer() as fake:
        provider = TwilioProvider(fake.account_sid, fake.auth_token, fake.base_url, backoff_seconds=0.001)
        try:
            sid = fake.add_recording(b"ID3 audio")
            url = f"https://api.twilio.com/2010-04-01/Accounts/{fake.account_sid}/Recordings/{sid}"
            assert await provider.fetch_recording(url, 1024) == b"ID3 audio"
            with pytest.raises(SmsProviderError, match="too large"):
                await provider.fetch_recording(url, 4)
            for elsewhere in ("https://evil.example/Recordings/RE1", f"http://api.twilio.com/Recordings/{sid}",
                              "https://api.twilio.com.evil.example/RE1"):
                with pytest.raises(SmsProviderError, match="not at Twilio"):
                    await provider.fetch_recording(elsewhere, 1024)
            assert len(fake.requests_to("/Recordings/")) == 2  # the credentials went to Twilio alone
        finally:
            await provider.close()
