"""Webhook deliveries: the outbox's sender for the `webhook` platform, which POSTs an event to an endpoint with
`CumApp-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. Anything but a 2xx within 10 seconds
is a refusal the outbox retries with backoff for a day."""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

from core.api.endpoints import BadEndpoint, Endpoints, check_url
from core.api.events import DELIVERY_PLATFORM
from core.platform.db import Database
from core.platform.outbox import DeliveryError, OutgoingMessage
from core.platform.settings import Settings

SIGNATURE_HEADER = "CumApp-Signature"
TIMEOUT_SECONDS = 10.0


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body`, as receivers check it."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret: str, body: bytes, header: str, *, tolerance_seconds: float = 300) -> bool:
    """What a receiver does (documented in docs/API.md): recompute and compare, and refuse stale timestamps."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        t = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance_seconds:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def senders(settings: Settings, db: Database) -> dict[str, WebhookSender]:
    """The outbox sender for webhook endpoints, keyed by its platform, for the composition root."""
    return {DELIVERY_PLATFORM: WebhookSender(Endpoints(db, allow_private=settings.api_webhooks_allow_private))}


class WebhookSender:
    """The outbox's ChatSender for webhook endpoints: `chat_id` is the endpoint's id, the message text the body."""

    platform = DELIVERY_PLATFORM

    def __init__(self, endpoints: Endpoints, client: httpx.AsyncClient | None = None) -> None:
        self.endpoints = endpoints
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False)

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        endpoint = await self.endpoints.live(int(chat_id))
        if endpoint is None:
            raise DeliveryError("the endpoint was deleted", permanent=True)
        try:
            # Checked again at each delivery: a name that now resolves to our own network is refused.
            await check_url(endpoint.url, allow_private=self.endpoints.allow_private)
        except BadEndpoint as error:
            raise DeliveryError(f"address refused: {error}") from error
        body = message.text.encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(endpoint.secret, body),
                   "User-Agent": "CumApp-Webhooks/1"}
        try:
            response = await self._client.post(endpoint.url, content=body, headers=headers)
        except httpx.HTTPError as error:
            raise DeliveryError(f"{type(error).__name__}: {error}") from error
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"the endpoint answered {response.status_code}")
        return f"http-{response.status_code}"

    async def close(self) -> None:
        await self._client.aclose()
