"""Twilio SMS provider on the official SDK's asyncio client; TWILIO_API_BASE_URL re-homes every call."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random
from twilio.base import values
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from core.providers.sms import (
    AvailableNumber,
    InvalidRecipient,
    NotSmsCapable,
    ProviderUnavailable,
    PurchasedNumber,
    RateLimited,
    RecipientOptedOut,
    SendResult,
    SendStatus,
    SmsProviderError,
    UnverifiedTrialNumber,
    balance_to_cents,
    country_of,
    price_to_cents,
)

log = logging.getLogger("cumapp.providers.twilio")

T = TypeVar("T")

# Used only when the Pricing API cannot be reached; Twilio's list price for a US local number.
FALLBACK_MONTHLY_COST_CENTS = 115
DEFAULT_TIMEOUT_SECONDS = 15.0


class RebasedAsyncHttpClient(AsyncTwilioHttpClient):
    """The SDK's aiohttp client, but any https://*.twilio.com URL is sent to `base_url` instead.

    Rewriting here, at the one place every SDK request passes through, also covers URLs the SDK builds itself
    (paging links, other Twilio domains such as pricing.twilio.com) and TWILIO_REGION/TWILIO_EDGE host names."""

    def __init__(self, base_url: str | None = None, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        # pool_connections=False: aiohttp sessions must be created inside a running loop, so we open ours lazily.
        super().__init__(pool_connections=False, timeout=timeout)
        self._base = urlsplit(base_url.rstrip("/")) if base_url else None
        if self._base is not None and (self._base.scheme not in ("http", "https") or not self._base.netloc):
            raise ValueError("TWILIO_API_BASE_URL must be an http:// or https:// URL")

    def rebase(self, url: str) -> str:
        if self._base is None:
            return url
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if host != "twilio.com" and not host.endswith(".twilio.com"):
            return url
        return urlunsplit((self._base.scheme, self._base.netloc, self._base.path + parts.path, parts.query, ""))

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK's HttpClient signature
        allow_redirects: bool = False,
    ) -> Response:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
        headers = dict(headers or {})
        if auth is not None:
            # Sent as a header rather than aiohttp.BasicAuth (deprecated in aiohttp 3.14); the SDK's request
            # log skips any header named Authorization, so the token stays out of logs.
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        return await super().request(
            method,
            self.rebase(url),
            params=params,
            data=data,
            headers=headers,
            auth=None,
            # The parent passes timeout=None straight to aiohttp, which means "no timeout at all".
            timeout=timeout if timeout is not None else self.timeout,
            allow_redirects=allow_redirects,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


def _status_and_code(exc: BaseException) -> tuple[int | None, int | None]:
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        return exc.status, exc.code
    # List pages raise a bare TwilioException("Unable to fetch page", response) on any non-200 answer.
    if isinstance(exc, TwilioException) and len(exc.args) > 1 and isinstance(exc.args[1], Response):
        response = exc.args[1]
        code: int | None = None
        try:
            payload = json.loads(response.text or "{}")
            code = int(payload["code"]) if isinstance(payload, dict) and payload.get("code") else None
        except (ValueError, TypeError, KeyError):
            code = None
        return response.status_code, code
    return None, None


def map_twilio_error(exc: BaseException) -> SmsProviderError:
    """Turn an SDK or transport error into our user-safe error; the provider's words are never shown."""
    if isinstance(exc, SmsProviderError):
        return exc
    if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
        return ProviderUnavailable(code="network")
    status, code = _status_and_code(exc)
    text = str(code if code is not None else status)
    if code == 21211:
        return InvalidRecipient(code=text)
    if code == 21610:
        return RecipientOptedOut(code=text)
    if code in (21614, 21612):
        return NotSmsCapable(code=text)
    if code == 21608:
        return UnverifiedTrialNumber(code=text)
    if code == 20429 or status == 429:
        return RateLimited(code=text)
    if code == 21408:
        return SmsProviderError("Texting that country isn't enabled on the SMS account.", code=text)
    if code in (21606, 21659, 21212):
        return SmsProviderError("The sending number can't send texts. Try another of your numbers.", code=text)
    if code == 21602:
        return SmsProviderError("The message is empty.", code=text)
    if code == 21617:
        return SmsProviderError("The message is too long (1600 characters at most).", code=text)
    if code in (21421, 21422, 21452):
        return SmsProviderError("That number is no longer available. Search again and pick another.", code=text)
    if code in (20003, 20005) or status in (401, 403):
        return ProviderUnavailable(
            "The SMS service is not set up correctly. Please tell an administrator.", code=text, retryable=False
        )
    if status is not None and status >= 500:
        return ProviderUnavailable(code=text)
    return SmsProviderError(code=text)


class MediaTooLarge(SmsProviderError):
    """A picture or file over the size we relay; `size` in bytes when Twilio announced it."""

    def __init__(self, size: int | None, content_type: str | None) -> None:
        super().__init__("The picture is too large.", code="too_large")
        self.size = size
        self.content_type = content_type


class TwilioProvider:
    """SmsProvider over Twilio's REST API, using `*_async` SDK calls on one pooled aiohttp session."""

    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        api_base_url: str | None = None,
        *,
        max_attempts: int = 4,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        voice_url: str | None = None,
    ) -> None:
        self._http = RebasedAsyncHttpClient(api_base_url, timeout=timeout_seconds)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        self._credentials = (account_sid, auth_token)
        # Where calls to the numbers we buy are sent (the voice webhook); None leaves Twilio's default.
        self.voice_url = voice_url
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._monthly_cost: dict[str, int] = {}

    def __repr__(self) -> str:
        # Never the token: this object ends up in logs and tracebacks.
        return f"<TwilioProvider {self._client.account_sid}>"

    @property
    def http_client(self) -> RebasedAsyncHttpClient:
        return self._http

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]], *, idempotent: bool = False) -> T:
        """Run one SDK call; 429s (and, for reads, outages) are retried with jittered exponential backoff."""

        def should_retry(exc: BaseException) -> bool:
            return isinstance(exc, RateLimited) or (idempotent and isinstance(exc, ProviderUnavailable) and exc.retryable)

        async def attempt() -> T:
            try:
                return await call()
            except (TimeoutError, TwilioException, aiohttp.ClientError, OSError) as exc:
                mapped = map_twilio_error(exc)
                status, _ = _status_and_code(exc)
                log.warning(
                    "twilio %s failed: http=%s code=%s (%s)", operation, status, mapped.code, type(mapped).__name__
                )
                raise mapped from exc

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            # Jitter spreads retries from concurrent senders so they don't hit the limit again in lockstep.
            wait=wait_exponential(multiplier=self._backoff, max=self._max_backoff) + wait_random(0, self._backoff),
            retry=retry_if_exception(should_retry),
            reraise=True,
        )
        return await retrying(attempt)

    async def _local_monthly_cost(self, country: str) -> int:
        country = country.upper()
        if country in self._monthly_cost:
            return self._monthly_cost[country]
        cost = FALLBACK_MONTHLY_COST_CENTS
        try:
            record = await self._call(
                "pricing",
                lambda: self._client.pricing.v1.phone_numbers.countries(country).fetch_async(),
                idempotent=True,
            )
            prices: list[dict[str, Any]] = list(record.phone_number_prices or [])  # type: ignore[arg-type]
            for entry in prices:
                if entry.get("number_type") == "local":
                    found = price_to_cents(entry.get("current_price") or entry.get("base_price"))
                    if found is not None:
                        cost = found
                    break
        except SmsProviderError as exc:
            log.warning("twilio pricing for %s unavailable (%s); using %s cents", country, exc.code, cost)
            return cost
        self._monthly_cost[country] = cost
        return cost

    async def search_numbers(
        self, country: str, area_code: str | None = None, contains: str | None = None, limit: int = 10
    ) -> list[AvailableNumber]:
        country = country.upper()
        area: Any = values.unset
        if area_code:
            if not area_code.isdigit():
                return []
            area = int(area_code)
        local = self._client.api.v2010.account.available_phone_numbers(country).local
        try:
            records = await self._call(
                "search_numbers",
                lambda: local.list_async(
                    area_code=area, contains=contains or values.unset, sms_enabled=True, limit=max(1, limit)
                ),
                idempotent=True,
            )
        except SmsProviderError as exc:
            if exc.code in ("20404", "404"):
                return []  # Twilio answers 404 for countries it has no numbers in.
            raise
        if not records:
            return []
        cost = await self._local_monthly_cost(country)
        return [
            AvailableNumber(
                e164=record.phone_number,
                country=(record.iso_country or country).upper(),
                locality=record.locality or None,
                monthly_cost_cents=cost,
                provider=self.name,
            )
            for record in records
            if record.phone_number
        ]

    async def buy_number(self, e164: str, sms_url: str, status_url: str) -> PurchasedNumber:
        numbers = self._client.api.v2010.account.incoming_phone_numbers
        record = await self._call(
            "buy_number",
            lambda: numbers.create_async(
                phone_number=e164, sms_url=sms_url, sms_method="POST", status_callback=status_url,
                **self._voice_settings(),
            ),
        )
        country = country_of(record.phone_number or e164)
        return PurchasedNumber(
            provider_sid=str(record.sid),
            e164=record.phone_number or e164,
            country=country,
            monthly_cost_cents=await self._local_monthly_cost(country),
        )

    def _voice_settings(self) -> dict[str, str]:
        return {"voice_url": self.voice_url, "voice_method": "POST"} if self.voice_url else {}

    async def set_voice_url(self, provider_sid: str) -> None:
        """Point an owned number's calls at our voice webhook (numbers bought before calls were handled)."""
        if not self.voice_url:
            return
        number = self._client.api.v2010.account.incoming_phone_numbers(provider_sid)
        await self._call("set_voice_url", lambda: number.update_async(**self._voice_settings()), idempotent=True)

    def _authorized_get(self, url: str) -> Any:
        """GET with the account's credentials (the caller checked the URL is Twilio's: see `_at_twilio`)."""
        if self._http.session is None or self._http.session.closed:
            self._http.session = aiohttp.ClientSession()
        token = base64.b64encode(":".join(self._credentials).encode()).decode("ascii")
        return self._http.session.get(
            url, headers={"Authorization": f"Basic {token}"}, timeout=aiohttp.ClientTimeout(total=self._http.timeout)
        )

    async def fetch_recording(self, recording_url: str, max_bytes: int) -> bytes:
        """A voicemail as MP3 (`RecordingUrl` + ".mp3"), fetched with the account's credentials. Only Twilio's
        own hosts get them: the URL comes from a webhook, signed, but credentials go nowhere else."""
        _at_twilio(recording_url, "The recording is not at Twilio.", "recording_url")
        url = self._http.rebase(recording_url.removesuffix(".mp3").removesuffix(".wav") + ".mp3")

        async def download() -> bytes:
            async with self._authorized_get(url) as response:
                if response.status != 200:
                    status = response.status
                    retryable = status >= 500 or status in (404, 429)  # 404: not stored yet, moments after the call
                    raise ProviderUnavailable(code=str(status), retryable=retryable) if retryable else (
                        SmsProviderError("The recording could not be fetched.", code=str(status))
                    )
                data = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > max_bytes:
                        raise SmsProviderError("The recording is too large.", code="too_large")
                return bytes(data)

        return await self._call("fetch_recording", download, idempotent=True)

    async def fetch_media(self, media_url: str, max_bytes: int) -> tuple[bytes, str]:
        """An MMS picture or file (`MediaUrl<N>`) and its content type, fetched with the account's credentials and
        following Twilio's redirect to its storage (aiohttp drops the credentials on a redirect to another host).
        Over `max_bytes` it raises MediaTooLarge with the size when Twilio says it, without reading further."""
        _at_twilio(media_url, "The picture is not at Twilio.", "media_url")
        url = self._http.rebase(media_url)

        async def download() -> tuple[bytes, str]:
            async with self._authorized_get(url) as response:
                if response.status != 200:
                    status = response.status
                    if status >= 500 or status == 429:
                        raise ProviderUnavailable(code=str(status))
                    raise SmsProviderError("The picture could not be fetched.", code=str(status))
                if response.content_length is not None and response.content_length > max_bytes:
                    raise MediaTooLarge(response.content_length, response.content_type)
                data = bytearray()
                async for chunk in response.content.iter_chunked(256 * 1024):
                    data += chunk
                    if len(data) > max_bytes:
                        raise MediaTooLarge(None, response.content_type)
                return bytes(data), response.headers.get("Content-Type", "application/octet-stream")

        return await self._call("fetch_media", download, idempotent=True)

    async def send_mms(
        self, from_e164: str, to_e164: str, body: str, media_urls: list[str], status_callback_url: str
    ) -> SendResult:
        """An MMS: the text and pictures Twilio fetches from `media_urls` (ours, short-lived)."""
        messages = self._client.api.v2010.account.messages
        record = await self._call(
            "send_mms",
            lambda: messages.create_async(
                to=to_e164, from_=from_e164, body=body or values.unset, media_url=media_urls,
                status_callback=status_callback_url,
            ),
        )
        raw = (record.status or "queued").lower()
        status: SendStatus = "accepted" if raw == "accepted" else "sent" if raw in ("sending", "sent") else "queued"
        return SendResult(provider_message_id=str(record.sid), status=status, cost_cents=price_to_cents(record.price))

    async def release_number(self, provider_sid: str) -> None:
        number = self._client.api.v2010.account.incoming_phone_numbers(provider_sid)
        try:
            await self._call("release_number", number.delete_async, idempotent=True)
        except SmsProviderError as exc:
            if exc.code in ("20404", "404"):
                return  # Already gone: releasing is idempotent for our callers.
            raise

    async def send(self, from_e164: str, to_e164: str, body: str, status_callback_url: str) -> SendResult:
        messages = self._client.api.v2010.account.messages
        record = await self._call(
            "send",
            lambda: messages.create_async(
                to=to_e164, from_=from_e164, body=body, status_callback=status_callback_url
            ),
        )
        raw = (record.status or "queued").lower()
        status: SendStatus = "accepted" if raw == "accepted" else "sent" if raw in ("sending", "sent") else "queued"
        return SendResult(provider_message_id=str(record.sid), status=status, cost_cents=price_to_cents(record.price))

    async def balance_cents(self) -> int | None:
        record = await self._call(
            "balance", self._client.api.v2010.account.balance.fetch_async, idempotent=True
        )
        return balance_to_cents(record.balance)

    async def close(self) -> None:
        await self._http.close()


def _at_twilio(url: str, refusal: str, code: str) -> None:
    """Credentials go only to Twilio's own hosts over HTTPS: a URL from a webhook, even a signed one, is checked."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not (host == "twilio.com" or host.endswith(".twilio.com")):
        raise SmsProviderError(refusal, code=code)

