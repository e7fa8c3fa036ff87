"""Number renewals on both engines: one ledger entry per number and period, whoever runs the renewal and however
often; on PostgreSQL two instances racing (the job twice at once, Renew now pressed twice at once) charge once."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from core.messaging.gateway import SmsGateway
from core.messaging.numbers import NUMBER_PERIOD
from core.messaging.renewals import GRACE, NumberRenewals, period_id, renewal_key
from core.models import LedgerEntry, OutboxDelivery, PhoneNumber
from core.money import ledger
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.metrics import Metrics
from tests.conftest import make_settings
from tests.core.messaging.test_service import balance, give_number, new_user

PRICE = 150  # give_number's monthly price


def _renewals(db: Database) -> NumberRenewals:
    # No provider is configured here: an unpaid number is released in the database only (the journey covers Twilio).
    return NumberRenewals(db, SmsGateway({}, make_settings(db.url), Metrics()))


async def _number_due(db: Database, user_id: int, e164: str, renews_at: datetime) -> PhoneNumber:
    number = await give_number(db, user_id, e164)
    async with db.transaction() as session:
        await session.execute(update(PhoneNumber).where(PhoneNumber.id == number.id).values(renews_at=renews_at))
    number.renews_at = renews_at
    return number


async def _renewal_entries(db: Database, number_id: int) -> list[str]:
    async with db.read() as session:
        return list((await session.scalars(
            select(LedgerEntry.idempotency_key)
            .where(LedgerEntry.kind == "renewal", LedgerEntry.idempotency_key.like(f"renewal:{number_id}:%"))
            .order_by(LedgerEntry.id)
        )).all())


async def _renews_at(db: Database, number_id: int) -> datetime | None:
    async with db.read() as session:
        return await session.scalar(select(PhoneNumber.renews_at).where(PhoneNumber.id == number_id))


async def test_a_period_is_charged_once_however_often_it_is_renewed(db: Database) -> None:
    renewals = _renewals(db)
    ann = await new_user(db, "7001", cents=1000)
    start = utcnow().replace(microsecond=0) - timedelta(minutes=1)
    number = await _number_due(db, ann.id, "+14155550161", start)

    first = await renewals.run(start + timedelta(minutes=2))
    again = await renewals.run(start + timedelta(minutes=3))
    assert (first.renewed, again.renewed) == (1, 0)
    assert await _renewal_entries(db, number.id) == [renewal_key(number.id, start)]
    assert await _renews_at(db, number.id) == start + NUMBER_PERIOD
    assert (await balance(db, ann.id)).available_cents == 1000 - PRICE

    # Renew now for the period just paid (a stale button) charges nothing; for the next one, once.
    stale = await renewals.renew_now(ann.id, number.id, period_id(start))
    assert not stale.renewed
    pressed = [await renewals.renew_now(ann.id, number.id, period_id(start + NUMBER_PERIOD)) for _ in range(2)]
    assert [p.renewed for p in pressed] == [True, False]
    assert len(await _renewal_entries(db, number.id)) == 2
    assert (await balance(db, ann.id)).available_cents == 1000 - 2 * PRICE

    # The ledger key holds on its own: a period whose date were somehow moved back is not paid twice.
    async with db.transaction() as session:
        await session.execute(update(PhoneNumber).where(PhoneNumber.id == number.id).values(renews_at=start))
    with pytest.raises(ledger.LedgerError):
        await renewals._charge(number.id, start)
    assert await _renews_at(db, number.id) == start
    assert len(await _renewal_entries(db, number.id)) == 2


async def test_a_number_behind_by_several_periods_catches_up_and_an_unpaid_one_goes(db: Database) -> None:
    renewals = _renewals(db)
    bea = await new_user(db, "7002", cents=1000)
    cid = await new_user(db, "7003", cents=100)
    now = utcnow().replace(microsecond=0)
    behind = await _number_due(db, bea.id, "+14155550162", now - 2 * NUMBER_PERIOD - timedelta(hours=1))
    unpaid = await _number_due(db, cid.id, "+14155550163", now - GRACE - timedelta(minutes=1))

    run = await renewals.run(now)
    assert (run.renewed, run.unpaid, run.released) == (3, 1, 1)
    assert await _renews_at(db, behind.id) == behind.renews_at + 3 * NUMBER_PERIOD
    async with db.read() as session:
        gone = await session.get(PhoneNumber, unpaid.id)
        assert gone is not None and gone.state == "released" and gone.release_started_at is not None
        told = await session.scalar(select(func.count()).select_from(OutboxDelivery).where(
            OutboxDelivery.dedupe_key.like(f"renewal-released:{unpaid.id}:%")))
    assert told == 1
    assert (await balance(db, cid.id)).available_cents == 100  # nothing was taken for the month not paid


@pytest.mark.postgres_only
async def test_two_instances_racing_charge_each_period_once(db: Database) -> None:
    """Two processes (two engines, two pools) run the job at the same moment, then Renew now is pressed twice at
    once on each: every number and period is one ledger entry and one price off the balance."""
    other = Database(db.url)
    try:
        instances = [_renewals(db), _renewals(other)]
        dee = await new_user(db, "7004", cents=10_000)
        start = utcnow().replace(microsecond=0) - timedelta(minutes=1)
        numbers = [await _number_due(db, dee.id, f"+1415555017{i}", start) for i in range(4)]

        runs = await asyncio.gather(*(r.run(start + timedelta(minutes=1)) for r in instances * 2))
        assert sum(r.renewed for r in runs) == len(numbers)

        # Each number's screen now offers the next period: pressed twice on each instance, all at once.
        shown = period_id(start + NUMBER_PERIOD)
        presses = await asyncio.gather(
            *(r.renew_now(dee.id, n.id, shown) for n in numbers for r in instances * 2)
        )
        assert sum(p.renewed for p in presses) == len(numbers)

        for number in numbers:
            assert await _renewal_entries(db, number.id) == [
                renewal_key(number.id, start), renewal_key(number.id, start + NUMBER_PERIOD),
            ]
            assert await _renews_at(db, number.id) == start + 2 * NUMBER_PERIOD
        assert (await balance(db, dee.id)).available_cents == 10_000 - 2 * len(numbers) * PRICE
    finally:
        await other.dispose()
