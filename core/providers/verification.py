"""Provider-neutral interface for renting a phone number for one service and reading the SMS code it gets."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

VerificationState = Literal["pending", "active", "completed", "cancelled", "timed_out", "reported", "failed"]
WebhookKind = Literal["sms_received", "verification_changed", "other"]

# States in which a rental is over: the code came, or it never will.
FINAL_STATES: frozenset[str] = frozenset({"completed", "cancelled", "timed_out", "reported", "failed"})

WEBHOOK_SIGNATURE_HEADER = "X-Webhook-Signature"
_SIGNATURE_PREFIX = "HMAC-SHA512="


@dataclass(frozen=True)
class ServiceInfo:
    """A service a number can be rented for; `code` is what the provider expects, `name` is for people."""

    code: str
    name: str


@dataclass(frozen=True)
class PriceQuote:
    """What the provider charges us right now for one verification of `service`, in integer cents."""

    service: str
    cost_cents: int


@dataclass(frozen=True)
class ProviderVerification:
    """One rented number, as the provider sees it.

    `state`: "pending" (no number yet), "active" (number ready, waiting for the SMS),
    "completed" (SMS arrived), "cancelled", "timed_out", "reported" or "failed".
    `number` is E.164 with a leading "+".
    `ends_at` is a timezone-aware UTC datetime, or None when the provider does not say.
    """

    id: str
    service: str
    number: str
    state: VerificationState
    ends_at: datetime | None
    cost_cents: int
    can_cancel: bool
    can_report: bool
    can_reactivate: bool
    can_reuse: bool

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class ProviderSms:
    """One SMS received on a rented number; `parsed_code` is the provider's own code extraction, if any."""

    id: str
    verification_id: str
    text: str
    parsed_code: str | None
    received_at: datetime


@dataclass(frozen=True)
class WebhookEvent:
    """A provider push, parsed; `event_key` is stable across redeliveries of one event (dedupe on it)."""

    event_key: str
    kind: WebhookKind
    verification_id: str | None
    sms: ProviderSms | None


class ProviderError(Exception):
    """Base of every provider failure.

    `str(error)` is a technical description for logs (never contains secrets);
    `user_message` is short and safe to show to an end user.
    """

    default_user_message = "The number service had a problem. Please try again in a moment."

    def __init__(self, detail: str = "", *, user_message: str | None = None) -> None:
        super().__init__(detail or self.default_user_message)
        self.user_message = user_message or self.default_user_message


class InsufficientBalance(ProviderError):
    """Our own account at the provider has run out of money (an operator must top it up)."""

    default_user_message = "Numbers are temporarily unavailable. Please try again later."


class Unavailable(ProviderError):
    """The provider has no number for this service right now."""

    default_user_message = "No numbers are available for this service right now. Please try again later."


class RateLimited(ProviderError):
    """The provider keeps asking us to slow down; `retry_after` is its hint in seconds, when it gave one."""

    default_user_message = "The number service is busy. Please try again in a minute."

    def __init__(
        self, detail: str = "", *, user_message: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail, user_message=user_message)
        self.retry_after = retry_after


class ProviderTimeout(ProviderError):
    """The provider did not answer in time; for a non-idempotent call the outcome is unknown."""

    default_user_message = "The number service is slow to answer. Please try again."


class NotFound(ProviderError):
    """The provider does not know this verification (or service)."""

    default_user_message = "That number rental was not found."


class NotAllowed(ProviderError):
    """The provider refused cancel, report, reactivate or reuse: this verification no longer offers it."""

    default_user_message = "That action is no longer available for this number."


class PriceChanged(ProviderError):
    """The provider's price rose above the maximum we were willing to pay; nothing was bought."""

    default_user_message = "The price for this service just changed. Please check it and try again."


@runtime_checkable
class VerificationProvider(Protocol):
    """What the bot needs from a number-rental provider; every method may raise a ProviderError subclass."""

    name: str

    async def list_services(self) -> list[ServiceInfo]:
        """Services numbers can be rented for; cached by the provider, so cheap to call often."""
        ...

    async def price(self, service: str) -> PriceQuote: ...

    async def create(
        self, service: str, idempotency_key: str, *, max_cost_cents: int | None = None
    ) -> ProviderVerification:
        """Rent a number. Retrying with the same `idempotency_key` never buys twice.

        With `max_cost_cents`, raises PriceChanged instead of paying more than that.
        """
        ...

    async def details(self, verification_id: str) -> ProviderVerification: ...

    async def sms(self, verification_id: str) -> list[ProviderSms]:
        """Every SMS received so far on this verification, oldest first."""
        ...

    async def cancel(self, verification_id: str) -> ProviderVerification: ...

    async def report(self, verification_id: str) -> ProviderVerification: ...

    async def reactivate(self, verification_id: str) -> ProviderVerification:
        """Returns the verification that now holds the number (its id may differ from `verification_id`)."""
        ...

    async def reuse(self, verification_id: str) -> ProviderVerification:
        """Like reactivate, for a just-completed verification; raises NotAllowed if not offered."""
        ...

    async def balance_cents(self) -> int | None:
        """Our account balance at the provider, or None when it has no meaningful balance."""
        ...

    def parse_webhook(self, raw_body: bytes) -> WebhookEvent:
        """Parse a webhook body (the signature must be checked first); raises ProviderError if malformed."""
        ...

    async def close(self) -> None: ...


def sign_webhook(secret: str, raw_body: bytes) -> str:
    """The `X-Webhook-Signature` value for `raw_body`: "HMAC-SHA512=" + base64(HMAC-SHA512(secret, body))."""
    digest = hmac.new(secret.encode("utf-8"), raw_body, hashlib.sha512).digest()
    return _SIGNATURE_PREFIX + base64.b64encode(digest).decode("ascii")


def _candidate_keys(secret: str) -> list[bytes]:
    keys = [secret.encode("utf-8")]
    # The docs only say "your webhook secret (whsec_...)"; some providers key the HMAC with the base64 part
    # after the prefix instead of the whole string, so accept both derivations of the same secret.
    if secret.startswith("whsec_"):
        try:
            decoded = base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if decoded:
            keys.append(decoded)
    return keys


def verify_webhook_signature(secret: str, raw_body: bytes, header_value: str | None) -> bool:
    """True only if `header_value` is "HMAC-SHA512=<base64>" of the HMAC of `raw_body` under `secret`."""
    if not secret or not header_value:
        return False
    value = header_value.strip()
    if value[: len(_SIGNATURE_PREFIX)].upper() != _SIGNATURE_PREFIX:
        return False
    try:
        given = base64.b64decode(value[len(_SIGNATURE_PREFIX) :].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(given) != hashlib.sha512().digest_size:
        return False
    matched = False
    for key in _candidate_keys(secret):
        expected = hmac.new(key, raw_body, hashlib.sha512).digest()
        # No early exit: every candidate is compared so timing does not reveal which one matched.
        matched |= hmac.compare_digest(expected, given)
    return matched
