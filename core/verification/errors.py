"""Why a verification request was refused: the rule errors users see, and a stable name for provider failures."""

from __future__ import annotations

from typing import Any

from core.providers.verification import (
    InsufficientBalance,
    NotAllowed,
    NotFound,
    PriceChanged,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)


class VerificationError(Exception):
    """A verification rule refused the request; `key` is the catalog text to show, `details` its arguments."""

    def __init__(self, key: str, **details: Any) -> None:
        super().__init__(key)
        self.key = key
        self.details = details


class UnknownService(VerificationError):
    def __init__(self, service: str) -> None:
        super().__init__("vf_unknown_service", service=service)


class UnknownVerification(VerificationError):
    def __init__(self) -> None:
        super().__init__("error_stale_button")


class NotYours(VerificationError):
    def __init__(self) -> None:
        super().__init__("error_not_yours")


class WrongState(VerificationError):
    """The verification is no longer in a state that allows the action (already cancelled, code arrived…)."""

    def __init__(self, state: str) -> None:
        super().__init__(f"vf_toast_{state}")
        self.state = state


class NotOffered(VerificationError):
    """The provider does not offer this (reusing the number) for this verification."""

    def __init__(self) -> None:
        super().__init__("vf_err_not_allowed")


def failure_kind(error: BaseException) -> str:
    """A short, stable name for why a provider call failed; `vf_err_<kind>` is its user-facing text."""
    if isinstance(error, Unavailable):
        return "unavailable"
    if isinstance(error, InsufficientBalance):
        return "provider_balance"
    if isinstance(error, PriceChanged):
        return "price_changed"
    if isinstance(error, RateLimited):
        return "busy"
    if isinstance(error, ProviderTimeout):
        return "timeout"
    if isinstance(error, NotAllowed):
        return "not_allowed"
    if isinstance(error, NotFound):
        return "not_found"
    return "error"
