"""Idempotency under concurrency: retries with one Idempotency-Key that race each other buy and send once, on
PostgreSQL's row locks as on SQLite's single writer; events and keys at the edges (prune, rate limit)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select

from core.api import events as api_events
from core.api.ratelimit import KeyRateLimiter
from core.models import ApiEvent, Hold, Message, User, Verification
from core.platform.clock import utcnow
from core.services import Services
from tests.webhooks.api.serving import serve_api


@pytest.fixture
async def api(services: Services) -> AsyncIterator[tuple[httpx.AsyncClient, Services, int]]:
    async with serve_api(services, balance_cents=1000) as (client, user_id):
        yield client, services, user_id


async def _count(services: Services, model: type, *where: object) -> int:
    async with services.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_racing_retries_buy_and_send_once(api: tuple[httpx.AsyncClient, Services, int]) -> None:
    client, services, user_id = api
    body = {"service": "whatsapp"}
    answers = await asyncio.gather(*(
        client.post("/api/v1/verifications", json=body, headers={"Idempotency-Key": "race-1"}) for _ in range(6)
    ))
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 5
    assert await _count(services, Verification) == 1
    assert await _count(services, Hold, Hold.purpose == "verification") == 1

    number = await client.post("/api/v1/numbers", json={"country": "US"}, headers={"Idempotency-Key": "num-1"})
    assert number.status_code == 201, number.text
    again = await client.post("/api/v1/numbers", json={"country": "US"}, headers={"Idempotency-Key": "num-1"})
    assert again.json() == number.json()
    sms = {"from": number.json()["number"], "to": "+14155552671", "text": "hello"}
    sent = await asyncio.gather(*(
        client.post("/api/v1/messages", json=sms, headers={"Idempotency-Key": "sms-1"}) for _ in range(5)
    ))
    assert {s.status_code for s in sent} == {202}, [s.text for s in sent]
    assert len({s.json()["id"] for s in sent}) == 1
    assert await _count(services, Message, Message.direction == "outbound") == 1
    other = await client.post("/api/v1/messages", json={**sms, "text": "another"}, headers={"Idempotency-Key": "sms-1"})
    assert other.status_code == 422 and other.json()["type"].endswith("idempotency-key-reused")


async def test_events_are_pruned_after_a_day(services: Services) -> None:
    async with services.db.transaction() as session:
        user = User(locale="en")
        session.add(user)
        await session.flush()
        old = await api_events.record(session, user.id, "message.status", {"message_id": "1", "state": "sent"})
        fresh = await api_events.record(session, user.id, "message.status", {"message_id": "1", "state": "delivered"})
    assert old is not None and fresh is not None
    async with services.db.transaction() as session:
        row = await session.get(ApiEvent, old.id)
        assert row is not None
        row.created_at = utcnow() - timedelta(hours=25)
    assert await api_events.prune(services.db) == 1
    assert [e.id for e in await api_events.after(services.db, user.id, 0)] == [fresh.id]


def test_rate_limit_per_key_says_when_to_retry() -> None:
    limiter = KeyRateLimiter(rate=2, burst=2)
    assert limiter.take(1, now=0) == 0 and limiter.take(1, now=0) == 0
    wait = limiter.take(1, now=0)
    assert wait == pytest.approx(0.5) and KeyRateLimiter.retry_after_header(wait) == "1"
    assert limiter.take(2, now=0) == 0  # another key has its own budget
    assert limiter.take(1, now=0.5) == 0


@pytest.mark.postgres_only
async def test_an_event_committed_by_another_instance_reaches_this_ones_sockets(services: Services) -> None:
    from core.api.hub import EventHub
    from core.platform.db import Database

    hub = EventHub(services.db)
    await hub.start()
    other_instance = Database(services.db.url)
    try:
        async with services.db.transaction() as session:
            user = User(locale="en")
            session.add(user)
            await session.flush()
        async with hub.subscribe(user.id) as subscription:
            async with other_instance.transaction() as session:
                written = await api_events.record(session, user.id, "message.status", {"message_id": "7"})
            assert written is not None
            got = await asyncio.wait_for(subscription.queue.get(), 5)
        assert got.id == written.id and got.data == {"message_id": "7"}
    finally:
        await other_instance.dispose()
        await hub.stop()


async def test_an_event_queues_one_signed_delivery_per_live_endpoint(services: Services) -> None:
    from core.api.endpoints import Endpoints
    from core.models import OutboxDelivery

    endpoints = Endpoints(services.db, allow_private=True)
    async with services.db.transaction() as session:
        user = User(locale="en")
        session.add(user)
        await session.flush()
    kept = await endpoints.create(user.id, "http://127.0.0.1:9/kept")
    gone = await endpoints.create(user.id, "http://127.0.0.1:9/gone")
    assert await endpoints.delete(user.id, gone.id) and not await endpoints.delete(user.id + 1, kept.id)
    async with services.db.transaction() as session:
        event = await api_events.record(session, user.id, "message.status", {"message_id": "9"}, dedupe_key="k")
        again = await api_events.record(session, user.id, "message.status", {"message_id": "9"}, dedupe_key="k")
    assert event is not None and again is None
    async with services.db.read() as session:
        rows = (await session.scalars(select(OutboxDelivery).where(OutboxDelivery.platform == "webhook"))).all()
    assert [(row.chat_id, row.payload["text"]) for row in rows] == [(str(kept.id), event.body())]
