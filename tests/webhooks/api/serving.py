"""The API served in-process for tests: the app on a free port, one account with a balance, and a client holding
that account's key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from core.api import keys
from core.messaging.service import build_messaging_service
from core.models import User
from core.services import Services
from core.verification.service import build_verification_service
from webhooks.server import WebServer, create_app


@contextlib.asynccontextmanager
async def serve_api(services: Services, *, balance_cents: int) -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
    """Yields the key's client and the account's id; the services get real (sandbox) verification and messaging."""
    settings = services.settings
    services.verification = build_verification_service(settings, services.db, services.metrics, services.plan)
    services.messaging = build_messaging_service(settings, services.db, services.metrics, services.plan)
    server = WebServer(create_app(services), "127.0.0.1", 0)
    await server.start()
    async with services.db.transaction() as session:
        user = User(locale="en", balance_cents=balance_cents)
        session.add(user)
        await session.flush()
        key = await keys.create(session, user.id, "tests")
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=20,
                               headers={"Authorization": f"Bearer {key.secret}"})
    try:
        yield client, user.id
    finally:
        await client.aclose()
        await server.stop()
        await services.verification.close()
        await services.messaging.close()
