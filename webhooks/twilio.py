"""Twilio webhooks: inbound SMS and delivery status, X-Twilio-Signature checked, answered with empty TwiML."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from aiohttp import web
from multidict import MultiDictProxy

from core.messaging.gateway import TWILIO_SMS_PATH, TWILIO_STATUS_PATH
from core.platform.clock import utcnow
from core.providers.sms import parse_twilio_inbound, parse_twilio_status, validate_twilio_signature
from core.services import Services
from webhooks.server import SERVICES

log = logging.getLogger(__name__)

PROVIDER = "twilio"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _twiml(status: int = 200) -> web.Response:
    return web.Response(status=status, text=EMPTY_TWIML, content_type="text/xml", charset="utf-8")


def _count(services: Services, outcome: str) -> None:
    services.metrics.webhooks.labels(PROVIDER, outcome).inc()


async def _signed_form(request: web.Request, services: Services) -> MultiDictProxy[str] | None:
    """The form when X-Twilio-Signature matches the public URL Twilio called; None (and a WARNING) otherwise."""
    form: MultiDictProxy[str] = await request.post()  # type: ignore[assignment]
    token = services.settings.twilio_auth_token
    url = f"{services.settings.public_base_url}{request.path_qs}"
    signature = request.headers.get("X-Twilio-Signature")
    if token is None or not validate_twilio_signature(token.get_secret_value(), url, form, signature):
        reason = "no TWILIO_AUTH_TOKEN configured" if token is None else (
            "missing signature" if not signature else "signature mismatch"
        )
        log.warning("twilio webhook %s refused from %s: %s", request.path, request.remote, reason)
        return None
    return form


Process = Callable[[Services, MultiDictProxy[str], datetime], Awaitable[str]]


def _handler(process: Process) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        received_at = utcnow()  # relay latency is measured from here
        services = request.app[SERVICES]
        form = await _signed_form(request, services)
        if form is None:
            _count(services, "forbidden")
            raise web.HTTPForbidden(text="invalid signature")
        try:
            outcome = await process(services, form, received_at)
        except ValueError as error:
            _count(services, "malformed")
            log.warning("twilio webhook %s malformed: %s", request.path, error)
            raise web.HTTPBadRequest(text="malformed webhook") from None
        _count(services, outcome)
        return _twiml()

    return handle


async def _inbound(services: Services, form: MultiDictProxy[str], received_at: datetime) -> str:
    sms = parse_twilio_inbound(form)
    result = await services.messaging.submit_inbound(sms, received_at)
    return str(result.outcome)


async def _status(services: Services, form: MultiDictProxy[str], received_at: datetime) -> str:
    update = parse_twilio_status(form)
    changed = await services.messaging.apply_status(update)
    return "status" if changed else "status_unchanged"


def add_routes(app: web.Application) -> None:
    """POST /webhooks/twilio/sms and /webhooks/twilio/status."""
    app.router.add_post(TWILIO_SMS_PATH, _handler(_inbound))
    app.router.add_post(TWILIO_STATUS_PATH, _handler(_status))
