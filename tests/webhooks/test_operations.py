"""Operations endpoints: /readyz and /metrics on their own address (METRICS_PORT) or behind METRICS_TOKEN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from core.platform.db import Database
from core.platform.settings import Settings, SettingsError, load_settings
from core.services import build_services
from tests.conftest import make_settings
from webhooks.server import WebServer, create_app

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-for-tests"


async def _get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, await response.text()


async def _serve(db: Database, **settings: Any) -> WebServer:
    services = build_services(make_settings(db.url, **settings), db=db)
    server = WebServer(create_app(services), "127.0.0.1", 0)
    await server.start()
    return server


async def test_metrics_port_moves_readyz_and_metrics_off_the_public_port(db: Database) -> None:
    server = await _serve(db, metrics_port=0)  # 0: any free port
    try:
        assert server.metrics_port and server.metrics_port != server.port
        public, private = f"http://127.0.0.1:{server.port}", f"http://127.0.0.1:{server.metrics_port}"
        assert (await _get(f"{public}/healthz"))[0] == 200
        assert (await _get(f"{public}/metrics"))[0] == 404
        assert (await _get(f"{public}/readyz"))[0] == 404
        status, text = await _get(f"{private}/metrics")
        assert status == 200 and "cumapp_webhooks_total" in text
        assert (await _get(f"{private}/readyz"))[0] == 200
        assert (await _get(f"{private}/healthz"))[0] == 200
    finally:
        await server.stop()


async def test_without_metrics_port_everything_stays_on_the_public_port(db: Database) -> None:
    server = await _serve(db)
    try:
        assert server.metrics_port is None
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await _get(f"http://127.0.0.1:{server.port}{path}"))[0] == 200
    finally:
        await server.stop()


async def test_metrics_token_guards_metrics_and_readyz_details(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    server = await _serve(db, metrics_token=TOKEN)
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert (await _get(f"{base}/metrics"))[0] == 401
        assert (await _get(f"{base}/metrics", "wrong"))[0] == 401
        status, text = await _get(f"{base}/metrics", TOKEN)
        assert status == 200 and "cumapp_webhooks_total" in text
        # Load balancers keep the answer (200 or 503); the details (balances, error ratios, outbox) need the token.
        status, text = await _get(f"{base}/readyz")
        assert status == 200 and '"details"' not in text
        status, text = await _get(f"{base}/readyz", TOKEN)
        assert status == 200 and '"details"' in text
        status, text = await _get(f"{base}/healthz")
        assert status == 200 and '"status": "ok"' in text
    finally:
        await server.stop()
    assert TOKEN not in caplog.text
    assert any("METRICS_TOKEN" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_metrics_port_must_differ_from_the_http_port() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(_env_file=None, http_port=8080, metrics_port=8080)
    assert any("METRICS_PORT" in line for line in error.value.lines)


def test_compose_keeps_readyz_and_metrics_off_the_published_port() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    app = compose["services"]["app"]
    environment = app["environment"]
    metrics_port = int(environment["METRICS_PORT"])
    http_port = int(environment.get("HTTP_PORT", Settings(_env_file=None).http_port))  # type: ignore[call-arg]
    assert metrics_port != http_port
    # Only the TLS proxy publishes ports; the app's HTTP and metrics ports stay inside the compose network.
    assert "ports" not in app
    published = " ".join(str(p) for s in compose["services"].values() for p in s.get("ports", []))
    assert str(metrics_port) not in published and str(http_port) not in published
    assert "443" in published
    assert "/healthz" in " ".join(app["healthcheck"]["test"])
