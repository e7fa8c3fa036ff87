"""The integrator API end to end, over real HTTP and WebSocket clients against the whole application: a key from
the terminal chat, a verification bought twice with one Idempotency-Key (bought once), its code on the WebSocket
and at a webhook receiver that answered 500 the first time, an inbound SMS as message.received with ?after=
replay, another account's id, and a revoked key."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from sqlalchemy import func, select

from bot.app import Application
from bot.console import ConsoleFrontEnd
from core.api import keys
from core.api.delivery import verify
from core.models import Hold, LedgerEntry, User, Verification
from tests.conftest import make_settings

KEY = re.compile(r"cum_[A-Za-z0-9_-]{43}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """A webhook endpoint that answers 500 to the first delivery and 200 to the rest."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes, str]] = []
        self.arrived = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 500 if not self.calls else 200
        self.calls.append((status, body, request.headers.get("CumApp-Signature", "")))
        self.arrived.set()
        return web.Response(status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def wait_for(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Application]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'api.db'}", http_port=_free_port(), http_host="127.0.0.1",
        api_webhooks_allow_private=True, sandbox_code_delay_seconds=0.3, sandbox_sms_success_rate=1.0,
    )
    application = Application(settings, console=False)
    await application.start()
    try:
        yield application
    finally:
        await application.stop()


async def _say(console: ConsoleFrontEnd, out: io.StringIO, line: str) -> str:
    start = len(out.getvalue())
    await console.handle_line(line)
    return out.getvalue()[start:]


async def _next_event(ws: aiohttp.ClientWebSocketResponse, wanted: str, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, message
            event = json.loads(message.data)
            if event["type"] == wanted:
                return event


async def test_integrator_journey(running: Application) -> None:
    services = running.services
    assert services is not None and running.web is not None
    base = f"http://127.0.0.1:{running.web.port}"
    out = io.StringIO()
    console = ConsoleFrontEnd(services, out=out, lines=asyncio.Queue())
    await console.start()
    receiver = Receiver()
    await receiver.start()
    try:
        # A key from the chat, shown once in full.
        made = await _say(console, out, "/apikey new ci")
        key = KEY.search(made)
        assert key is not None, made
        listed = await _say(console, out, "/apikey")
        assert key.group()[:12] in listed and key.group() not in listed
        auth = {"Authorization": f"Bearer {key.group()}"}

        async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10) as api, aiohttp.ClientSession() as web_client:
            account = (await api.get("/api/v1/account")).json()
            assert account["available_cents"] == 500 and account["tier"] == "free"
            hook = await api.post("/api/v1/webhook-endpoints", json={"url": receiver.url})
            assert hook.status_code == 201, hook.text
            secret = hook.json()["secret"]
            ws = await web_client.ws_connect(f"{base}/api/v1/events", headers=auth)

            # The same Idempotency-Key twice, at once: one verification, one hold, the same answer.
            headers = {"Idempotency-Key": "order-1"}
            first, second = await asyncio.gather(
                api.post("/api/v1/verifications", json={"service": "whatsapp"}, headers=headers),
                api.post("/api/v1/verifications", json={"service": "whatsapp"}, headers=headers),
            )
            assert first.status_code == second.status_code == 201, (first.text, second.text)
            assert first.json()["id"] == second.json()["id"]
            bought = first.json()
            other_body = await api.post("/api/v1/verifications", json={"service": "telegram"}, headers=headers)
            assert other_body.status_code == 422
            assert other_body.headers["content-type"].startswith("application/problem+json")
            async with services.db.read() as session:
                assert await session.scalar(select(func.count()).select_from(Verification)) == 1
                assert await session.scalar(select(func.count()).select_from(Hold)) == 1
                holds = await session.scalar(select(func.count()).select_from(LedgerEntry).where(
                    LedgerEntry.kind == "hold"))
                assert holds == 1  # the /history entry of the purchase

            # Its code: on the WebSocket, and at the webhook receiver after its 500, with the same id.
            code_event = await _next_event(ws, "verification.code")
            assert code_event["data"]["verification_id"] == bought["id"] and code_event["data"]["code"]
            await receiver.wait_for(2)
            statuses = [status for status, _, _ in receiver.calls[:2]]
            assert statuses == [500, 200]
            for _, body, signature in receiver.calls[:2]:
                assert json.loads(body)["id"] == code_event["id"]
                assert verify(secret, body, signature)
            assert not verify("whsec_wrong", receiver.calls[1][1], receiver.calls[1][2])
            read = (await api.get(f"/api/v1/verifications/{bought['id']}")).json()
            assert read["code"] == code_event["data"]["code"] and read["state"] == "code_received"

            # An inbound SMS: buy a number, text a sandbox peer who answers questions.
            number = await api.post("/api/v1/numbers", json={"country": "US"}, headers={"Idempotency-Key": "n1"})
            assert number.status_code == 201, number.text
            sent = await api.post("/api/v1/messages", json={
                "from": number.json()["number"], "to": "+14155552671", "text": "Are you there?"})
            assert sent.status_code == 202, sent.text
            received = await _next_event(ws, "message.received")
            assert received["data"]["to"] == number.json()["number"]
            await ws.close()
            # ?after= replays what came after the code, the inbound SMS among it.
            replay_ws = await web_client.ws_connect(f"{base}/api/v1/events?after={code_event['id']}", headers=auth)
            replayed = await _next_event(replay_ws, "message.received", timeout=5)
            assert replayed == received
            await replay_ws.close()
            listed_messages = (await api.get("/api/v1/messages", params={"limit": 5})).json()["data"]
            assert {m["direction"] for m in listed_messages} == {"inbound", "outbound"}

            # Another account's id is not found; a revoked key is refused.
            async with services.db.transaction() as session:
                stranger = User(locale="en")
                session.add(stranger)
                await session.flush()
                stranger_key = await keys.create(session, stranger.id, "other")
            stranger_auth = {"Authorization": f"Bearer {stranger_key.secret}"}
            other = await api.get(f"/api/v1/verifications/{bought['id']}", headers=stranger_auth)
            assert other.status_code == 404
            assert other.json()["status"] == 404
            # An admin (the terminal is the operator's own keyboard) sees the stranger's key and revokes it.
            card = await _say(console, out, f"/user #{stranger.id}")
            assert stranger_key.prefix in card and stranger_key.secret not in card
            revoke = next(n for n, b in console.chat.choices.items() if (b.action or "").startswith("admkey:"))
            assert "revoked" in await _say(console, out, str(revoke))
            assert (await api.get("/api/v1/account", headers=stranger_auth)).status_code == 401
            revoked = await _say(console, out, f"/apikey revoke {key.group()[:12]}")
            assert "revoked" in revoked
            refused = await api.get("/api/v1/account")
            assert refused.status_code == 401
            assert refused.headers["content-type"].startswith("application/problem+json")
    finally:
        await console.stop()
        if receiver.runner is not None:
            await receiver.runner.cleanup()
