"""POST /webhooks/textverified: signature checked over the raw body, then the event handed to the verification service.

Nothing is parsed before the HMAC over the raw body matches; then the body must be bounded JSON
(webhooks/bodies.py: 400 nested too deep or malformed, 413 too large) before the provider's parser sees it."""

from __future__ import annotations

import logging

from aiohttp import web

from core.platform.clock import utcnow
from core.providers.verification import WEBHOOK_SIGNATURE_HEADER, ProviderError, verify_webhook_signature
from webhooks.bodies import BadBody, parse_json, read_body
from webhooks.server import SERVICES

log = logging.getLogger(__name__)

PATH = "/webhooks/textverified"
PROVIDER = "textverified"


async def textverified_webhook(request: web.Request) -> web.Response:
    """403 without a valid signature (nothing stored), 400 for a body that is no event, else 200 once handled."""
    received_at = utcnow()
    services = request.app[SERVICES]
    metrics = services.metrics.webhooks
    try:
        raw_body = await read_body(request)
    except BadBody as error:
        metrics.labels(PROVIDER, "too_large" if error.status == 413 else "malformed").inc()
        log.warning("TextVerified webhook from %s refused: %s", request.remote, error.reason)
        return error.response()
    secret = services.settings.textverified_webhook_secret
    if secret is None or not secret.get_secret_value():
        metrics.labels(PROVIDER, "forbidden").inc()
        log.warning("TextVerified webhook refused: TEXTVERIFIED_WEBHOOK_SECRET is not set")
        return web.Response(status=403, text="forbidden")
    signature = request.headers.get(WEBHOOK_SIGNATURE_HEADER)
    if not verify_webhook_signature(secret.get_secret_value(), raw_body, signature):
        metrics.labels(PROVIDER, "forbidden").inc()
        log.warning(
            "TextVerified webhook refused: %s signature from %s",
            "missing" if not signature else "wrong", request.remote,
        )
        return web.Response(status=403, text="forbidden")
    verification = services.verification
    if verification is None:
        # Not wired (a web-only process): 503 makes TextVerified deliver it again later instead of dropping it.
        metrics.labels(PROVIDER, "unavailable").inc()
        log.warning("TextVerified webhook received but the verification service is not running")
        return web.Response(status=503, text="unavailable")
    try:
        parse_json(raw_body)  # bounds first: the provider's parser is a plain json.loads
        event = verification.parse_webhook(raw_body)
    except BadBody as error:
        metrics.labels(PROVIDER, "too_large" if error.status == 413 else "malformed").inc()
        log.warning("TextVerified webhook refused (signed): %s", error.reason)
        return error.response()
    except ProviderError as error:
        metrics.labels(PROVIDER, "malformed").inc()
        log.warning("TextVerified webhook with a malformed body: %s", error)
        return web.Response(status=400, text="malformed")
    outcome = await verification.handle_event(event, received_at=received_at)
    metrics.labels(PROVIDER, str(outcome)).inc()
    return web.Response(status=200, text="ok")


def add_routes(app: web.Application) -> None:
    app.router.add_post(PATH, textverified_webhook)
