"""The Bot API transport honours HTTPS_PROXY/HTTP_PROXY and NO_PROXY, as python-telegram-bot's httpx request did."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from telegram.request import RequestData
from telegram.request._requestparameter import RequestParameter

from bot.telegram_transport import AiohttpRequest

ANSWER = {"ok": True, "result": {"id": 1, "is_bot": True, "first_name": "Bot", "username": "bot"}}


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[TestServer, list[str]]]:
    """A forward proxy for plain HTTP: it sees the absolute URL of each request and answers for the origin."""
    seen: list[str] = []

    async def forward(request: web.Request) -> web.Response:
        seen.append(str(request.url) if request.raw_path.startswith("http") else request.raw_path)
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, seen
    finally:
        await server.close()


async def _post(url: str) -> dict[str, object]:
    request = AiohttpRequest()
    await request.initialize()
    try:
        data = RequestData([RequestParameter("chat_id", 5, None)])
        status, body = await request.do_request(url, "POST", request_data=data)
    finally:
        await request.shutdown()
    assert status == 200
    return json.loads(body)


async def test_requests_go_through_the_proxy_of_the_environment(
    proxy: tuple[TestServer, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    answer = await _post("http://bot-api.invalid/botTOKEN/sendMessage")
    assert answer == ANSWER
    assert seen == ["http://bot-api.invalid/botTOKEN/sendMessage"]  # the proxy, not the unresolvable host


async def test_no_proxy_reaches_the_host_directly(
    proxy: tuple[TestServer, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there: used, it would fail
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    answer = await _post(f"http://127.0.0.1:{server.port}/botTOKEN/sendMessage")
    assert answer == ANSWER
    assert seen == ["/botTOKEN/sendMessage"]
