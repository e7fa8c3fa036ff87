"""The integrator API on the webhook server: /api/v1 (one module per resource), its OpenAPI document and docs
page, and the events WebSocket. Built from core.api (keys, idempotency, events) and the chat's own services."""

from __future__ import annotations

from aiohttp import web

from core.api.endpoints import Endpoints
from core.api.hub import EventHub
from core.api.idempotency import IdempotencyStore
from core.api.keys import KeyChecker
from core.api.ratelimit import KeyRateLimiter
from core.services import Services
from webhooks.api import account, messages, numbers, verifications, webhook_endpoints  # noqa: F401  (routes)
from webhooks.api.events_ws import HUB, events_socket
from webhooks.api.openapi import docs_page, openapi_json
from webhooks.api.routing import API_STATE, PREFIX, ApiState, add_operation_routes
from webhooks.api.webhook_endpoints import ENDPOINTS


def build_state(services: Services) -> ApiState:
    settings = services.settings
    state = ApiState(
        services=services, keys=KeyChecker(services.db),
        limiter=KeyRateLimiter(settings.api_rate_per_second, settings.api_rate_burst),
        idempotency=IdempotencyStore(services.db),
    )
    state.extras[ENDPOINTS] = Endpoints(services.db, allow_private=settings.api_webhooks_allow_private)
    state.extras[HUB] = EventHub(services.db)
    return state


def add_routes(app: web.Application, services: Services) -> None:
    """Every /api route, and the events hub's life tied to the app's."""
    state = build_state(services)
    app[API_STATE] = state
    hub: EventHub = state.extras[HUB]

    async def hub_context(_app: web.Application):  # type: ignore[no-untyped-def]
        await hub.start()
        yield
        await hub.stop()

    app.cleanup_ctx.append(hub_context)
    app.router.add_get(PREFIX + "/openapi.json", openapi_json)
    app.router.add_get("/api/docs", docs_page)
    app.router.add_get(PREFIX + "/events", events_socket)
    add_operation_routes(app)
