"""TextVerified's JSON as our values: money, dates, numbers, states, verifications and webhook envelopes."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

import httpx

from core.providers.verification import (
    ProviderError,
    ProviderSms,
    ProviderVerification,
    VerificationState,
    WebhookEvent,
)

log = logging.getLogger("cumapp.providers.textverified")

# TextVerified's ReservationState values for verifications, mapped onto ours.
# Reused/Reactivated describe the *original* verification after its number moved to a new one: it did
# get its code. Refunded means the money came back without a usable code.
_STATES: dict[str, VerificationState] = {
    "verificationpending": "active",
    "verificationcompleted": "completed",
    "verificationcanceled": "cancelled",
    "verificationcancelled": "cancelled",
    "verificationtimedout": "timed_out",
    "verificationreported": "reported",
    "verificationrefunded": "cancelled",
    "verificationreused": "completed",
    "verificationreactivated": "completed",
}


def dollars_to_cents(value: Any) -> int:
    """TextVerified sends money as float dollars; round, never truncate (0.29 * 100 is 28.999...)."""
    return round(float(value) * 100)


def parse_datetime(value: Any) -> datetime | None:
    """ISO-8601 to a timezone-aware UTC datetime; naive values are taken as UTC."""
    if not value or not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python 3.11 accepts at most 6 fractional digits; .NET sends 7.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def to_e164(number: Any) -> str:
    """TextVerified writes US lines as 10 digits ("2223334444"); we store E.164 ("+12223334444")."""
    raw = str(number or "").strip()
    digits = re.sub(r"\D", "", raw)
    if not digits:
        return ""
    if raw.startswith("+"):
        return "+" + digits
    if len(digits) == 10:
        return "+1" + digits
    return "+" + digits


def map_state(raw: Any) -> VerificationState:
    state = _STATES.get(str(raw or "").lower())
    if state is None:
        # Unknown means "still open" so nothing is refunded or closed on a state we do not understand.
        log.warning("unknown TextVerified verification state %r, treating as pending", raw)
        return "pending"
    return state


def service_display_name(code: str) -> str:
    return code.replace("_", " ").replace("-", " ").strip().title() or code


def parse_webhook_body(raw_body: bytes) -> WebhookEvent:
    """Parse a TextVerified v2 webhook envelope ({id, idempotencyKey, event, occurredAt, attempt, data})."""
    try:
        envelope = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProviderError("webhook body is not JSON") from exc
    if not isinstance(envelope, dict):
        raise ProviderError("webhook body is not a JSON object")
    event_name = envelope.get("event") or envelope.get("Event")
    if not isinstance(event_name, str) or not event_name:
        raise ProviderError("webhook body has no event name")
    # The schema spells it `data`; the prose says `Data`. Accept both.
    data = envelope.get("data", envelope.get("Data"))
    if not isinstance(data, dict):
        data = {}
    event_id = envelope.get("id") or envelope.get("Id")
    key = envelope.get("idempotencyKey") or envelope.get("IdempotencyKey") or event_id
    if not key:
        raise ProviderError("webhook body has neither idempotencyKey nor id")
    event_key = str(key)

    name = event_name.lower()
    if name == "v2.sms.received":
        verification_id = data.get("reservationId")
        if not verification_id:
            return WebhookEvent(event_key=event_key, kind="other", verification_id=None, sms=None)
        received_at = parse_datetime(data.get("createdAt")) or parse_datetime(envelope.get("occurredAt"))
        sms = ProviderSms(
            # The SMS webhook carries no SMS id; the event id is the closest stable identifier.
            id=str(data.get("id") or event_id or event_key),
            verification_id=str(verification_id),
            text=str(data.get("smsContent") or ""),
            parsed_code=(str(data["parsedCode"]) if data.get("parsedCode") else None),
            received_at=received_at or datetime.now(UTC),
        )
        return WebhookEvent(
            event_key=event_key, kind="sms_received", verification_id=str(verification_id), sms=sms
        )
    if name.startswith("v2.verification."):
        verification_id = data.get("id") or data.get("verificationId") or data.get("reservationId")
        return WebhookEvent(
            event_key=event_key,
            kind="verification_changed",
            verification_id=str(verification_id) if verification_id else None,
            sms=None,
        )
    if (
        name == "v2.reservation.created"
        and str(data.get("type", "")).lower() == "verification"
        and data.get("id")
    ):
        return WebhookEvent(
            event_key=event_key, kind="verification_changed", verification_id=str(data["id"]), sms=None
        )
    return WebhookEvent(event_key=event_key, kind="other", verification_id=None, sms=None)


def response_json(response: httpx.Response, op: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ProviderError(f"{op}: answer is not JSON (HTTP {response.status_code})") from exc


def verification_from(body: dict[str, Any]) -> ProviderVerification:
    def flag(section: str, field: str) -> bool:
        part = body.get(section)
        return bool(part.get(field)) if isinstance(part, dict) else False

    reuse = body.get("reuse")
    reusable_until = parse_datetime(reuse.get("reusableUntil")) if isinstance(reuse, dict) else None
    return ProviderVerification(
        id=str(body["id"]),
        service=str(body.get("serviceName") or ""),
        number=to_e164(body.get("number")),
        state=map_state(body.get("state")),
        ends_at=parse_datetime(body.get("endsAt")),
        cost_cents=dollars_to_cents(body.get("totalCost") or 0),
        can_cancel=flag("cancel", "canCancel"),
        can_report=flag("report", "canReport"),
        can_reactivate=flag("reactivate", "canReactivate"),
        can_reuse=reusable_until is not None and reusable_until > datetime.now(UTC),
    )


def created_link(response: httpx.Response, op: str) -> str:
    """Where a create, reuse or reactivate answer says the new verification lives."""
    href = response.headers.get("Location")
    if not href:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("href"), str):
            href = body["href"]
    if not href:
        raise ProviderError(f"{op}: created answer has neither Location nor href")
    return href


def next_page(page: dict[str, Any]) -> str | None:
    if page.get("hasNext") is False:
        return None
    links = page.get("links")
    nxt = links.get("next") if isinstance(links, dict) else None
    if not isinstance(nxt, dict) or not nxt.get("href"):
        return None
    return str(nxt["href"])
