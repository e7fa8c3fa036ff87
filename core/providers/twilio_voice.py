"""Twilio Programmable Voice as CumApp uses it: the call and recording webhooks' fields, and the TwiML answers
(greeting and voicemail, forwarding, refusal), built with the SDK's VoiceResponse."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twilio.twiml.voice_response import VoiceResponse

from core.providers.sms import to_e164

VOICEMAIL_MAX_SECONDS = 60
FORWARD_RING_SECONDS = 25
# <Say> voices by the owner's language; Twilio reads the greeting in that language.
SAY_LANGUAGES = {"en": "en-US", "es": "es-ES"}


@dataclass(frozen=True)
class IncomingCall:
    """One call to a number we own, as Twilio's voice webhook describes it."""

    call_sid: str
    from_e164: str  # "" for a withheld caller id
    to_e164: str


@dataclass(frozen=True)
class RecordingReport:
    """Twilio's word on a voicemail: the recording status callback (with a status) or <Record>'s action request
    (without one, answered with the next TwiML)."""

    call_sid: str
    recording_sid: str
    recording_url: str
    status: str | None  # "completed", "absent", "failed"…; None for the action request
    duration_seconds: int


def _field(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    return str(value).strip() if value is not None else ""


def _caller(raw: str) -> str:
    """Twilio sends "Anonymous", "Restricted" or a +266696687 placeholder for withheld numbers; those are ""."""
    number = to_e164(raw)
    if not number.startswith("+") or not number[1:].isdigit() or number in ("+266696687", "+7378742833"):
        return ""
    return number


def parse_incoming_call(params: Mapping[str, Any]) -> IncomingCall:
    """The voice webhook's CallSid, From and To; ValueError when CallSid or To is missing."""
    call_sid, to = _field(params, "CallSid"), to_e164(_field(params, "To") or _field(params, "Called"))
    if not call_sid or not to:
        raise ValueError("call webhook is missing CallSid or To")
    return IncomingCall(call_sid=call_sid[:64], from_e164=_caller(_field(params, "From") or _field(params, "Caller")),
                        to_e164=to)


def parse_recording(params: Mapping[str, Any]) -> RecordingReport:
    """A recording callback's fields; ValueError when the recording is not named."""
    recording_sid, url = _field(params, "RecordingSid"), _field(params, "RecordingUrl")
    if not recording_sid or not url:
        raise ValueError("recording webhook is missing RecordingSid or RecordingUrl")
    try:
        duration = max(0, int(_field(params, "RecordingDuration") or 0))
    except ValueError:
        duration = 0
    return RecordingReport(
        call_sid=_field(params, "CallSid")[:64], recording_sid=recording_sid[:64], recording_url=url,
        status=_field(params, "RecordingStatus").lower() or None, duration_seconds=duration,
    )


def voicemail_twiml(greeting: str, language: str, recording_url: str) -> str:
    """The greeting, then up to a minute of voicemail; Twilio reports on it (and asks what next) at `recording_url`."""
    response = VoiceResponse()
    response.say(greeting, language=SAY_LANGUAGES.get(language, SAY_LANGUAGES["en"]))
    response.record(
        max_length=VOICEMAIL_MAX_SECONDS, play_beep=True, action=recording_url, method="POST",
        recording_status_callback=recording_url, recording_status_callback_method="POST",
        recording_status_callback_event="completed absent",
    )
    return str(response)


def forward_twiml(forward_to: str) -> str:
    """Ring `forward_to` (E.164) for the caller; the caller id shown is our number's, which Twilio always allows."""
    response = VoiceResponse()
    response.dial(forward_to, timeout=FORWARD_RING_SECONDS)
    return str(response)


def reject_twiml() -> str:
    """Unanswered and unbilled: the caller hears busy."""
    response = VoiceResponse()
    response.reject(reason="busy")
    return str(response)


def hangup_twiml() -> str:
    """The end of the call, after the voicemail (the answer to <Record>'s action request)."""
    response = VoiceResponse()
    response.hangup()
    return str(response)
