"""The aiohttp app factory: health, readiness, metrics, provider webhooks and the Telegram webhook route."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.admin.health import refresh_gauges
from core.platform import db_faults
from core.services import Services
from core.version import __version__
from webhooks.api import add_routes as add_api_routes
from webhooks.limits import LINGER_SECONDS, LISTEN_BACKLOG, ConnectionGuard, ConnectionLimits, ServerLog
from webhooks.miniapp import add_routes as add_miniapp_routes

SERVICES = web.AppKey("services", Services)
GUARD = web.AppKey("connection_guard", ConnectionGuard)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteAdder = Callable[[web.Application], None]

access_log = logging.getLogger("cumapp.access")
log = logging.getLogger(__name__)


class AccessLogger(AbstractAccessLogger):
    """One line per request. Its fields are the record's own, so with LOG_FORMAT=json they are fields of the line's
    JSON object (not a JSON string inside it), and the line is encoded once."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        duration_ms = round(time * 1000, 2)
        self.logger.info(
            "%s %s %s %s ms", request.method, request.path, response.status, duration_ms,
            extra={"remote": request.remote, "method": request.method, "path": request.path,
                   "status": response.status, "bytes": response.body_length, "duration_ms": duration_ms},
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


def _has_metrics_token(request: web.Request) -> bool:
    """True when METRICS_TOKEN is unset, or the request carries it as `Authorization: Bearer <token>`."""
    token = request.app[SERVICES].settings.metrics_token
    if token is None or not token.get_secret_value():
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)


def _unauthorized(request: web.Request) -> web.Response:
    log.warning("%s refused from %s: missing or wrong METRICS_TOKEN", request.path, request.remote)
    return web.Response(status=401, text="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database answers (503 otherwise). The same facts as /health come along, only with
    METRICS_TOKEN when one is set: the status code stays public for load balancers, the details do not."""
    services = request.app[SERVICES]
    database_ok = await services.db.ping()
    body: dict[str, Any] = {"status": "ok" if database_ok else "unavailable", "database": database_ok}
    if database_ok and _has_metrics_token(request):
        details = await _health_details(services)
        if details is not None:
            body["details"] = details
    return web.json_response(body, status=200 if database_ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's metrics (health gauges refreshed first)."""
    if not _has_metrics_token(request):
        return _unauthorized(request)
    services = request.app[SERVICES]
    if await services.db.ping():
        await _health_details(services)
    return web.Response(body=generate_latest(services.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def database_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """PostgreSQL stopped or restarting: 503 with Retry-After, so the provider retries and nothing answered 200 is
    lost; a WARNING without a traceback, since an outage is not a defect of ours."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as error:
        if not db_faults.database_unavailable(error):
            raise
        log.warning("%s %s answered 503: the database is unavailable (%s)", request.method, request.path,
                    db_faults.describe(error))
        return web.Response(status=503, text="temporarily unavailable", headers={"Retry-After": "5"})


def _base_app(services: Services) -> web.Application:
    """An app with the connection limits and /healthz, which every address serves."""
    webhooks_total = services.metrics.webhooks

    def count(provider: str, outcome: str) -> None:
        webhooks_total.labels(provider, outcome).inc()

    guard = ConnectionGuard(ConnectionLimits.from_settings(services.settings), count)
    app = web.Application(
        client_max_size=services.settings.http_max_body_bytes, middlewares=[guard.middleware, database_unavailable]
    )
    app[SERVICES] = services
    app[GUARD] = guard
    app.router.add_get("/healthz", healthz)
    return app


def _add_operations_routes(app: web.Application) -> None:
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


def create_operations_app(services: Services) -> web.Application:
    """What METRICS_HOST:METRICS_PORT serves: /healthz, /readyz and /metrics."""
    app = _base_app(services)
    _add_operations_routes(app)
    return app


def create_app(services: Services, route_adders: list[RouteAdder] | None = None) -> web.Application:
    """Build the web app; provider routes and the Telegram route are added by whoever owns them. /readyz and
    /metrics are served here unless METRICS_PORT gives them an address of their own."""
    app = _base_app(services)
    if services.settings.metrics_port is None:
        _add_operations_routes(app)
    add_api_routes(app, services)  # the integrator API: /api/v1, /api/docs
    add_miniapp_routes(app)  # the Mini App: /app, signed in by a session the API also accepts
    for add_routes in route_adders or []:
        add_routes(app)
    return app


class _GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through the app's ConnectionGuard before aiohttp sees them."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner, backlog=LISTEN_BACKLOG)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.protocol_factory(server), self._host, self._port, backlog=self._backlog
        )
        if self._server.sockets:
            # Port 0 means "any free port" (tests); report the one we got.
            self._port = int(self._server.sockets[0].getsockname()[1])


async def _serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    limits = app[GUARD].limits
    runner = web.AppRunner(
        app, access_log=access_log, access_log_class=AccessLogger, logger=ServerLog(),
        keepalive_timeout=limits.keepalive, lingering_time=min(LINGER_SECONDS, limits.body_timeout),
    )
    await runner.setup()
    site = _GuardedSite(runner, host, port, app[GUARD])
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site.port


class ListenError(OSError):
    """The server cannot listen where the settings say (the port is taken, the address is not this machine's)."""

    def __init__(self, host_setting: str, port_setting: str, host: str, port: int, error: OSError) -> None:
        self.reason = os.strerror(error.errno).lower() if error.errno else str(error)
        super().__init__(error.errno, f"cannot listen on {host}:{port}: {self.reason}")
        self.host_setting, self.port_setting = host_setting, port_setting
        self.host, self.port = host, port


class WebServer:
    """Runs the app on HTTP_HOST:HTTP_PORT inside the main event loop, and /readyz and /metrics on
    METRICS_HOST:METRICS_PORT when that is set."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        settings = app[SERVICES].settings
        self.metrics_host = settings.metrics_host
        self.metrics_port = settings.metrics_port
        self._runners: list[web.AppRunner] = []

    @property
    def guard(self) -> ConnectionGuard:
        return self.app[GUARD]

    async def start(self) -> None:
        try:
            runner, self.port = await _serve(self.app, self.host, self.port)
        except OSError as error:
            raise ListenError("HTTP_HOST", "HTTP_PORT", self.host, self.port, error) from error
        self._runners.append(runner)
        if self.metrics_port is not None:
            try:
                operations = create_operations_app(self.app[SERVICES])
                runner, self.metrics_port = await _serve(operations, self.metrics_host, self.metrics_port)
            except BaseException as error:
                await self.stop()
                if isinstance(error, OSError):
                    raise ListenError("METRICS_HOST", "METRICS_PORT", self.metrics_host, self.metrics_port,
                                      error) from error
                raise
            self._runners.append(runner)

    async def stop(self) -> None:
        while self._runners:
            await self._runners.pop().cleanup()
