"""Rentals: each owned number renews monthly from the balance, once per period; the owner hears three days ahead
when the balance will not cover it; an unpaid number is kept GRACE, then released at the provider.

A period is paid by one ledger entry whose key names the number and the period's start
(`renewal:<number id>:<unix seconds>`), written in the transaction that moves `renews_at` on by a conditional
UPDATE: a renewal repeated, raced by another instance, or pressed twice charges once. An unpaid number's release
is marked (`release_started_at`) before the provider is asked, and a renewal requires that mark unset, so a number
is never both renewed and released.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.messaging.errors import MessagingError
from core.messaging.gateway import SmsGateway
from core.messaging.numbers import NUMBER_PERIOD, owned_active_number
from core.messaging.relay import display_number
from core.models import PhoneNumber, User
from core.money import ledger
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.db_faults import describe
from core.platform.i18n import money, t
from core.platform.phone import mask_number
from core.providers.sms import SmsProviderError

log = logging.getLogger(__name__)

GRACE = timedelta(days=7)  # an unpaid number is kept this long after its renewal date, then released
NOTICE_AHEAD = timedelta(days=3)  # how long before a renewal the owner hears that the balance will not cover it
CATCH_UP = 12  # periods one run renews at most for a number (after a long outage of every instance)
JOB_SECONDS = 300.0


def period_id(period_start: datetime) -> int:
    """A renewal period as buttons and ledger keys name it: its start in whole Unix seconds."""
    return int(period_start.timestamp())


def renewal_key(number_id: int, period_start: datetime) -> str:
    return f"renewal:{number_id}:{period_id(period_start)}"


def release_date(number: PhoneNumber) -> datetime | None:
    """When an unpaid number goes: its renewal date plus the grace."""
    return number.renews_at + GRACE if number.renews_at is not None else None


@dataclass(frozen=True)
class RenewOutcome:
    """What Renew now did: `renewed` is False when this period was already paid (a second press)."""

    renewed: bool
    number: PhoneNumber


@dataclass(frozen=True)
class RenewalRun:
    """What one run of the job did, for logs and tests."""

    renewed: int = 0
    unpaid: int = 0
    told: int = 0
    released: int = 0


class NumberRenewals:
    """Monthly renewal of owned numbers: the job, Renew now, and the Auto-renew switch."""

    def __init__(self, db: Database, gateway: SmsGateway) -> None:
        self.db = db
        self.gateway = gateway

    def start_jobs(self, scheduler: Any) -> None:
        """Register the job with the database-leased scheduler (one instance runs it at a time)."""

        async def renew() -> None:
            await self.run()

        scheduler.add_periodic("number-renewals", renew, JOB_SECONDS)

    # --- the owner's buttons ---------------------------------------------------------------------------------

    async def _owned(self, user_id: int, number_id: int) -> PhoneNumber:
        return await owned_active_number(self.db, user_id, number_id)

    async def renew_now(self, user_id: int, number_id: int, period: int, now: datetime | None = None) -> RenewOutcome:
        """Pay the period starting at the number's renewal date, which `period` (period_id) names, as the button
        showed it: pressed twice, or after the job renewed, it charges nothing and says so. At most one month is
        paid ahead; an unpaid number in its grace can still be renewed."""
        now = now or utcnow()
        number = await self._owned(user_id, number_id)
        shown = display_number(number.e164)
        if number.release_started_at is not None:
            raise MessagingError("num_renew_releasing", number=shown)
        if number.renews_at is None:
            raise MessagingError("num_renew_no_date", number=shown)
        if period_id(number.renews_at) != period:
            return RenewOutcome(False, number)  # the period the button named is paid already
        if number.renews_at - now > NUMBER_PERIOD:
            raise MessagingError("num_renew_too_early", number=shown, renews=number.renews_at.strftime("%Y-%m-%d"))
        renewed = await self._charge(number.id, number.renews_at)
        return RenewOutcome(renewed, await self._reload(number.id))

    async def set_auto_renew(self, user_id: int, number_id: int, on: bool) -> PhoneNumber:
        await self._owned(user_id, number_id)
        async with self.db.transaction() as session:
            await session.execute(
                update(PhoneNumber).where(PhoneNumber.id == number_id, PhoneNumber.user_id == user_id)
                .values(auto_renew=on).execution_options(synchronize_session=False)
            )
        return await self._reload(number_id)

    async def _reload(self, number_id: int) -> PhoneNumber:
        async with self.db.read() as session:
            number = await session.get(PhoneNumber, number_id)
        assert number is not None
        return number

    async def _charge(self, number_id: int, period_start: datetime) -> bool:
        """Pay one period: True for the call that did it; raises InsufficientFunds (and changes nothing)."""
        async with self.db.transaction() as session:
            # The conditional UPDATE is the gate: of two racing callers the second waits for the first's row lock
            # and then matches nothing, since renews_at has moved on. The ledger key backs it up.
            row = (
                await session.execute(
                    update(PhoneNumber)
                    .where(
                        PhoneNumber.id == number_id, PhoneNumber.state == "active",
                        PhoneNumber.renews_at == period_start, PhoneNumber.release_started_at.is_(None),
                    )
                    .values(renews_at=period_start + NUMBER_PERIOD)
                    .returning(PhoneNumber.user_id, PhoneNumber.monthly_price_cents, PhoneNumber.e164)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if row is None:
                return False
            posted = await ledger.post(
                session, row.user_id, -row.monthly_price_cents, kind="renewal",
                idempotency_key=renewal_key(number_id, period_start), reference=f"number:{row.e164}",
            )
            if not posted:
                raise ledger.LedgerError(f"renewal of number {number_id} for {period_start} was paid already")
        log.info("number %s (%s) renewed for %s cents", number_id, mask_number(row.e164), row.monthly_price_cents)
        return True

    # --- the job ---------------------------------------------------------------------------------------------

    async def run(self, now: datetime | None = None) -> RenewalRun:
        """One pass, every few minutes on one instance: renew what is due, tell owners whose balance will not
        cover a renewal in the next three days, release what stayed unpaid through the grace."""
        now = now or utcnow()
        renewed, unpaid = await self._renew_due(now)
        told = await self._tell_low_balance(now)
        released = await self._release_unpaid(now)
        result = RenewalRun(renewed, unpaid, told, released)
        if renewed or told or released:
            log.info("number renewals: %s", result)
        return result

    async def _renew_due(self, now: datetime) -> tuple[int, int]:
        async with self.db.read() as session:
            due = (
                await session.execute(
                    select(PhoneNumber.id, PhoneNumber.renews_at).where(
                        PhoneNumber.state == "active", PhoneNumber.auto_renew.is_(True),
                        PhoneNumber.release_started_at.is_(None), PhoneNumber.renews_at <= now,
                    ).order_by(PhoneNumber.renews_at)
                )
            ).all()
        renewed = unpaid = 0
        for number_id, renews_at in due:
            period_start = renews_at
            for _ in range(CATCH_UP):
                try:
                    if not await self._charge(number_id, period_start):
                        break  # renewed meanwhile (Renew now), or released
                except ledger.InsufficientFunds:
                    unpaid += 1  # kept through the grace; a top-up and the next run (or Renew now) pay it
                    break
                except ledger.LedgerError:
                    # A period paid already although its date had not moved on: ours to look into, not the job's
                    # to stop at; the other numbers still renew.
                    log.exception("renewing number %s for %s refused by the ledger", number_id, period_start)
                    break
                renewed += 1
                period_start += NUMBER_PERIOD
                if period_start > now:
                    break
        return renewed, unpaid

    async def _tell_low_balance(self, now: datetime) -> int:
        """Once per period: the owner of a number renewing within NOTICE_AHEAD whose available balance does not
        cover it (with the owner's other renewals due before it)."""
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(PhoneNumber, User.balance_cents - User.held_cents)
                    .join(User, User.id == PhoneNumber.user_id)
                    .where(
                        PhoneNumber.state == "active", PhoneNumber.auto_renew.is_(True),
                        PhoneNumber.release_started_at.is_(None),
                        PhoneNumber.renews_at > now, PhoneNumber.renews_at <= now + NOTICE_AHEAD,
                    )
                    .order_by(PhoneNumber.user_id, PhoneNumber.renews_at, PhoneNumber.id)
                )
            ).all()
        needed: dict[int, int] = {}
        told = 0
        for number, available in rows:
            needed[number.user_id] = needed.get(number.user_id, 0) + number.monthly_price_cents
            if available >= needed[number.user_id] or number.low_balance_notice_for == number.renews_at:
                continue
            async with self.db.transaction() as session:
                if await self._mark_told(session, number):
                    await self._notify_low_balance(session, number, int(available))
                    told += 1
        return told

    async def _mark_told(self, session: AsyncSession, number: PhoneNumber) -> bool:
        # Conditional, so two runs (or a run repeated after a crash) tell the owner once per period.
        result = await session.execute(
            update(PhoneNumber)
            .where(
                PhoneNumber.id == number.id, PhoneNumber.renews_at == number.renews_at,
                or_(PhoneNumber.low_balance_notice_for.is_(None),
                    PhoneNumber.low_balance_notice_for != number.renews_at),
            )
            .values(low_balance_notice_for=number.renews_at)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)

    async def _notify_low_balance(self, session: AsyncSession, number: PhoneNumber, available: int) -> None:
        assert number.renews_at is not None
        locale = await self._locale(session, number.user_id)
        text = t(
            locale, "num_notice_low_balance", number=display_number(number.e164),
            renews=number.renews_at.strftime("%Y-%m-%d"), price=money(number.monthly_price_cents),
            available=money(available), grace=GRACE.days,
        )
        await outbox.enqueue_for_user(
            session, number.user_id, kind="number_renewal",
            message=outbox.OutgoingMessage(text=text, buttons=self._buttons(locale, number)),
            dedupe_key=f"renewal-low:{number.id}:{period_id(number.renews_at)}",
        )

    async def _release_unpaid(self, now: datetime) -> int:
        """Numbers unpaid GRACE after their renewal date: marked (no renewal after that), released at the
        provider, then recorded. A refusal leaves the mark, and the next run tries again."""
        async with self.db.transaction() as session:
            await session.execute(
                update(PhoneNumber)
                .where(
                    PhoneNumber.state == "active", PhoneNumber.release_started_at.is_(None),
                    PhoneNumber.renews_at <= now - GRACE,
                )
                .values(release_started_at=now)
                .execution_options(synchronize_session=False)
            )
        async with self.db.read() as session:
            going = list(
                (
                    await session.scalars(
                        select(PhoneNumber).where(
                            PhoneNumber.state == "active", PhoneNumber.release_started_at.is_not(None)
                        ).order_by(PhoneNumber.id)
                    )
                ).all()
            )
        released = 0
        for number in going:
            provider = self.gateway.providers.get(number.provider)
            if provider is None:
                log.warning("number %s is at %s, which is not configured; released here only", number.id,
                            number.provider)
            else:
                try:
                    await self.gateway.call(provider, provider.release_number(number.provider_sid))
                except SmsProviderError as error:
                    log.warning("releasing unpaid number %s failed, tried again next run: %s", number.id,
                                describe(error))
                    continue
            async with self.db.transaction() as session:
                result = await session.execute(
                    update(PhoneNumber)
                    .where(PhoneNumber.id == number.id, PhoneNumber.state == "active")
                    .values(state="released", released_at=now)
                    .execution_options(synchronize_session=False)
                )
                if not result.rowcount:
                    continue  # released by its owner meanwhile
                await self._notify_released(session, number)
            log.info("unpaid number %s (%s) released", number.id, mask_number(number.e164))
            released += 1
        return released

    async def _notify_released(self, session: AsyncSession, number: PhoneNumber) -> None:
        assert number.renews_at is not None
        locale = await self._locale(session, number.user_id)
        text = t(
            locale, "num_notice_released", number=display_number(number.e164),
            renews=number.renews_at.strftime("%Y-%m-%d"), grace=GRACE.days,
        )
        await outbox.enqueue_for_user(
            session, number.user_id, kind="number_renewal", message=outbox.OutgoingMessage(text=text),
            dedupe_key=f"renewal-released:{number.id}",
        )

    @staticmethod
    def _buttons(locale: str, number: PhoneNumber) -> tuple[tuple[outbox.OutButton, ...], ...]:
        return ((outbox.OutButton(t(locale, "num_btn_open", number=display_number(number.e164)),
                                  action=f"num_open:{number.id}"),),)

    @staticmethod
    async def _locale(session: AsyncSession, user_id: int) -> str:
        return str(await session.scalar(select(User.locale).where(User.id == user_id)) or "en")
