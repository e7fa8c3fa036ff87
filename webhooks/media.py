"""GET /media/{token}: a picture we send as an MMS, for the provider to fetch while the link lasts (an hour).

The token is 128 random bits, shown once in the MediaUrl we give Twilio; only its hash is stored. An unknown or
expired token gets 404 and says nothing more."""

from __future__ import annotations

import logging

from aiohttp import web

from core.messaging.media import MEDIA_PATH, open_link
from webhooks.server import SERVICES

log = logging.getLogger(__name__)


async def _media(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    found = await open_link(services.db, request.match_info["token"])
    if found is None:
        log.warning("media link %s… unknown or expired, asked by %s", request.match_info["token"][:4], request.remote)
        raise web.HTTPNotFound()
    data, content_type = found
    return web.Response(body=data, content_type=content_type, headers={"Cache-Control": "private, no-store"})


def add_routes(app: web.Application) -> None:
    """GET /media/{token}."""
    app.router.add_get(f"{MEDIA_PATH}/{{token}}", _media)
