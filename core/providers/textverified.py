"""TextVerified API v2 client: rents US numbers for one service and reads the SMS codes sent to them.

The HTTP layer (token, retries, error mapping) is in textverified_http, the JSON parsing in textverified_parse;
this module keeps the names other code imports from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from core.providers.textverified_http import API, DEFAULT_BASE_URL, TextVerifiedClient
from core.providers.textverified_parse import (
    created_link,
    dollars_to_cents,
    map_state,
    next_page,
    parse_datetime,
    parse_webhook_body,
    response_json,
    service_display_name,
    to_e164,
    verification_from,
)
from core.providers.verification import (
    NotFound,
    PriceQuote,
    ProviderError,
    ProviderSms,
    ProviderVerification,
    ServiceInfo,
    VerificationState,
    WebhookEvent,
)

__all__ = [
    "API",
    "DEFAULT_BASE_URL",
    "TextVerifiedProvider",
    "dollars_to_cents",
    "map_state",
    "parse_datetime",
    "parse_webhook_body",
    "to_e164",
]

log = logging.getLogger("cumapp.providers.textverified")


class TextVerifiedProvider:
    """TextVerified v2 behind the VerificationProvider interface.

    Requests go through one TextVerifiedClient (see there for tokens and retries). The keyword-only knobs
    after `transport` are for tests and tuning; the defaults suit production.
    """

    name = "textverified"

    def __init__(
        self,
        api_key: SecretStr | str,
        username: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        services_ttl: float = 3600.0,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 20.0,
        token_refresh_margin: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = TextVerifiedClient(
            api_key,
            username,
            base_url,
            timeout=timeout,
            transport=transport,
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_retry_after=max_retry_after,
            token_refresh_margin=token_refresh_margin,
            sleep=sleep,
        )
        self._services_ttl = services_ttl
        self._services: list[ServiceInfo] | None = None
        self._services_fetched_at = 0.0
        self._services_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"TextVerifiedProvider(base_url={self._http.base_url!r}, username={self._http.username!r})"

    async def __aenter__(self) -> TextVerifiedProvider:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.close()

    # ---- public API -------------------------------------------------------------------------------------

    async def list_services(self) -> list[ServiceInfo]:
        if self._services is not None and time.monotonic() - self._services_fetched_at < self._services_ttl:
            return list(self._services)
        async with self._services_lock:
            # Another caller may have refreshed the cache while we waited for the lock.
            if (
                self._services is not None
                and time.monotonic() - self._services_fetched_at < self._services_ttl
            ):
                return list(self._services)
            response = await self._http.request(
                "GET",
                f"{API}/services",
                op="services",
                idempotent=True,
                params={"numberType": "mobile", "reservationType": "verification"},
            )
            items = response_json(response, "services")
            if not isinstance(items, list):
                raise ProviderError("services: expected a JSON array")
            services: list[ServiceInfo] = []
            seen: set[str] = set()
            for item in items:
                if not isinstance(item, dict) or not item.get("serviceName"):
                    continue
                code = str(item["serviceName"])
                # We only buy SMS verifications; voice-only services would never deliver a text.
                if str(item.get("capability", "sms")).lower() not in ("sms", "smsandvoicecombo"):
                    continue
                if code in seen:
                    continue
                seen.add(code)
                services.append(
                    ServiceInfo(code=code, name=str(item.get("description") or service_display_name(code)))
                )
            self._services = services
            self._services_fetched_at = time.monotonic()
            return list(services)

    async def price(self, service: str) -> PriceQuote:
        response = await self._http.request(
            "POST",
            f"{API}/pricing/verifications",
            op="price",
            # A price check has no side effect, so repeating it after a timeout is harmless.
            idempotent=True,
            json_body={
                "serviceName": service,
                "areaCode": False,
                "carrier": False,
                "numberType": "mobile",
                "capability": "sms",
            },
        )
        body = response_json(response, "price")
        if not isinstance(body, dict) or body.get("price") is None:
            raise ProviderError("price: answer has no price")
        return PriceQuote(
            service=str(body.get("serviceName") or service), cost_cents=dollars_to_cents(body["price"])
        )

    async def create(
        self, service: str, idempotency_key: str, *, max_cost_cents: int | None = None
    ) -> ProviderVerification:
        key = idempotency_key.strip()
        if not 1 <= len(key) <= 256:
            raise ValueError("idempotency_key must be 1 to 256 characters")
        payload: dict[str, Any] = {"serviceName": service, "capability": "sms"}
        if max_cost_cents is not None:
            payload["maxPrice"] = round(max_cost_cents / 100, 2)
        response = await self._http.request(
            "POST",
            f"{API}/verifications",
            op="create",
            # TextVerified answers a repeated key with the same 201, so a create is safe to retry.
            idempotent=True,
            json_body=payload,
            headers={"Idempotency-Key": key},
        )
        href = created_link(response, "create")
        # If this read fails the number is already bought; calling create again with the same key
        # returns the same verification instead of buying another.
        return await self._verification_at(href, op="create")

    async def details(self, verification_id: str) -> ProviderVerification:
        return await self._verification_at(self._verification_path(verification_id), op="details")

    async def sms(self, verification_id: str) -> list[ProviderSms]:
        messages: list[ProviderSms] = []
        seen_ids: set[str] = set()
        url: str | None = f"{API}/sms"
        params: dict[str, str] | None = {"reservationId": verification_id}
        visited: set[str] = set()
        for _ in range(50):
            if url is None:
                break
            response = await self._http.request("GET", url, op="sms", idempotent=True, params=params)
            page = response_json(response, "sms")
            if not isinstance(page, dict):
                raise ProviderError("sms: expected a paginated object")
            for item in page.get("data") or []:
                if not isinstance(item, dict):
                    continue
                sms_id = str(item.get("id") or "")
                if sms_id and sms_id in seen_ids:
                    continue
                seen_ids.add(sms_id)
                messages.append(
                    ProviderSms(
                        id=sms_id,
                        verification_id=verification_id,
                        text=str(item.get("smsContent") or ""),
                        parsed_code=(str(item["parsedCode"]) if item.get("parsedCode") else None),
                        received_at=parse_datetime(item.get("createdAt")) or datetime.now(UTC),
                    )
                )
            url = next_page(page)
            params = None
            if url is not None:
                if url in visited:
                    log.warning("sms: pagination loop at %s, stopping", url)
                    break
                visited.add(url)
        else:
            log.warning("sms: stopped after 50 pages for %s", verification_id)
        messages.sort(key=lambda message: message.received_at)
        return messages

    async def cancel(self, verification_id: str) -> ProviderVerification:
        return await self._simple_action(verification_id, "cancel", "cancelled")

    async def report(self, verification_id: str) -> ProviderVerification:
        return await self._simple_action(verification_id, "report", "reported")

    async def reactivate(self, verification_id: str) -> ProviderVerification:
        return await self._relink_action(verification_id, "reactivate")

    async def reuse(self, verification_id: str) -> ProviderVerification:
        return await self._relink_action(verification_id, "reuse")

    async def balance_cents(self) -> int | None:
        response = await self._http.request("GET", f"{API}/account/me", op="balance", idempotent=True)
        body = response_json(response, "balance")
        if not isinstance(body, dict) or body.get("currentBalance") is None:
            return None
        return dollars_to_cents(body["currentBalance"])

    def parse_webhook(self, raw_body: bytes) -> WebhookEvent:
        return parse_webhook_body(raw_body)

    # ---- actions ----------------------------------------------------------------------------------------

    async def _simple_action(
        self, verification_id: str, action: str, state: VerificationState
    ) -> ProviderVerification:
        await self._http.request(
            "POST",
            f"{self._verification_path(verification_id)}/{action}",
            op=action,
            idempotent=False,
            action=True,
        )
        try:
            return await self.details(verification_id)
        except ProviderError as exc:
            # The action itself succeeded (money may already be back); a failed follow-up read must not
            # make the caller believe otherwise.
            log.warning("%s of %s succeeded but reading it back failed: %s", action, verification_id, exc)
            return ProviderVerification(
                id=verification_id,
                service="",
                number="",
                state=state,
                ends_at=None,
                cost_cents=0,
                can_cancel=False,
                can_report=False,
                can_reactivate=False,
                can_reuse=False,
            )

    async def _relink_action(self, verification_id: str, action: str) -> ProviderVerification:
        response = await self._http.request(
            "POST",
            f"{self._verification_path(verification_id)}/{action}",
            op=action,
            idempotent=False,
            action=True,
        )
        href = created_link(response, action)
        return await self._verification_at(href, op=action)

    # ---- paths ------------------------------------------------------------------------------------------

    def _verification_path(self, verification_id: str) -> str:
        if not verification_id or not verification_id.strip():
            raise NotFound("empty verification id")
        return f"{API}/verifications/{quote(verification_id.strip(), safe='')}"

    async def _verification_at(self, href: str, *, op: str) -> ProviderVerification:
        response = await self._http.request("GET", href, op=f"{op}:details", idempotent=True)
        body = response_json(response, op)
        if not isinstance(body, dict) or not body.get("id"):
            raise ProviderError(f"{op}: verification answer has no id")
        return verification_from(body)
