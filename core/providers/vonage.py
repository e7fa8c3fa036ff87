"""Vonage SMS provider speaking the SMS, Numbers and Account REST APIs with httpx (their SDK is synchronous)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import phonenumbers
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from core.providers.sms import (
    AvailableNumber,
    InvalidRecipient,
    NotSmsCapable,
    ProviderUnavailable,
    PurchasedNumber,
    RateLimited,
    RecipientOptedOut,
    SendResult,
    SmsProviderError,
    UnverifiedTrialNumber,
    balance_to_cents,
    country_of,
    is_gsm7,
    price_to_cents,
    price_to_decimal,
)

log = logging.getLogger("cumapp.providers.vonage")

T = TypeVar("T")

DEFAULT_TIMEOUT_SECONDS = 15.0
NANP_COUNTRIES = {"US", "CA"}

_NOT_SET_UP = "The SMS service is not set up correctly. Please tell an administrator."


def map_sms_status(status: str, error_text: str | None) -> SmsProviderError:
    """A non-zero `status` of one message in an SMS API answer as our user-safe error."""
    text = (error_text or "").lower()
    if status in ("1", "10"):
        return RateLimited(code=status)
    if status in ("2", "3"):
        # Vonage's error-text names the bad parameter; only a bad `to` is the user's to fix.
        if re.search(r"\bto\b", text):
            return InvalidRecipient(code=status)
        return SmsProviderError("The text could not be sent because the request was incomplete.", code=status)
    if status in ("4", "8", "11", "14"):
        return ProviderUnavailable(_NOT_SET_UP, code=status, retryable=False)
    if status == "5":
        return ProviderUnavailable(code=status)
    if status == "6":
        return NotSmsCapable(code=status)
    if status == "7":
        return RecipientOptedOut(code=status)
    if status == "9":
        return ProviderUnavailable(
            "The SMS account is out of credit. Please tell an administrator.", code=status, retryable=False
        )
    if status == "12":
        return SmsProviderError("The message is too long.", code=status)
    if status == "15":
        return SmsProviderError("The sending number can't send texts. Try another of your numbers.", code=status)
    if status == "29":
        return UnverifiedTrialNumber(code=status)
    return SmsProviderError(code=status)


def _msisdn(e164: str) -> str:
    return e164.strip().lstrip("+")


class VonageProvider:
    """SmsProvider over Vonage's REST APIs. `provider_sid` of a number is its msisdn (E.164 digits, no "+").

    Money fields come in the account's currency (EUR for most accounts) and are passed through as cents
    of that currency."""

    name = "vonage"

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        rest_base_url: str = "https://rest.nexmo.com",
        api_base_url: str = "https://api.nexmo.com",
        transport: httpx.AsyncBaseTransport | None = None,
        max_attempts: int = 4,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._api_key = api_key
        self._api_secret = api_secret
        self._rest = rest_base_url.rstrip("/")
        # Kept for the Vonage APIs hosted on api.nexmo.com (Messages, Application); none is called yet.
        self.api_base_url = api_base_url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout_seconds, transport=transport)
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._cost_by_msisdn: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<VonageProvider {self._api_key}>"

    # --- plumbing --------------------------------------------------------------------------------------------

    async def _retrying(self, operation: str, call: Callable[[], Awaitable[T]], *, idempotent: bool) -> T:
        def should_retry(exc: BaseException) -> bool:
            return isinstance(exc, RateLimited) or (idempotent and isinstance(exc, ProviderUnavailable) and exc.retryable)

        async def attempt() -> T:
            try:
                return await call()
            except SmsProviderError as exc:
                log.warning("vonage %s failed: code=%s (%s)", operation, exc.code, type(exc).__name__)
                raise
            except httpx.HTTPError as exc:
                # The exception text may hold the request URL; only its type is logged.
                log.warning("vonage %s failed: %s", operation, type(exc).__name__)
                raise ProviderUnavailable(code="network") from exc

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            # Jitter spreads retries from concurrent senders so they don't hit the limit again in lockstep.
            wait=wait_exponential(multiplier=self._backoff, max=self._max_backoff) + wait_random(0, self._backoff),
            retry=retry_if_exception(should_retry),
            reraise=True,
        )
        return await retrying(attempt)

    async def _numbers_api(self, method: str, path: str, params: dict[str, str]) -> dict[str, Any]:
        """Numbers and Account APIs: HTTP Basic auth, so the secret never sits in a URL that could be logged."""
        auth = httpx.BasicAuth(self._api_key, self._api_secret)
        if method == "GET":
            response = await self._http.get(f"{self._rest}{path}", params=params, auth=auth)
        else:
            response = await self._http.post(f"{self._rest}{path}", data=params, auth=auth)
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        error_code = str(payload.get("error-code", response.status_code))
        if response.status_code == 429 or error_code == "429":
            raise RateLimited(code="429")
        if response.status_code in (401, 403) or error_code in ("401", "403"):
            raise ProviderUnavailable(_NOT_SET_UP, code=error_code, retryable=False)
        if response.status_code >= 500:
            raise ProviderUnavailable(code=str(response.status_code))
        if response.status_code >= 400 or error_code not in ("200",):
            raise SmsProviderError(code=error_code)
        return payload

    # --- SmsProvider -----------------------------------------------------------------------------------------

    async def search_numbers(
        self, country: str, area_code: str | None = None, contains: str | None = None, limit: int = 10
    ) -> list[AvailableNumber]:
        country = country.upper()
        params = {"country": country, "features": "SMS", "size": str(min(max(limit, 1), 100))}
        digits = re.sub(r"\D", "", contains or "")
        starts = ""
        if area_code:
            if not area_code.isdigit():
                return []
            # Patterns match the full E.164 digits, so an area code is "starts with <country code><area>".
            starts = f"{phonenumbers.country_code_for_region(country) or ''}{area_code}"
        if digits:
            # One pattern per query: ask for the digits and check the area code here, on a full page.
            params.update(pattern=digits, search_pattern="1")
            if starts:
                params["size"] = "100"
        elif starts:
            params.update(pattern=starts, search_pattern="0")

        async def call() -> dict[str, Any]:
            return await self._numbers_api("GET", "/number/search", params)

        try:
            payload = await self._retrying("search_numbers", call, idempotent=True)
        except SmsProviderError as exc:
            if exc.code == "420":
                return []  # No inventory for that query or country.
            raise
        if len(self._cost_by_msisdn) > 5000:
            self._cost_by_msisdn.clear()  # Only a memo for buy_number; a miss costs one extra search.
        found: list[AvailableNumber] = []
        for item in payload.get("numbers") or []:
            msisdn = str(item.get("msisdn", ""))
            if not msisdn or not msisdn.startswith(starts) or digits not in msisdn:
                continue
            cost = price_to_cents(item.get("cost")) or 0
            self._cost_by_msisdn[msisdn] = cost
            found.append(
                AvailableNumber(
                    e164="+" + msisdn,
                    country=str(item.get("country") or country).upper(),
                    locality=None,
                    monthly_cost_cents=cost,
                    provider=self.name,
                )
            )
        return found[:limit]

    async def buy_number(self, e164: str, sms_url: str, status_url: str) -> PurchasedNumber:
        msisdn = _msisdn(e164)
        country = country_of("+" + msisdn)
        cost = self._cost_by_msisdn.get(msisdn)
        if cost is None:
            # The buy answer carries no price, so look the number up while it is still for sale.
            matches = await self.search_numbers(country, contains=msisdn, limit=10)
            cost = next((n.monthly_cost_cents for n in matches if n.e164 == "+" + msisdn), None)
            if cost is None:
                raise SmsProviderError(
                    "That number is no longer available. Search again and pick another.", code="not-available"
                )
        body = {"country": country, "msisdn": msisdn}
        try:
            await self._retrying("buy_number", lambda: self._numbers_api("POST", "/number/buy", body), idempotent=False)
        except SmsProviderError as exc:
            if exc.code == "420":
                raise SmsProviderError(
                    "That number is no longer available. Search again and pick another.", code=exc.code
                ) from exc
            raise
        # Inbound texts follow the number's moHttpUrl; delivery receipts are asked for per message in send().
        update = {**body, "moHttpUrl": sms_url}
        await self._retrying("update_number", lambda: self._numbers_api("POST", "/number/update", update), idempotent=True)
        self._cost_by_msisdn.pop(msisdn, None)
        return PurchasedNumber(provider_sid=msisdn, e164="+" + msisdn, country=country, monthly_cost_cents=cost)

    async def release_number(self, provider_sid: str) -> None:
        msisdn = _msisdn(provider_sid)
        body = {"country": country_of("+" + msisdn), "msisdn": msisdn}
        await self._retrying(
            "release_number", lambda: self._numbers_api("POST", "/number/cancel", body), idempotent=True
        )

    async def send(self, from_e164: str, to_e164: str, body: str, status_callback_url: str) -> SendResult:
        form = {
            "api_key": self._api_key,
            "api_secret": self._api_secret,
            "from": _msisdn(from_e164),
            "to": _msisdn(to_e164),
            "text": body,
            "callback": status_callback_url,
            "status-report-req": "1",
        }
        if not is_gsm7(body):
            form["type"] = "unicode"

        async def call() -> SendResult:
            response = await self._http.post(f"{self._rest}/sms/json", data=form)
            if response.status_code == 429:
                raise RateLimited(code="429")
            if response.status_code in (401, 403):
                raise ProviderUnavailable(_NOT_SET_UP, code=str(response.status_code), retryable=False)
            if response.status_code >= 500:
                raise ProviderUnavailable(code=str(response.status_code))
            try:
                payload = response.json()
            except ValueError as exc:
                raise ProviderUnavailable(code=str(response.status_code)) from exc
            messages = payload.get("messages") if isinstance(payload, dict) else None
            if not messages:
                raise ProviderUnavailable(code=str(response.status_code))
            for message in messages:
                status = str(message.get("status", ""))
                if status != "0":
                    raise map_sms_status(status, message.get("error-text"))
            # A long text comes back as one entry per part; the first id is the one we track.
            prices = [price_to_decimal(message.get("message-price")) for message in messages]
            cost = price_to_cents(sum(prices, Decimal(0))) if all(p is not None for p in prices) else None
            return SendResult(provider_message_id=str(messages[0]["message-id"]), status="accepted", cost_cents=cost)

        return await self._retrying("send", call, idempotent=False)

    async def balance_cents(self) -> int | None:
        payload = await self._retrying(
            "balance",
            lambda: self._numbers_api("GET", "/account/get-balance", {}),
            idempotent=True,
        )
        return balance_to_cents(payload.get("value"))

    async def close(self) -> None:
        await self._http.aclose()
