"""GET /api/v1/events: a WebSocket of this account's events, live; `?after=<event id>` first replays the stored
ones that came after it (events are kept 24 hours)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from core.api import events as api_events
from core.api.hub import EventHub
from webhooks.api import models
from webhooks.api.problems import ApiProblem
from webhooks.api.routing import API_STATE, _problem_for, authenticate

HUB = "hub"
HEARTBEAT_SECONDS = 30.0


async def events_socket(request: web.Request) -> web.StreamResponse:
    state = request.app[API_STATE]
    try:
        owner = await authenticate(request, state)
        try:
            query = models.EventsQuery.model_validate(dict(request.query))
        except ValidationError:
            raise ApiProblem(422, "invalid-query", "after: an event id (digits)") from None
        socket = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS)
        if not socket.can_prepare(request).ok:
            raise ApiProblem(400, "websocket-expected", "connect with a WebSocket client (Upgrade: websocket)")
    except Exception as error:
        return _problem_for(request, error).response()
    hub: EventHub = state.extras[HUB]
    await socket.prepare(request)
    async with hub.subscribe(owner.user_id) as subscription:
        replayed: set[int] = set()
        if query.after is not None:
            for event in await api_events.after(state.services.db, owner.user_id, int(query.after)):
                replayed.add(event.id)
                await socket.send_str(event.body())
        reader = asyncio.create_task(_drain(socket))
        overflow = asyncio.create_task(subscription.overflowed.wait())
        try:
            while not socket.closed:
                getter = asyncio.create_task(subscription.queue.get())
                done, _ = await asyncio.wait({getter, reader, overflow}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                event = getter.result()
                if event.id in replayed:
                    continue
                await socket.send_str(event.body())
        finally:
            for task in (reader, overflow):
                task.cancel()
            with contextlib.suppress(Exception):
                await socket.close(code=4000 if subscription.overflowed.is_set() else 1000,
                                   message=b"fell behind: reconnect with ?after=" if subscription.overflowed.is_set()
                                   else b"")
    return socket


async def _drain(socket: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends, so pings are answered and a close is noticed."""
    async for message in socket:
        if message.type == WSMsgType.TEXT and message.data == "ping":
            await socket.send_str(json.dumps({"type": "pong"}))
