"""Twilio voice webhooks: a call to an owned number (answered with TwiML) and its voicemail recording, both with
X-Twilio-Signature checked exactly as for SMS (webhooks/twilio.py): unsigned or forged gets 403."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from aiohttp import web
from multidict import MultiDictProxy

from core.messaging.calls import TWILIO_RECORDING_PATH, TWILIO_VOICE_PATH, CallAnswer
from core.platform.clock import utcnow
from core.providers.sms import SmsProviderError
from core.providers.twilio_voice import parse_incoming_call, parse_recording
from core.services import Services
from webhooks.server import SERVICES
from webhooks.twilio import PROVIDER, signed_form

log = logging.getLogger(__name__)

Process = Callable[[Services, MultiDictProxy[str], datetime], Awaitable[CallAnswer]]


def _count(services: Services, outcome: str) -> None:
    services.metrics.webhooks.labels(PROVIDER, outcome).inc()


def _handler(process: Process) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        received_at = utcnow()
        services = request.app[SERVICES]
        form = await signed_form(request, services)
        if isinstance(form, web.Response):
            return form
        try:
            answer = await process(services, form, received_at)
        except ValueError as error:
            _count(services, "malformed")
            log.warning("twilio webhook %s malformed: %s", request.path, error)
            raise web.HTTPBadRequest(text="malformed webhook") from None
        except SmsProviderError as error:
            # The recording could not be fetched yet: not stored, so Twilio is asked to send it again.
            _count(services, "retry")
            log.warning("twilio webhook %s: recording not fetched (%s), answered 503", request.path, error.code)
            return web.Response(status=503, text="temporarily unavailable", headers={"Retry-After": "5"})
        _count(services, f"call_{answer.outcome}")
        return web.Response(text=answer.twiml, content_type="text/xml", charset="utf-8")

    return handle


async def _call(services: Services, form: MultiDictProxy[str], received_at: datetime) -> CallAnswer:
    return await services.messaging.calls.answer(parse_incoming_call(form), received_at)  # type: ignore[no-any-return]


async def _recording(services: Services, form: MultiDictProxy[str], received_at: datetime) -> CallAnswer:
    return await services.messaging.calls.recording(parse_recording(form), received_at)  # type: ignore[no-any-return]


def add_routes(app: web.Application) -> None:
    """POST /webhooks/twilio/voice and /webhooks/twilio/recording."""
    app.router.add_post(TWILIO_VOICE_PATH, _handler(_call))
    app.router.add_post(TWILIO_RECORDING_PATH, _handler(_recording))
