"""Twilio webhooks: inbound SMS and delivery status, X-Twilio-Signature checked, answered with empty TwiML.

Twilio signs the URL and the form's fields rather than the raw body, so the form is decoded first, within the
bounds of webhooks/bodies.py (400 for a form that is not UTF-8 or not a form, 413 for one too large), then the
signature is checked before any field is used."""

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
from webhooks import media
from webhooks.bodies import BadBody, read_form
from webhooks.fits import check_inbound, check_media_count, check_status
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
    form = await read_form(request)
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


async def signed_form(request: web.Request, services: Services) -> MultiDictProxy[str] | web.Response:
    """The form of a webhook signed by Twilio, or the answer to a body that cannot be one (400/413); a missing or
    wrong signature raises 403. Shared by the SMS and the voice webhooks."""
    try:
        form = await _signed_form(request, services)
    except BadBody as error:
        _count(services, "too_large" if error.status == 413 else "malformed")
        log.warning("twilio webhook %s from %s refused: %s", request.path, request.remote, error.reason)
        return error.response()
    if form is None:
        _count(services, "forbidden")
        raise web.HTTPForbidden(text="invalid signature")
    return form


def _handler(process: Process) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        received_at = utcnow()  # relay latency is measured from here
        services = request.app[SERVICES]
        form = await signed_form(request, services)
        if isinstance(form, web.Response):
            return form
        try:
            outcome = await process(services, form, received_at)
        except ValueError as error:
            _count(services, "malformed")
            log.warning("twilio webhook %s malformed: %s", request.path, error)
            raise web.HTTPBadRequest(text="malformed webhook") from None
        except BadBody as error:  # signed, but a field that does not fit (webhooks/fits.py)
            _count(services, "malformed")
            log.warning("twilio webhook %s malformed: %s", request.path, error.reason)
            return error.response()
        _count(services, outcome)
        return _twiml()

    return handle


async def _inbound(services: Services, form: MultiDictProxy[str], received_at: datetime) -> str:
    check_media_count(form.get("NumMedia"))
    sms = parse_twilio_inbound(form)
    check_inbound(sms)
    result = await services.messaging.submit_inbound(sms, received_at)
    return str(result.outcome)


async def _status(services: Services, form: MultiDictProxy[str], received_at: datetime) -> str:
    update = parse_twilio_status(form)
    check_status(update)
    changed = await services.messaging.apply_status(update)
    return "status" if changed else "status_unchanged"


def add_routes(app: web.Application) -> None:
    """POST /webhooks/twilio/sms and /webhooks/twilio/status, and GET /media/{token} where Twilio fetches the
    pictures of the MMS we send."""
    app.router.add_post(TWILIO_SMS_PATH, _handler(_inbound))
    app.router.add_post(TWILIO_STATUS_PATH, _handler(_status))
    media.add_routes(app)
