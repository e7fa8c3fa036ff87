"""Rentals over the API: Renew now pays a period once however often it is called, a balance that does not cover it
is a 402 that charges nothing, Auto-renew off is kept, and another account's number is not found."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from core.api import keys
from core.models import LedgerEntry, PhoneNumber, User
from core.platform.clock import utcnow
from core.services import Services
from tests.webhooks.api.serving import serve_api


@pytest.fixture
async def api(services: Services) -> AsyncIterator[tuple[httpx.AsyncClient, Services, int]]:
    async with serve_api(services, balance_cents=5000) as (client, user_id):
        yield client, services, user_id


async def _renewals(services: Services, user_id: int) -> list[int]:
    async with services.db.read() as session:
        return list((await session.scalars(select(LedgerEntry.amount_cents).where(
            LedgerEntry.user_id == user_id, LedgerEntry.kind == "renewal"))).all())


async def _available(client: httpx.AsyncClient) -> int:
    return int((await client.get("/api/v1/account")).json()["available_cents"])


async def test_renew_now_pays_once_and_auto_renew_is_kept(api: tuple[httpx.AsyncClient, Services, int]) -> None:
    client, services, user_id = api
    bought = await client.post("/api/v1/numbers", json={"country": "US"})
    assert bought.status_code == 201, bought.text
    number = bought.json()
    assert number["auto_renew"] is True and number["renews_at"]
    listed = (await client.get("/api/v1/numbers")).json()["data"]
    assert [(n["id"], n["renews_at"], n["auto_renew"]) for n in listed] == [
        (number["id"], number["renews_at"], True)]
    before = await _available(client)

    # Renew now twice for the period the number showed: one charge, the same answer.
    body = {"renews_at": number["renews_at"]}
    first = await client.post(f"/api/v1/numbers/{number['id']}/renew", json=body)
    second = await client.post(f"/api/v1/numbers/{number['id']}/renew", json=body)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json() == second.json()
    assert first.json()["renews_at"] > number["renews_at"]
    price = number["monthly_price_cents"]
    assert await _renewals(services, user_id) == [-price]
    assert await _available(client) == before - price
    # The next period is more than a month ahead: refused, nothing charged.
    early = await client.post(f"/api/v1/numbers/{number['id']}/renew")
    assert early.status_code == 409 and early.headers["content-type"].startswith("application/problem+json")

    # Unpaid in its grace with an empty balance: 402, nothing charged, the date unchanged.
    due = utcnow() - timedelta(days=1)
    async with services.db.transaction() as session:
        await session.execute(update(PhoneNumber).where(PhoneNumber.id == int(number["id"])).values(renews_at=due))
        await session.execute(update(User).where(User.id == user_id).values(balance_cents=0))
    broke = await client.post(f"/api/v1/numbers/{number['id']}/renew")
    assert broke.status_code == 402, broke.text
    assert broke.json()["type"].endswith("/insufficient-funds")
    assert len(await _renewals(services, user_id)) == 1

    # Auto-renew off is kept; a wrong body is refused.
    off = await client.patch(f"/api/v1/numbers/{number['id']}", json={"auto_renew": False})
    assert off.status_code == 200 and off.json()["auto_renew"] is False, off.text
    assert (await client.get("/api/v1/numbers")).json()["data"][0]["auto_renew"] is False
    async with services.db.read() as session:
        assert await session.scalar(select(PhoneNumber.auto_renew).where(PhoneNumber.id == int(number["id"]))) is False
    wrong = await client.patch(f"/api/v1/numbers/{number['id']}", json={"auto_renew": "no"})
    assert wrong.status_code == 422

    # Another account's number: not found, and untouched.
    async with services.db.transaction() as session:
        stranger = User(locale="en", balance_cents=5000)
        session.add(stranger)
        await session.flush()
        stranger_key = await keys.create(session, stranger.id, "other")
    other = {"Authorization": f"Bearer {stranger_key.secret}"}
    assert (await client.post(f"/api/v1/numbers/{number['id']}/renew", headers=other)).status_code == 404
    assert (await client.patch(f"/api/v1/numbers/{number['id']}", json={"auto_renew": True},
                               headers=other)).status_code == 404
    async with services.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(LedgerEntry).where(
            LedgerEntry.user_id == stranger.id)) == 0
        assert await session.scalar(select(PhoneNumber.auto_renew).where(PhoneNumber.id == int(number["id"]))) is False
