"""Provider-neutral SMS interface: value types, user-safe errors, the SmsProvider protocol and webhook helpers."""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlparse

import phonenumbers
from twilio.request_validator import RequestValidator, add_port, compare, remove_port

from core.platform.clock import utcnow
from core.providers.sms_encoding import sms_parts

SendStatus = Literal["queued", "accepted", "sent"]
DeliveryStatus = Literal["queued", "sending", "sent", "delivered", "undelivered", "failed"]
VonageSignatureMethod = Literal["md5hash", "md5", "sha1", "sha256", "sha512"]

VONAGE_SIGNATURE_METHODS: tuple[VonageSignatureMethod, ...] = ("md5hash", "md5", "sha1", "sha256", "sha512")
# Vonage's signed webhooks carry a unix `timestamp`; anything older than this is treated as a replay.
VONAGE_SIGNATURE_MAX_AGE_SECONDS = 300.0


# --- value types ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AvailableNumber:
    """A number a provider offers for purchase; `monthly_cost_cents` is the provider's rental price."""

    e164: str
    country: str
    locality: str | None
    monthly_cost_cents: int
    provider: str


@dataclass(frozen=True)
class PurchasedNumber:
    """A number now owned; `provider_sid` is what `release_number` needs later."""

    provider_sid: str
    e164: str
    country: str
    monthly_cost_cents: int


@dataclass(frozen=True)
class SendResult:
    """The provider took the message; delivery is reported later through the status webhook."""

    provider_message_id: str
    status: SendStatus
    cost_cents: int | None


@dataclass(frozen=True)
class InboundSms:
    """A text received on one of our numbers. `part` is (concat-ref, total parts, 1-based index) for a piece
    of a long message the provider delivered in several requests (Vonage does; Twilio joins them itself)."""

    provider: str
    provider_message_id: str
    from_e164: str
    to_e164: str
    body: str
    media_urls: tuple[str, ...] = ()
    received_at: datetime = field(default_factory=utcnow)
    part: tuple[str, int, int] | None = None


@dataclass(frozen=True)
class StatusUpdate:
    """A delivery report for a message we sent; `error_code` is the provider's own code as text."""

    provider_message_id: str
    status: DeliveryStatus
    error_code: str | None = None
    provider: str | None = None
    cost_cents: int | None = None


# --- errors --------------------------------------------------------------------------------------------------


class SmsProviderError(Exception):
    """A provider refused or failed. `message` is plain words safe to show the user; `code` is the
    provider's code for logs; `retryable` says whether the same request may succeed later."""

    default_message = "The text could not be sent. Please try again later."
    default_retryable = False

    def __init__(self, message: str | None = None, code: str | None = None, retryable: bool | None = None) -> None:
        self.message = message or self.default_message
        self.code = code
        self.retryable = self.default_retryable if retryable is None else retryable
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(message={self.message!r}, code={self.code!r}, retryable={self.retryable})"


class InvalidRecipient(SmsProviderError):
    default_message = "That phone number doesn't look valid. Check it and include the country code, like +14155550123."


class RecipientOptedOut(SmsProviderError):
    default_message = (
        "That person has opted out of texts from this number (they replied STOP). They can text START to opt back in."
    )


class NotSmsCapable(SmsProviderError):
    default_message = "That number can't receive text messages. It may be a landline."


class UnverifiedTrialNumber(SmsProviderError):
    default_message = "The SMS account is still on a trial, so it can only text numbers verified with the provider."


class RateLimited(SmsProviderError):
    default_message = "Too many texts are being sent right now. Please try again in a minute."
    default_retryable = True


class ProviderUnavailable(SmsProviderError):
    default_message = "The SMS service is unavailable right now. Please try again later."
    default_retryable = True


# --- the provider protocol -----------------------------------------------------------------------------------


@runtime_checkable
class SmsProvider(Protocol):
    """What every SMS provider offers; all methods raise SmsProviderError subclasses, never SDK errors."""

    name: str

    async def search_numbers(
        self, country: str, area_code: str | None = None, contains: str | None = None, limit: int = 10
    ) -> list[AvailableNumber]: ...

    async def buy_number(self, e164: str, sms_url: str, status_url: str) -> PurchasedNumber: ...

    async def release_number(self, provider_sid: str) -> None: ...

    async def send(self, from_e164: str, to_e164: str, body: str, status_callback_url: str) -> SendResult: ...

    async def balance_cents(self) -> int | None: ...

    async def close(self) -> None: ...


# --- money and text helpers shared by the providers -----------------------------------------------------------


def price_to_decimal(value: Any) -> Decimal | None:
    """A provider's decimal string ("0.03330000") as a Decimal, or None when absent or unreadable."""
    if value is None or value == "":
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def price_to_cents(price: Any) -> int | None:
    """A charge (Twilio sends them negative, e.g. "-0.00790") as whole positive cents, rounded up so a
    fraction of a cent is never under-billed."""
    amount = price_to_decimal(price)
    if amount is None:
        return None
    return int((abs(amount) * 100).to_integral_value(rounding=ROUND_CEILING))


def balance_to_cents(balance: Any) -> int | None:
    """An account balance as whole cents, sign kept (accounts can be in debt), rounded down."""
    amount = price_to_decimal(balance)
    if amount is None:
        return None
    return int((amount * 100).to_integral_value(rounding=ROUND_FLOOR))


def is_gsm7(text: str) -> bool:
    """True when every character fits the GSM 03.38 alphabet; otherwise the text must travel as UCS-2."""
    return sms_parts(text).encoding == "GSM-7"


def segment_count(text: str) -> int:
    """How many SMS parts a body needs (160/153 GSM-7 septets, or 70/67 UCS-2 code units)."""
    return sms_parts(text).segments


def country_of(e164: str) -> str:
    """ISO country of a number; fictional test ranges (555-01xx, 07700 900xxx) fall back to the country
    code's main region because phonenumbers calls them invalid."""
    try:
        parsed = phonenumbers.parse(e164 if e164.startswith("+") else "+" + e164)
    except phonenumbers.NumberParseException:
        return "ZZ"
    region = phonenumbers.region_code_for_number(parsed)
    if region and region != "ZZ":
        return region
    regions = phonenumbers.region_codes_for_country_code(parsed.country_code)
    return regions[0] if regions else "ZZ"


def to_e164(number: str) -> str:
    """Providers such as Vonage send bare digits ("447700900000"); we store "+447700900000"."""
    number = number.strip()
    if not number:
        return number
    if number.startswith("+"):
        return number
    return "+" + number if number.isdigit() else number


# --- inbound webhooks: signatures ------------------------------------------------------------------------------


def validate_twilio_signature(auth_token: str, url: str, params: Mapping[str, Any] | None, signature: str | None) -> bool:
    """Check X-Twilio-Signature with the SDK's RequestValidator.

    `url` must be the full public URL Twilio called (scheme, host, path and query), not the one a proxy
    forwarded to. `params` may be a MultiDict, so repeated form fields are signed as Twilio signs them."""
    if not signature or not auth_token:
        return False
    try:
        validator = RequestValidator(auth_token)
        # What RequestValidator.validate does for a form, except that it always computes both signatures (the URL
        # without its default port and with it); the second only matters when the first fails. Half the HMACs:
        # the check was a fifth of an ingested SMS's HTTP handling.
        return any(compare(validator.compute_signature(candidate, params or {}), signature)
                   for candidate in _signed_urls(url))
    except (TypeError, ValueError):
        return False


@functools.lru_cache(maxsize=64)
def _signed_urls(url: str) -> tuple[str, str]:
    """The URL as Twilio may have signed it: without its default port, then with it. A webhook's URL is one of a
    few, so it is parsed once rather than per request."""
    parsed = urlparse(url)
    return remove_port(parsed), add_port(parsed)


def _vonage_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def compute_vonage_signature(secret: str, params: Mapping[str, Any], method: VonageSignatureMethod = "md5hash") -> str:
    """Vonage's `sig`: the params (minus `sig`) sorted by key as "&key=value", with "&" and "=" in values
    replaced by "_"; then md5(string + secret) for "md5hash", or an HMAC of the string keyed by the secret.
    Returns lowercase hex."""
    if method not in VONAGE_SIGNATURE_METHODS:
        raise ValueError(f"unknown Vonage signature method {method!r}")
    payload = "".join(
        "&{}={}".format(key, _vonage_value(params[key]).replace("&", "_").replace("=", "_"))
        for key in sorted(params)
        if key != "sig"
    ).encode("utf-8")
    if method == "md5hash":
        return hashlib.md5(payload + secret.encode("utf-8")).hexdigest()
    return hmac.new(secret.encode("utf-8"), payload, getattr(hashlib, method)).hexdigest()


_SIG_LENGTHS: dict[int, tuple[VonageSignatureMethod, ...]] = {
    32: ("md5hash", "md5"),
    40: ("sha1",),
    64: ("sha256",),
    128: ("sha512",),
}


def validate_vonage_signature(
    secret: str,
    params: Mapping[str, Any],
    *,
    method: VonageSignatureMethod | None = None,
    max_age_seconds: float | None = VONAGE_SIGNATURE_MAX_AGE_SECONDS,
    now: float | None = None,
) -> bool:
    """Check a Vonage signed webhook (`sig` plus `timestamp` among the params).

    With `method=None` the algorithm is inferred from the signature's length, so whichever one the account
    dashboard is set to works. A `timestamp` further than `max_age_seconds` from now is rejected as a replay."""
    if not secret:
        return False
    given = _vonage_value(params.get("sig")).strip().lower()
    timestamp = _vonage_value(params.get("timestamp")).strip()
    if not given or not timestamp:
        return False
    try:
        stamp = float(timestamp)
    except ValueError:
        return False
    if not math.isfinite(stamp):
        return False
    if max_age_seconds is not None and abs((time.time() if now is None else now) - stamp) > max_age_seconds:
        return False
    candidates = (method,) if method else _SIG_LENGTHS.get(len(given), ())
    valid = False
    for candidate in candidates:
        # No early exit, so the time taken does not reveal which candidate matched.
        valid |= hmac.compare_digest(compute_vonage_signature(secret, params, candidate).encode(), given.encode())
    return valid


# --- inbound webhooks: parsing ---------------------------------------------------------------------------------


def _required(params: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = params.get(name)
        if value not in (None, ""):
            return _vonage_value(value)
    raise ValueError(f"webhook is missing {' / '.join(names)}")


def _optional(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value in (None, ""):
        return None
    return _vonage_value(value)


def parse_twilio_inbound(params: Mapping[str, Any]) -> InboundSms:
    """Twilio's incoming-message webhook (form fields MessageSid, From, To, Body, NumMedia, MediaUrlN)."""
    try:
        num_media = int(_optional(params, "NumMedia") or 0)
    except ValueError:
        num_media = 0
    media = tuple(url for i in range(max(num_media, 0)) if (url := _optional(params, f"MediaUrl{i}")))
    return InboundSms(
        provider="twilio",
        provider_message_id=_required(params, "MessageSid", "SmsMessageSid", "SmsSid"),
        from_e164=to_e164(_required(params, "From")),
        to_e164=to_e164(_required(params, "To")),
        body=_optional(params, "Body") or "",
        media_urls=media,
        received_at=utcnow(),
    )


_TWILIO_STATUS: dict[str, DeliveryStatus] = {
    "accepted": "queued",
    "scheduled": "queued",
    "queued": "queued",
    "sending": "sending",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "partially_delivered": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "failed",
}


def parse_twilio_status(params: Mapping[str, Any]) -> StatusUpdate:
    """Twilio's status callback (MessageSid, MessageStatus, ErrorCode when it failed)."""
    raw = (_optional(params, "MessageStatus") or _optional(params, "SmsStatus") or "").lower()
    if not raw:
        raise ValueError("webhook is missing MessageStatus")
    error_code = _optional(params, "ErrorCode")
    return StatusUpdate(
        provider_message_id=_required(params, "MessageSid", "SmsSid"),
        # Statuses Twilio may add later are treated as "sent": known to have left, nothing more.
        status=_TWILIO_STATUS.get(raw, "sent"),
        error_code=None if error_code in (None, "0") else error_code,
        provider="twilio",
    )


def _vonage_time(value: str | None) -> datetime:
    if value:
        try:
            return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            pass
    return utcnow()


def parse_vonage_inbound(params: Mapping[str, Any]) -> InboundSms:
    """Vonage's inbound SMS webhook (msisdn = sender, to = our number, messageId, text, concat fields)."""
    part: tuple[str, int, int] | None = None
    if (_optional(params, "concat") or "").lower() == "true":
        try:
            part = (
                _required(params, "concat-ref"),
                int(_required(params, "concat-total")),
                int(_required(params, "concat-part")),
            )
        except ValueError as exc:
            raise ValueError(f"bad concatenation fields: {exc}") from exc
    return InboundSms(
        provider="vonage",
        provider_message_id=_required(params, "messageId", "message-id"),
        from_e164=to_e164(_required(params, "msisdn")),
        to_e164=to_e164(_required(params, "to")),
        body=_optional(params, "text") or "",
        media_urls=(),
        received_at=_vonage_time(_optional(params, "message-timestamp")),
        part=part,
    )


_VONAGE_STATUS: dict[str, DeliveryStatus] = {
    "delivered": "delivered",
    "accepted": "sent",
    "buffered": "sending",
    "expired": "undelivered",
    "failed": "failed",
    "rejected": "failed",
    "unknown": "sent",
}


def parse_vonage_status(params: Mapping[str, Any]) -> StatusUpdate:
    """Vonage's delivery receipt (messageId, status, err-code, price)."""
    raw = _required(params, "status").lower()
    error_code = _optional(params, "err-code")
    return StatusUpdate(
        provider_message_id=_required(params, "messageId", "message-id"),
        status=_VONAGE_STATUS.get(raw, "sent"),
        error_code=None if error_code in (None, "0") else error_code,
        provider="vonage",
        cost_cents=price_to_cents(_optional(params, "price")),
    )
