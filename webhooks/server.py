"""The aiohttp app factory: health, readiness, metrics, provider webhooks and the Telegram webhook route."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.admin.health import refresh_gauges
from core.services import Services
from core.version import __version__

SERVICES = web.AppKey("services", Services)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteAdder = Callable[[web.Application], None]

access_log = logging.getLogger("cumapp.access")
log = logging.getLogger(__name__)


class JsonAccessLogger(AbstractAccessLogger):
    """One JSON object per request, whatever LOG_FORMAT says, so the access log is machine-readable."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            json.dumps(
                {
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "remote": request.remote,
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "bytes": response.body_length,
                    "duration_ms": round(time * 1000, 2),
                }
            )
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    services = request.app[SERVICES]
    return web.json_response(
        {"status": "ok", "version": __version__, "uptime_seconds": round(services.uptime_seconds, 1)}
    )


async def _health_details(services: Services) -> dict[str, Any] | None:
    """The facts /health shows (providers, balances, outbox, error rates), cached for a few seconds."""
    try:
        report = await refresh_gauges(services)
    except Exception:
        log.warning("health details could not be gathered", exc_info=True)
        return None
    return report.as_dict()


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database answers (503 otherwise); the same facts as /health come along."""
    services = request.app[SERVICES]
    database_ok = await services.db.ping()
    body: dict[str, Any] = {"status": "ok" if database_ok else "unavailable", "database": database_ok}
    if database_ok:
        details = await _health_details(services)
        if details is not None:
            body["details"] = details
    return web.json_response(body, status=200 if database_ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's metrics (health gauges refreshed first)."""
    services = request.app[SERVICES]
    if await services.db.ping():
        await _health_details(services)
    return web.Response(body=generate_latest(services.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(services: Services, route_adders: list[RouteAdder] | None = None) -> web.Application:
    """Build the web app; provider routes and the Telegram route are added by whoever owns them."""
    app = web.Application(client_max_size=services.settings.http_max_body_bytes)
    app[SERVICES] = services
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    for add_routes in route_adders or []:
        add_routes(app)
    return app


class WebServer:
    """Runs the app on HTTP_HOST:HTTP_PORT inside the main event loop (no second server)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=access_log, access_log_class=JsonAccessLogger)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        # Port 0 means "any free port" (tests); report the one we got.
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
