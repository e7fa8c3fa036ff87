"""Why messaging refused a request: MessagingError and its kinds, each able to say so in the reader's language."""

from __future__ import annotations

from typing import Any

from core.platform.i18n import Html, escape, t
from core.providers.sms import (
    InvalidRecipient,
    NotSmsCapable,
    ProviderUnavailable,
    RateLimited,
    RecipientOptedOut,
    SmsProviderError,
    UnverifiedTrialNumber,
)

_PROVIDER_ERROR_KEYS: tuple[tuple[type[SmsProviderError], str], ...] = (
    (InvalidRecipient, "sms_err_invalid_recipient"),
    (RecipientOptedOut, "sms_err_opted_out"),
    (NotSmsCapable, "sms_err_not_sms_capable"),
    (UnverifiedTrialNumber, "sms_err_trial"),
    (RateLimited, "sms_err_rate_limited"),
)

# core.platform.phone's reasons are English sentences; these keys let Spanish readers get them in Spanish.
_PHONE_REASON_KEYS = {
    "Please enter a phone number.": "sms_reason_empty",
    "Unknown country code. Start with + and the country code.": "sms_reason_country_code",
    "That doesn't look like a phone number.": "sms_reason_not_a_number",
    "The number is too short.": "sms_reason_too_short",
    "The number is too long.": "sms_reason_too_long",
    "The number has the wrong number of digits for its country.": "sms_reason_length",
    "Include the area code.": "sms_reason_area_code",
    "That number isn't valid for its country.": "sms_reason_invalid",
}


class MessagingError(Exception):
    """A rule of messaging refused the request; `key` is a text key, `details` its (escaped) arguments."""

    def __init__(self, key: str, **details: Any) -> None:
        super().__init__(key)
        self.key = key
        self.details = details

    def text(self, locale: str) -> Html:
        return t(locale, self.key, **self.details)


class NotYours(MessagingError):
    """An id that belongs to someone else (or to nobody): a forged or foreign button."""

    def __init__(self) -> None:
        super().__init__("error_not_yours")


class ProviderRefused(MessagingError):
    """The SMS provider said no; nothing was charged. The text is the provider error in plain words."""

    def __init__(self, error: SmsProviderError) -> None:
        self.error = error
        key = next((k for cls, k in _PROVIDER_ERROR_KEYS if isinstance(error, cls)), None)
        if key is None and isinstance(error, ProviderUnavailable) and error.retryable:
            key = "sms_err_unavailable"
        super().__init__(key or "sms_err_other", detail=error.message)

    def text(self, locale: str) -> Html:
        # A provider-specific sentence (e.g. "Texting that country isn't enabled") exists in English only.
        if self.key == "sms_err_other" and locale == "en":
            return t(locale, "sms_err_plain", detail=self.error.message)
        return super().text(locale)


class InvalidNumber(MessagingError):
    """The destination is not a number we can text; `reason` is core.platform.phone's sentence."""

    def __init__(self, number: str, reason: str) -> None:
        super().__init__("sms_invalid_number", number=number)
        self.reason = reason

    def text(self, locale: str) -> Html:
        return t(locale, self.key, number=self.details["number"], reason=phone_reason(locale, self.reason))


def phone_reason(locale: str, reason: str) -> Html:
    key = _PHONE_REASON_KEYS.get(reason)
    return t(locale, key) if key else escape(reason)
