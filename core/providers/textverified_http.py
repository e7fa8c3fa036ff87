"""TextVerified's HTTP layer: one shared client, the cached bearer token, retries, and errors mapped to ours."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from core.providers.textverified_parse import parse_datetime, response_json
from core.providers.verification import (
    InsufficientBalance,
    NotAllowed,
    NotFound,
    PriceChanged,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)
from core.version import __version__

log = logging.getLogger("cumapp.providers.textverified")

DEFAULT_BASE_URL = "https://www.textverified.com"
API = "/api/pub/v2"

_OUT_OF_STOCK = re.compile(
    r"no (?:numbers?|lines?|stock)|out of stock|sold out|not available|unavailable", re.I
)
_NOT_ENOUGH_MONEY = re.compile(r"(?:insufficient|not enough) (?:account )?(?:balance|funds|credits?)", re.I)


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


def _raise_for_status(
    response: httpx.Response, *, op: str, idempotent: bool, action: bool, max_retry_after: float
) -> None:
    """Nothing for a 2xx; otherwise the ProviderError the answer means, wrapped in _Retry where a retry may help."""
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
        if retry_after is not None and retry_after > max_retry_after:
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


class TextVerifiedClient:
    """Sends requests to TextVerified with a valid bearer token, retrying only what is safe to repeat.

    One httpx.AsyncClient is shared by every call. The bearer token is cached, renewed shortly before it
    expires and once more after a 401. 429 answers are retried with jittered backoff honouring Retry-After;
    timeouts and 5xx are retried only where repeating is harmless (reads, pricing, and create, which carries
    an Idempotency-Key).
    """

    def __init__(
        self,
        api_key: SecretStr | str,
        username: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 20.0,
        token_refresh_margin: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self.username = username
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._origin = urlsplit(self.base_url)
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": f"CumApp/{__version__}"},
            follow_redirects=False,
        )
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

    async def close(self) -> None:
        await self._client.aclose()

    def _local_url(self, href: str) -> str:
        """Links from TextVerified may be absolute; never send our bearer token to another host."""
        parts = urlsplit(href)
        if not parts.scheme and not parts.netloc:
            return href if href.startswith("/") else "/" + href
        if (parts.scheme, parts.netloc) == (self._origin.scheme, self._origin.netloc):
            return href
        path = parts.path or "/"
        return f"{path}?{parts.query}" if parts.query else path

    def _wait(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _Retry) and exc.retry_after is not None:
            # Honour the server's hint, plus a little jitter so parallel callers do not return in lockstep.
            return exc.retry_after + self._random.uniform(0, min(1.0, 0.1 * exc.retry_after + 0.05))
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (retry_state.attempt_number - 1))
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    async def request(
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
        """One API call with retries; `action` marks cancel/report/reuse, whose refusals mean NotAllowed."""
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
        _raise_for_status(
            response, op=op, idempotent=idempotent, action=action, max_retry_after=self._max_retry_after
        )
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
                            "X-API-USERNAME": self.username,
                        },
                        token=None,
                    )
                    if response.status_code in (401, 403):
                        raise ProviderError(
                            f"auth: TextVerified refused the API key for user {self.username!r} "
                            f"(HTTP {response.status_code})"
                        )
                    _raise_for_status(
                        response, op="auth", idempotent=True, action=False, max_retry_after=self._max_retry_after
                    )
                    return self._token_from(response)
        except _Retry as exc:
            raise exc.final from exc.__cause__
        raise ProviderError("auth: no attempt was made")  # pragma: no cover

    @staticmethod
    def _token_from(response: httpx.Response) -> tuple[str, float]:
        body = response_json(response, "auth")
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
