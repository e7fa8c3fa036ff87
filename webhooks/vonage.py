"""Vonage webhooks: inbound SMS and delivery receipts (GET query, POST form or JSON), signature checked.

Signature policy: every Vonage webhook must be signed with VONAGE_SIGNATURE_SECRET (the account's "signed
webhooks" setting). When no signature secret is configured the routes refuse everything with 403, whether or
not the provider plan uses Vonage: an unsigned inbound webhook would let anyone put a text in a user's chat, and
a deployment without Vonage has nothing to accept there anyway. The one exception is a bare GET with no
parameters, which Vonage's dashboard uses to check that the URL answers: it gets 200 and changes nothing.

Vonage's `sig` is computed over the parameters rather than the raw body, so the body is read first, within the
bounds of webhooks/bodies.py: a flat JSON object or a form, 400 for anything else, 413 for what is too large.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from core.messaging.gateway import VONAGE_INBOUND_PATH, VONAGE_STATUS_PATH
from core.platform.clock import utcnow
from core.providers.sms import parse_vonage_inbound, parse_vonage_status, validate_vonage_signature
from core.services import Services
from webhooks.bodies import FORM, JSON, BadBody, check_params, parse_form, parse_json, read_body
from webhooks.fits import check_inbound, check_status
from webhooks.server import SERVICES

log = logging.getLogger(__name__)

PROVIDER = "vonage"
Process = Callable[[Services, dict[str, Any], datetime], Awaitable[str]]


def _count(services: Services, outcome: str) -> None:
    services.metrics.webhooks.labels(PROVIDER, outcome).inc()


async def _params(request: web.Request) -> dict[str, Any]:
    """Query parameters, overlaid with a form or JSON body: Vonage sends whichever the dashboard says.

    Vonage signs the parameters (its `sig` is one of them), not the raw body, so they are read before the
    signature can be checked: within bounds (webhooks/bodies.py), and a JSON body must be one flat object, as
    Vonage sends it. Raises BadBody."""
    params: dict[str, Any] = dict(request.query)
    check_params(params)
    if request.method != "POST" or not request.body_exists:
        return params
    raw = await read_body(request)
    if not raw:
        return params
    if request.content_type == JSON:
        body = parse_json(raw, max_depth=1)
        if not isinstance(body, dict):
            raise BadBody(400, "malformed JSON: expected one object")
        params.update(body)
    elif request.content_type == FORM:
        params.update(parse_form(raw, request.charset))
    else:
        raise BadBody(400, f"expected {JSON} or {FORM}")
    return params


def _handler(process: Process) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        received_at = utcnow()  # relay latency is measured from here
        services = request.app[SERVICES]
        if request.method == "GET" and not request.query:
            return web.Response(text="OK")  # Vonage's URL check
        try:
            params = await _params(request)
        except BadBody as error:
            _count(services, "too_large" if error.status == 413 else "malformed")
            log.warning("vonage webhook %s from %s refused: %s", request.path, request.remote, error.reason)
            return error.response()
        secret = services.settings.vonage_signature_secret
        if secret is None or not validate_vonage_signature(secret.get_secret_value(), params):
            _count(services, "forbidden")
            reason = "no VONAGE_SIGNATURE_SECRET configured" if secret is None else (
                "missing signature" if not params.get("sig") else "signature mismatch or stale timestamp"
            )
            log.warning("vonage webhook %s refused from %s: %s", request.path, request.remote, reason)
            raise web.HTTPForbidden(text="invalid signature")
        try:
            outcome = await process(services, params, received_at)
        except ValueError as error:
            _count(services, "malformed")
            log.warning("vonage webhook %s malformed: %s", request.path, error)
            raise web.HTTPBadRequest(text="malformed webhook") from None
        except BadBody as error:  # signed, but a field that does not fit (webhooks/fits.py)
            _count(services, "malformed")
            log.warning("vonage webhook %s malformed: %s", request.path, error.reason)
            return error.response()
        _count(services, outcome)
        return web.Response(text="OK")

    return handle


async def _inbound(services: Services, params: dict[str, Any], received_at: datetime) -> str:
    sms = parse_vonage_inbound(params)
    check_inbound(sms)
    result = await services.messaging.submit_inbound(sms, received_at)
    return str(result.outcome)


async def _status(services: Services, params: dict[str, Any], received_at: datetime) -> str:
    update = parse_vonage_status(params)
    check_status(update)
    changed = await services.messaging.apply_status(update)
    return "status" if changed else "status_unchanged"


def add_routes(app: web.Application) -> None:
    """GET and POST /webhooks/vonage/inbound and /webhooks/vonage/status."""
    services = app.get(SERVICES)
    if services is not None and "vonage" in services.plan.sms and services.settings.vonage_signature_secret is None:
        log.warning("VONAGE_SIGNATURE_SECRET is not set: every Vonage webhook will be refused with 403. "
                    "Turn on signed webhooks in the Vonage dashboard and set the secret.")
    for path, process in ((VONAGE_INBOUND_PATH, _inbound), (VONAGE_STATUS_PATH, _status)):
        handler = _handler(process)
        app.router.add_get(path, handler)
        app.router.add_post(path, handler)
