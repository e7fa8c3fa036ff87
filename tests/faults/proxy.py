"""A fault-injecting HTTP proxy in front of the fake Bot API: Telegram answering 5xx, timing out, or holding.

Each `cumapp run` process gets its own proxy (its TELEGRAM_API_BASE_URL), so a test can make Telegram fail for
one process, for all, or hold one process's sends in flight while it is killed. A request the proxy did not
forward never reached "Telegram": when its client goes away (a timeout, a killed process) it is dropped, as a
packet lost on the way would be. What it forwards reaches the fake Bot API unchanged.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket

import aiohttp
from aiohttp import web

PASS = "pass"
ERROR = "error"  # answer 500/502/503/504 at once, as Telegram's front does during an outage
HANG = "hang"  # never answer: the client's timeout fires (the request is dropped)
HOLD = "hold"  # keep the request until the mode changes, then forward it if its client is still there

_ERROR_STATUSES = (500, 502, 503, 504)


class FaultProxy:
    """Forwards `/bot<token>/<method>` to `upstream`; `mode` says what happens to each request meanwhile."""

    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = PASS
        self.forwarded = 0
        self.failed = 0  # answered with an injected 5xx
        self.dropped = 0  # held or hung until the client gave up
        self.held = 0  # waiting right now
        self.in_flight = 0  # forwarded, the fake's answer not back yet
        self._random = random.Random(seed)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port: int | None = None

    @property
    def base_url(self) -> str:
        """For TELEGRAM_API_BASE_URL."""
        return f"http://127.0.0.1:{self._port}/bot"

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def start(self) -> FaultProxy:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        self.set_mode(PASS)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except ConnectionResetError:  # the client died mid-request (a killed process)
            self.dropped += 1
            return web.Response(status=504)
        while self.mode in (HANG, HOLD):
            self.held += 1
            try:
                changed = self._changed
                while self._changed is changed and request.transport is not None:
                    try:
                        await asyncio.wait_for(changed.wait(), 0.05)
                    except TimeoutError:
                        pass
            finally:
                self.held -= 1
            if request.transport is None:
                # The client gave up or died: this request never reaches Telegram.
                self.dropped += 1
                return web.Response(status=504)
        if self.mode == ERROR:
            self.failed += 1
            status = self._random.choice(_ERROR_STATUSES)
            text = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
                    504: "Gateway Timeout"}[status]
            return web.Response(status=status, text=json.dumps({"ok": False, "error_code": status, "description": text}),
                                content_type="application/json")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type",)}
        self.in_flight += 1
        try:
            async with self._session.request(
                request.method, f"{self.upstream}{request.path_qs}", data=body, headers=headers
            ) as upstream:
                payload = await upstream.read()
                self.forwarded += 1
                return web.Response(status=upstream.status, body=payload,
                                    content_type=upstream.content_type or "application/json")
        finally:
            self.in_flight -= 1

