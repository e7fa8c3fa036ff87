"""Property-based conformance: schemathesis generates requests from the OpenAPI document (the one the server
serves) and sends them to `cumapp run` running as its own process; no answer may be a 5xx, and every answer must
match the document (status code, content type, headers, body schema)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import checks as st_checks

from core.api import keys
from core.models import User
from core.platform.db import Database
from webhooks.api.openapi import document

ROOT = Path(__file__).resolve().parents[3]
schema = schemathesis.openapi.from_dict(document())
CHECKS = [
    st_checks.not_a_server_error, st_checks.status_code_conformance, st_checks.content_type_conformance,
    st_checks.response_headers_conformance, st_checks.response_schema_conformance,
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _make_key(database_url: str) -> str:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            user = User(locale="en", balance_cents=2000)
            session.add(user)
            await session.flush()
            return (await keys.create(session, user.id, "schemathesis")).secret
    finally:
        await db.dispose()


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`cumapp run` in sandbox on a free port, and a key of an account in it."""
    folder = tmp_path_factory.mktemp("conformance")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM", "DISCORD", "TWILIO", "GROQ"))}
    env.update({"HTTP_PORT": str(port), "HTTP_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT),
                "API_RATE_PER_SECOND": "10000", "API_RATE_BURST": "10000", "API_WEBHOOKS_ALLOW_PRIVATE": "false",
                "LOG_LEVEL": "WARNING"})
    process = subprocess.Popen([sys.executable, "-m", "bot.cli", "run", "--no-console"], cwd=folder, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        secret = asyncio.run(_make_key(f"sqlite+aiosqlite:///{folder / 'cumapp.db'}"))
        yield base, secret
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr
    assert " ERROR " not in stderr and '"level": "ERROR"' not in stderr, stderr


def test_the_served_document_is_the_generated_one(live_api: tuple[str, str]) -> None:
    base, _ = live_api
    served = httpx.get(base + "/api/v1/openapi.json").json()
    assert served == document() and served["openapi"] == "3.1.0"
    page = httpx.get(base + "/api/docs")
    assert page.status_code == 200 and "openapi.json" in page.text and "https://" not in page.text.split("<script")[0]


@schema.parametrize()
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
def test_api_conforms_to_its_document(case: schemathesis.Case, live_api: tuple[str, str]) -> None:
    base, secret = live_api
    case.call_and_validate(base_url=base, headers={"Authorization": f"Bearer {secret}"}, checks=CHECKS)
