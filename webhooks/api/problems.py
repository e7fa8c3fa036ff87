"""Errors as application/problem+json (RFC 9457), and the mapping of core's refusals to HTTP statuses."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from core.api.endpoints import BadEndpoint, TooManyEndpoints
from core.api.idempotency import KeyReused, StillRunning
from core.messaging.errors import InvalidNumber, MessagingError, ProviderRefused
from core.messaging.errors import NotYours as NumberNotYours
from core.money.ledger import InsufficientFunds, UnknownAccount
from core.money.limits import LimitReached
from core.platform.i18n import t
from core.providers.verification import ProviderError
from core.verification.errors import (
    NotYours,
    UnknownService,
    UnknownVerification,
    VerificationError,
    WrongState,
)

PROBLEM_TYPE = "application/problem+json"
TYPE_BASE = "https://cumapp.dev/problems/"

TITLES = {
    400: "Bad request", 401: "Unauthorized", 402: "Insufficient funds", 403: "Limit reached", 404: "Not found",
    409: "Conflict", 422: "Unprocessable content", 429: "Too many requests", 502: "Provider error",
}


class ApiProblem(Exception):
    """Raised anywhere in a request to answer with a problem document."""

    def __init__(self, status: int, slug: str, detail: str | None = None, *, headers: dict[str, str] | None = None,
                 title: str | None = None) -> None:
        super().__init__(detail or slug)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers or {}
        self.title = title or TITLES.get(status, "Error")

    def body(self) -> dict[str, Any]:
        return {"type": TYPE_BASE + self.slug, "title": self.title, "status": self.status, "detail": self.detail}

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=json.dumps(self.body()), content_type=PROBLEM_TYPE,
                            headers=self.headers)


def _plain(key: str, details: dict[str, Any], error: MessagingError | None = None) -> str:
    """A catalog text as plain English for `detail`."""
    try:
        text = str(error.text("en") if error is not None else t("en", key, **details))
    except Exception:
        return key
    for tag in ("<b>", "</b>", "<code>", "</code>", "<i>", "</i>"):
        text = text.replace(tag, "")
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def from_error(error: Exception) -> ApiProblem | None:
    """The answer to one of core's expected refusals; None for anything else (a defect)."""
    if isinstance(error, ApiProblem):
        return error
    if isinstance(error, (UnknownVerification, NotYours, NumberNotYours, UnknownAccount)):
        return ApiProblem(404, "not-found", "no such resource in this account")
    if isinstance(error, UnknownService):
        return ApiProblem(422, "unknown-service", _plain(error.key, error.details))
    if isinstance(error, WrongState):
        return ApiProblem(409, "wrong-state", f"the verification is {error.state}")
    if isinstance(error, VerificationError):
        return ApiProblem(409, "refused", _plain(error.key, error.details))
    if isinstance(error, InsufficientFunds):
        return ApiProblem(402, "insufficient-funds",
                          f"needs {error.needed_cents} cents, {error.available_cents} available")
    if isinstance(error, LimitReached):
        return ApiProblem(403, "limit-reached", f"{error.limit}: {error.used} of {error.allowed} used")
    if isinstance(error, InvalidNumber):
        return ApiProblem(422, "invalid-number", _plain(error.key, error.details, error))
    if isinstance(error, ProviderRefused):
        return ApiProblem(502, "provider-error", _plain(error.key, error.details, error))
    if isinstance(error, MessagingError):
        status = 422 if error.key in ("sms_empty", "sms_too_long") else 409
        return ApiProblem(status, error.key.replace("_", "-"), _plain(error.key, error.details, error))
    if isinstance(error, ProviderError):
        return ApiProblem(502, "provider-error", "the provider refused or did not answer; try again later")
    if isinstance(error, KeyReused):
        return ApiProblem(422, "idempotency-key-reused", "this Idempotency-Key was used with another request")
    if isinstance(error, StillRunning):
        return ApiProblem(409, "idempotency-key-in-use", "the first request with this Idempotency-Key is still "
                          "being answered; retry shortly", headers={"Retry-After": "1"})
    if isinstance(error, BadEndpoint):
        return ApiProblem(422, "bad-webhook-url", str(error))
    if isinstance(error, TooManyEndpoints):
        return ApiProblem(409, "too-many-endpoints", "delete an endpoint first")
    return None
