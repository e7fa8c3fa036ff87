"""Tier limits: counted from the database and enforced before anything is bought or sent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import AiUsage, Hold, Message, PhoneNumber, User, Verification
from core.platform.clock import start_of_utc_day, utcnow
from core.platform.settings import Settings, TierLimits

OPEN_VERIFICATION_STATES = ("requested", "active")
REFUNDED_HOLD_STATES = ("released", "refunded")


class LimitReached(Exception):
    """A tier limit refuses the request; the message says which, the figures and when it resets."""

    def __init__(self, limit: str, used: int, allowed: int, resets_at: datetime | None) -> None:
        super().__init__(f"{limit}: {used}/{allowed}")
        self.limit = limit
        self.used = used
        self.allowed = allowed
        self.resets_at = resets_at

    def resets_in_words(self, locale: str) -> str:
        from core.platform.i18n import t

        if self.resets_at is None:
            return t(locale, "limit_resets_never")
        seconds = max(0, int((self.resets_at - utcnow()).total_seconds()))
        hours, minutes = divmod(seconds // 60, 60)
        return t(locale, "limit_resets_in", hours=hours, minutes=minutes)


@dataclass(frozen=True)
class Usage:
    """Today's use of each limit against the tier's allowance."""

    tier: str
    limits: TierLimits
    verifications_today: int  # those that cost something: refunded ones are in `verifications_refunded`
    verifications_open: int
    sms_today: int
    numbers_owned: int
    ai_tokens_today: int
    verifications_refunded: int = 0


def limits_for(settings: Settings, user: User) -> TierLimits:
    return settings.tier_limits[user.tier]


def next_reset() -> datetime:
    return start_of_utc_day() + timedelta(days=1)


async def usage(session: AsyncSession, settings: Settings, user: User) -> Usage:
    today = start_of_utc_day()
    # A verification whose money came back (cancelled, reported, expired without a code) does not use up the
    # day's quota: the user got nothing for it. Those still held or charged do.
    refunded = Hold.state.in_(REFUNDED_HOLD_STATES)
    counts = (await session.execute(
        select(
            func.count().filter(or_(Hold.id.is_(None), ~refunded)),
            func.count().filter(refunded),
        ).select_from(Verification).outerjoin(Hold, Hold.id == Verification.hold_id).where(
            Verification.user_id == user.id, Verification.created_at >= today, Verification.state != "failed"
        )
    )).one()
    verifications_today, verifications_refunded = counts[0], counts[1]
    verifications_open = await session.scalar(
        select(func.count()).select_from(Verification).where(
            Verification.user_id == user.id, Verification.state.in_(OPEN_VERIFICATION_STATES)
        )
    )
    sms_today = await session.scalar(
        select(func.count()).select_from(Message).where(
            Message.user_id == user.id, Message.direction == "outbound", Message.created_at >= today,
            Message.status.not_in(("rejected",)),
        )
    )
    numbers = await session.scalar(
        select(func.count()).select_from(PhoneNumber).where(PhoneNumber.user_id == user.id, PhoneNumber.state == "active")
    )
    tokens = await session.scalar(
        select(AiUsage.tokens).where(AiUsage.user_id == user.id, AiUsage.day == today.date())
    )
    return Usage(
        tier=user.tier, limits=limits_for(settings, user), verifications_today=verifications_today or 0,
        verifications_open=verifications_open or 0, sms_today=sms_today or 0, numbers_owned=numbers or 0,
        ai_tokens_today=tokens or 0, verifications_refunded=verifications_refunded or 0,
    )


async def check_verification(session: AsyncSession, settings: Settings, user: User) -> None:
    now = await usage(session, settings, user)
    if now.verifications_open >= now.limits.verifications_at_once:
        raise LimitReached("verifications_at_once", now.verifications_open, now.limits.verifications_at_once, None)
    if now.verifications_today >= now.limits.verifications_per_day:
        raise LimitReached(
            "verifications_per_day", now.verifications_today, now.limits.verifications_per_day, next_reset()
        )


async def check_sms(session: AsyncSession, settings: Settings, user: User) -> None:
    now = await usage(session, settings, user)
    if now.sms_today >= now.limits.sms_per_day:
        raise LimitReached("sms_per_day", now.sms_today, now.limits.sms_per_day, next_reset())


async def check_number(session: AsyncSession, settings: Settings, user: User) -> None:
    now = await usage(session, settings, user)
    if now.numbers_owned >= now.limits.numbers_owned:
        raise LimitReached("numbers_owned", now.numbers_owned, now.limits.numbers_owned, None)


async def check_ai_tokens(session: AsyncSession, settings: Settings, user: User) -> bool:
    """True while the user has model tokens left today (the offline engine answers otherwise)."""
    now = await usage(session, settings, user)
    return now.ai_tokens_today < now.limits.ai_tokens_per_day
