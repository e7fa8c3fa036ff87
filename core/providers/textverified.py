"""TextVerified API v2 client: rents US numbers for one service and reads the SMS codes sent to them."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from core.providers.verification import (
    InsufficientBalance,
    NotAllowed,
    NotFound,
    PriceChanged,
    PriceQuote,
    ProviderError,
    ProviderSms,
    ProviderTimeout,
    ProviderVerification,
    RateLimited,
    ServiceInfo,
    Unavailable,
    VerificationState,
    WebhookEvent,
)
from core.version import __version__

log = logging.getLogger("cumapp.providers.textverified")

DEFAULT_BASE_URL = "https://www.textverified.com"
API = "/api/pub/v2"

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

_OUT_OF_STOCK = re.compile(
    r"no (?:numbers?|lines?|stock)|out of stock|sold out|not available|unavailable", re.I
)
_NOT_ENOUGH_MONEY = re.compile(r"(?:insufficient|not enough) (?:account )?(?:balance|funds|credits?)", re.I)


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


def _service_display_name(code: str) -> str:
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


class _Retry(Exception):
    """One failed attempt that may be tried again; `final` is raised if the attempts run out."""

    def __init__(self, final: ProviderError, retry_after: float | None = None) -> None:
        super().__init__(str(final))
        self.final = final
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200]
    if isinstance(body, dict):
        return str(body.get("errorCode") or ""), str(body.get("errorDescription") or "")[:200]
    return "", ""


class TextVerifiedProvider:
    """TextVerified v2 behind the VerificationProvider interface.

    One httpx.AsyncClient is shared by every call. The bearer token is cached, renewed shortly before it
    expires and once more after a 401. 429 answers are retried with jittered backoff honouring Retry-After;
    timeouts and 5xx are retried only where repeating is harmless (reads, pricing, and create, which carries
    an Idempotency-Key). The keyword-only knobs after `transport` are for tests and tuning; the defaults
    suit production.
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
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self._username = username
        self._base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._origin = urlsplit(self._base_url)
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": f"CumApp/{__version__}"},
            follow_redirects=False,
        )
        self._services_ttl = services_ttl
        self._max_attempts = max(1, max_attempts)
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_retry_after = max_retry_after
        self._token_refresh_margin = token_refresh_margin
        self._sleep = sleep
        self._random = random.Random()

        self._token: str | None = None
        self._token_refresh_at = 0.0
        self._token_lock = asyncio.Lock()
        self._services: list[ServiceInfo] | None = None
        self._services_fetched_at = 0.0
        self._services_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"TextVerifiedProvider(base_url={self._base_url!r}, username={self._username!r})"

    async def __aenter__(self) -> TextVerifiedProvider:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.aclose()

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
            response = await self._call(
                "GET",
                f"{API}/services",
                op="services",
                idempotent=True,
                params={"numberType": "mobile", "reservationType": "verification"},
            )
            items = self._json(response, "services")
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
                    ServiceInfo(code=code, name=str(item.get("description") or _service_display_name(code)))
                )
            self._services = services
            self._services_fetched_at = time.monotonic()
            return list(services)

    async def price(self, service: str) -> PriceQuote:
        response = await self._call(
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
        body = self._json(response, "price")
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
        response = await self._call(
            "POST",
            f"{API}/verifications",
            op="create",
            # TextVerified answers a repeated key with the same 201, so a create is safe to retry.
            idempotent=True,
            json_body=payload,
            headers={"Idempotency-Key": key},
        )
        href = self._created_link(response, "create")
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
            response = await self._call("GET", url, op="sms", idempotent=True, params=params)
            page = self._json(response, "sms")
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
            url = self._next_page(page)
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
        response = await self._call("GET", f"{API}/account/me", op="balance", idempotent=True)
        body = self._json(response, "balance")
        if not isinstance(body, dict) or body.get("currentBalance") is None:
            return None
        return dollars_to_cents(body["currentBalance"])

    def parse_webhook(self, raw_body: bytes) -> WebhookEvent:
        return parse_webhook_body(raw_body)

    # ---- actions ----------------------------------------------------------------------------------------

    async def _simple_action(
        self, verification_id: str, action: str, state: VerificationState
    ) -> ProviderVerification:
        await self._call(
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
        response = await self._call(
            "POST",
            f"{self._verification_path(verification_id)}/{action}",
            op=action,
            idempotent=False,
            action=True,
        )
        href = self._created_link(response, action)
        return await self._verification_at(href, op=action)

    # ---- parsing ----------------------------------------------------------------------------------------

    def _verification_path(self, verification_id: str) -> str:
        if not verification_id or not verification_id.strip():
            raise NotFound("empty verification id")
        return f"{API}/verifications/{quote(verification_id.strip(), safe='')}"

    async def _verification_at(self, href: str, *, op: str) -> ProviderVerification:
        response = await self._call("GET", href, op=f"{op}:details", idempotent=True)
        body = self._json(response, op)
        if not isinstance(body, dict) or not body.get("id"):
            raise ProviderError(f"{op}: verification answer has no id")
        return self._to_verification(body)

    @staticmethod
    def _to_verification(body: dict[str, Any]) -> ProviderVerification:
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

    def _created_link(self, response: httpx.Response, op: str) -> str:
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

    def _next_page(self, page: dict[str, Any]) -> str | None:
        if page.get("hasNext") is False:
            return None
        links = page.get("links")
        nxt = links.get("next") if isinstance(links, dict) else None
        if not isinstance(nxt, dict) or not nxt.get("href"):
            return None
        return str(nxt["href"])

    @staticmethod
    def _json(response: httpx.Response, op: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise ProviderError(f"{op}: answer is not JSON (HTTP {response.status_code})") from exc

    def _local_url(self, href: str) -> str:
        """Links from TextVerified may be absolute; never send our bearer token to another host."""
        parts = urlsplit(href)
        if not parts.scheme and not parts.netloc:
            return href if href.startswith("/") else "/" + href
        if (parts.scheme, parts.netloc) == (self._origin.scheme, self._origin.netloc):
            return href
        path = parts.path or "/"
        return f"{path}?{parts.query}" if parts.query else path

    # ---- HTTP -------------------------------------------------------------------------------------------

    def _wait(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _Retry) and exc.retry_after is not None:
            # Honour the server's hint, plus a little jitter so parallel callers do not return in lockstep.
            return exc.retry_after + self._random.uniform(0, min(1.0, 0.1 * exc.retry_after + 0.05))
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (retry_state.attempt_number - 1))
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    async def _call(
        self,
        method: str,
        url: str,
        *,
        op: str,
        idempotent: bool,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        action: bool = False,
    ) -> httpx.Response:
        url = self._local_url(url)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Retry),
            sleep=self._sleep,
            reraise=True,
            before_sleep=lambda state: log.info(
                "TextVerified %s: attempt %d failed (%s), retrying",
                op,
                state.attempt_number,
                state.outcome.exception() if state.outcome else "?",
            ),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(
                        method,
                        url,
                        op=op,
                        idempotent=idempotent,
                        params=params,
                        json_body=json_body,
                        headers=headers,
                        action=action,
                    )
        except _Retry as exc:
            raise exc.final from exc.__cause__
        raise ProviderError(f"{op}: no attempt was made")  # pragma: no cover - tenacity always makes one

    async def _attempt(
        self,
        method: str,
        url: str,
        *,
        op: str,
        idempotent: bool,
        params: dict[str, str] | None,
        json_body: Any,
        headers: dict[str, str] | None,
        action: bool,
    ) -> httpx.Response:
        token = await self._bearer()
        response = await self._send(
            method,
            url,
            op=op,
            idempotent=idempotent,
            params=params,
            json_body=json_body,
            headers=headers,
            token=token,
        )
        if response.status_code == 401:
            # Tokens can be revoked or expire early; a 401 means the request was not processed,
            # so sending it again with a fresh token is safe even for non-idempotent calls.
            log.info("TextVerified %s: 401, renewing the bearer token once", op)
            token = await self._bearer(stale=token)
            response = await self._send(
                method,
                url,
                op=op,
                idempotent=idempotent,
                params=params,
                json_body=json_body,
                headers=headers,
                token=token,
            )
            if response.status_code == 401:
                raise ProviderError(f"{op}: TextVerified rejected a freshly issued bearer token (HTTP 401)")
        self._raise_for_status(response, op=op, idempotent=idempotent, action=action)
        return response

    async def _send(
        self,
        method: str,
        url: str,
        *,
        op: str,
        idempotent: bool,
        params: dict[str, str] | None,
        json_body: Any,
        headers: dict[str, str] | None,
        token: str | None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        try:
            return await self._client.request(method, url, params=params, json=json_body, headers=all_headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left this process, so trying again cannot do anything twice.
            raise _Retry(
                ProviderTimeout(f"{op}: could not reach TextVerified ({type(exc).__name__})")
            ) from exc
        except httpx.TimeoutException as exc:
            final = ProviderTimeout(f"{op}: TextVerified did not answer in time ({type(exc).__name__})")
            if idempotent:
                raise _Retry(final) from exc
            raise final from exc
        except httpx.TransportError as exc:
            final = ProviderTimeout(f"{op}: connection to TextVerified failed ({type(exc).__name__})")
            if idempotent:
                raise _Retry(final) from exc
            raise final from exc

    def _raise_for_status(self, response: httpx.Response, *, op: str, idempotent: bool, action: bool) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        code, description = _error_fields(response)
        detail = (
            f"{op}: HTTP {status}"
            + (f" {code}" if code else "")
            + (f": {description}" if description else "")
        )
        if status == 429:
            retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            final = RateLimited(detail, retry_after=retry_after)
            if retry_after is not None and retry_after > self._max_retry_after:
                raise final
            raise _Retry(final, retry_after=retry_after)
        if (
            status == 402
            or code.lower() == "insufficientbalance"
            or _NOT_ENOUGH_MONEY.search(f"{code} {description}")
        ):
            raise InsufficientBalance(detail)
        if code.lower() == "pricingfailure":
            raise PriceChanged(detail)
        if status == 409 and code.lower() == "idempotencyconflict":
            # The first create with this key is still running at TextVerified: wait and ask again.
            raise _Retry(ProviderTimeout(detail))
        if code.lower() == "toomanyunfinishedverifications":
            raise RateLimited(detail)
        if status == 404:
            raise NotFound(detail)
        if code.lower() == "unavailable":
            raise Unavailable(detail)
        if status in (400, 409) and action:
            # "does not allow cancellation", "not eligible for reuse"...: the verification refuses, not stock.
            raise NotAllowed(detail)
        if status in (400, 409, 422) and _OUT_OF_STOCK.search(description):
            raise Unavailable(detail)
        if status in (500, 502, 503, 504) and idempotent:
            raise _Retry(ProviderError(detail))
        raise ProviderError(detail)

    async def _bearer(self, *, stale: str | None = None) -> str:
        """A valid bearer token; `stale` names one the server just refused, forcing a renewal."""
        if stale is None and self._token is not None and time.monotonic() < self._token_refresh_at:
            return self._token
        async with self._token_lock:
            # Whoever held the lock before us may already have fetched a fresh token.
            if self._token is not None and self._token != stale and time.monotonic() < self._token_refresh_at:
                return self._token
            self._token = None
            token, lifetime = await self._authenticate()
            margin = min(self._token_refresh_margin, lifetime / 2)
            self._token = token
            self._token_refresh_at = time.monotonic() + max(0.0, lifetime - margin)
            return token

    async def _authenticate(self) -> tuple[str, float]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Retry),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self._send(
                        "POST",
                        f"{API}/auth",
                        op="auth",
                        idempotent=True,
                        params=None,
                        json_body=None,
                        headers={
                            "X-API-KEY": self._api_key.get_secret_value(),
                            "X-API-USERNAME": self._username,
                        },
                        token=None,
                    )
                    if response.status_code in (401, 403):
                        raise ProviderError(
                            f"auth: TextVerified refused the API key for user {self._username!r} "
                            f"(HTTP {response.status_code})"
                        )
                    self._raise_for_status(response, op="auth", idempotent=True, action=False)
                    return self._token_from(response)
        except _Retry as exc:
            raise exc.final from exc.__cause__
        raise ProviderError("auth: no attempt was made")  # pragma: no cover

    @staticmethod
    def _token_from(response: httpx.Response) -> tuple[str, float]:
        body = TextVerifiedProvider._json(response, "auth")
        if not isinstance(body, dict) or not body.get("token"):
            raise ProviderError("auth: answer has no token")
        lifetime: float | None = None
        if isinstance(body.get("expiresIn"), int | float):
            lifetime = float(body["expiresIn"])
        else:
            expires_at = parse_datetime(body.get("expiresAt"))
            if expires_at is not None:
                lifetime = (expires_at - datetime.now(UTC)).total_seconds()
        if lifetime is None or lifetime <= 0:
            # No usable expiry: assume a short life rather than reuse a dead token for long.
            lifetime = 300.0
        return str(body["token"]), lifetime
