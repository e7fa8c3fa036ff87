"""Paid tiers (/subscribe): Telegram Stars subscriptions credited once per charge, or monthly debits of the balance.

A subscription row per account says which tier is paid, through which channel and until when. On Telegram the
tier is a Stars subscription that Telegram renews every 30 days: each `successful_payment` (the first, then one per
renewal) is recorded once per `telegram_payment_charge_id` and moves `paid_until` to its
`subscription_expiration_date`. Elsewhere (Discord, the terminal, and Telegram while the sandbox sells nothing real)
the tier is paid from the balance: one hold, captured at once, per account and period, whose key is the period's
start, so a renewal run repeated or racing another charges once. The job `run_due` renews balance subscriptions and
returns lapsed ones to `free`.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Subscription, SubscriptionPayment, User
from core.money import ledger, payments
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.i18n import money, t
from core.platform.scheduler import Scheduler
from core.platform.settings import TIER_NAMES, Settings

log = logging.getLogger(__name__)

# Telegram accepts exactly this subscription_period (30 days), and we renew balance subscriptions at the same pace.
PERIOD_SECONDS = 2_592_000
PERIOD = timedelta(seconds=PERIOD_SECONDS)
MAX_SUBSCRIPTION_STARS = 10_000  # Telegram's cap on a subscription's price
STARS_PROVIDER = "telegram_stars"
BALANCE_PROVIDER = "balance"
# Telegram charges a renewal at the expiration date and tells us a moment later; a Stars subscription that still
# renews keeps its tier this long past the date rather than dropping to free for a few seconds.
STARS_RENEWAL_GRACE = timedelta(hours=1)
FREE = "free"
JOB_NAME = "subscriptions"
JOB_SECONDS = 60.0


class SubscriptionError(Exception):
    """A subscription step was refused; `reason` is a message key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StarsSubscriptionApi(Protocol):
    """What the Telegram front end lends the flows: Bot API calls for Stars subscriptions."""

    async def invoice_link(self, *, title: str, description: str, label: str, payload: str, stars: int) -> str:
        """createInvoiceLink in XTR with subscription_period=2592000."""
        ...

    async def set_canceled(self, platform_user_id: str, charge_id: str, canceled: bool) -> None:
        """editUserStarSubscription: stop (or allow again) the renewals of a user's subscription."""
        ...


@dataclass(frozen=True)
class TierOffer:
    tier: str
    cents: int
    stars: int


def price_cents(settings: Settings, tier: str) -> int:
    limits = settings.tier_limits.get(tier)
    return limits.monthly_price_cents if limits is not None else 0


def stars_for(settings: Settings, cents: int) -> int:
    """The Stars that pay `cents` at STARS_CENTS_PER_STAR, rounded up."""
    return math.ceil(cents / settings.stars_cents_per_star)


def tier_offers(settings: Settings) -> list[TierOffer]:
    """The tiers /subscribe sells, in the order of the tier table (a price of 0 is not sold)."""
    offers = []
    for tier in TIER_NAMES:
        cents = price_cents(settings, tier)
        if tier != FREE and cents > 0:
            offers.append(TierOffer(tier, cents, stars_for(settings, cents)))
    return offers


# --- Telegram Stars -----------------------------------------------------------------------------------------------


def is_subscription_payload(payload: str) -> bool:
    return payload.startswith("sub:")


def make_payload(settings: Settings, user_id: int, tier: str) -> str:
    body = f"sub:{user_id}:{tier}:{secrets.token_hex(4)}"
    return f"{body}:{payments.sign_payload(settings, body)}"


def parse_payload(settings: Settings, payload: str) -> tuple[int, str]:
    """(account id, tier) of a payload we signed; PaymentError otherwise."""
    parts = payload.split(":")
    if len(parts) != 5 or parts[0] != "sub" or parts[2] not in TIER_NAMES or not parts[1].isdigit():
        raise payments.PaymentError("payment_bad_payload")
    if not secrets.compare_digest(parts[4], payments.sign_payload(settings, ":".join(parts[:4]))):
        raise payments.PaymentError("payment_bad_payload")
    return int(parts[1]), parts[2]


async def validate_pre_checkout(
    session: AsyncSession, settings: Settings, user: User, payload: str, currency: str, total_amount: int
) -> None:
    """Raise PaymentError unless the first payment of a subscription matches a tier on sale to this active account
    that has no renewing subscription already (an old invoice link paid again would start a second one)."""
    payer, tier = parse_payload(settings, payload)
    cents = price_cents(settings, tier)
    if currency != payments.STARS or cents <= 0 or total_amount != stars_for(settings, cents):
        raise payments.PaymentError("payment_bad_amount")
    if payer != user.id:
        raise payments.PaymentError("payment_bad_payload")
    if user.status != "active":
        raise payments.PaymentError("payment_account_inactive")
    subscription = await current(session, user.id)
    if subscription is not None and subscription.auto_renew:
        raise payments.PaymentError("sub_already")


async def _lock(session: AsyncSession, user_id: int) -> tuple[User, Subscription | None]:
    """The account, then its subscription, both locked: every change of a subscription takes them in this order."""
    user = await session.scalar(
        select(User).where(User.id == user_id).with_for_update().execution_options(populate_existing=True)
    )
    if user is None:
        raise ledger.UnknownAccount(f"no account {user_id}")
    subscription = await session.scalar(
        select(Subscription).where(Subscription.user_id == user_id).with_for_update()
        .execution_options(populate_existing=True)
    )
    return user, subscription


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def record_stars_payment(
    session: AsyncSession, settings: Settings, user: User, *, charge_id: str, payload: str, currency: str,
    total_amount: int, expires_at: datetime | None, platform_user_id: str,
) -> tuple[Subscription | None, bool]:
    """A subscription payment (first or renewal), once per charge id: the tier holds until `expires_at`.

    Returns the subscription and whether this call recorded the payment (False: the same charge again)."""
    async def recorded_before() -> Subscription | None:
        return await session.scalar(select(Subscription).where(Subscription.user_id == user.id))

    known = select(SubscriptionPayment.id).where(
        SubscriptionPayment.provider == STARS_PROVIDER, SubscriptionPayment.charge_id == charge_id
    )
    if await session.scalar(known) is not None:
        return await recorded_before(), False
    _, tier = parse_payload(settings, payload)
    if currency != payments.STARS:
        raise payments.PaymentError("payment_bad_amount")
    now = utcnow()
    until = _as_utc(expires_at) if expires_at is not None else now + PERIOD
    locked_user, subscription = await _lock(session, user.id)
    try:
        async with session.begin_nested():
            session.add(SubscriptionPayment(
                user_id=user.id, provider=STARS_PROVIDER, charge_id=charge_id, tier=tier, currency=currency,
                amount=total_amount, paid_until=until, created_at=now,
            ))
            await session.flush()
    except IntegrityError:
        # The same charge delivered twice at once: the other delivery recorded it.
        return await recorded_before(), False
    if subscription is None:
        subscription = Subscription(user_id=user.id, tier=tier, channel="stars", paid_until=until, created_at=now)
        session.add(subscription)
    elif subscription.state == "active" and subscription.channel == "stars" and subscription.tier == tier:
        # Renewals may arrive out of order: the latest expiration wins.
        subscription.paid_until = max(_as_utc(subscription.paid_until), until)
    else:
        subscription.paid_until = until
    subscription.tier, subscription.channel, subscription.state = tier, "stars", "active"
    # A renewal means Telegram renews it (the user may have turned renewals back on in Telegram).
    subscription.auto_renew = True
    subscription.platform_user_id, subscription.charge_id = platform_user_id, charge_id
    locked_user.tier = tier
    await session.flush()
    return subscription, True


# --- the balance ----------------------------------------------------------------------------------------------------


async def _charge_period(
    session: AsyncSession, user_id: int, tier: str, cents: int, key: str, until: datetime
) -> bool:
    """Debit one period once per key: a hold captured at once (a purchase line in /history). True if this call did."""
    hold = await ledger.place_hold(
        session, user_id, cents, purpose="subscription", idempotency_key=f"sub:{key}", reference=f"subscription:{tier}"
    )
    if not await ledger.capture(session, hold.id):
        return False  # this period was paid already
    session.add(SubscriptionPayment(
        user_id=user_id, provider=BALANCE_PROVIDER, charge_id=key, tier=tier, currency="USD", amount=cents,
        paid_until=until, created_at=utcnow(),
    ))
    await session.flush()
    return True


async def subscribe_from_balance(
    session: AsyncSession, settings: Settings, user_id: int, tier: str, *, offer: str
) -> tuple[Subscription, bool]:
    """Pay a tier's month from the balance, once per offer; the same tier still paid is extended by a month.

    Raises InsufficientFunds (the offer stays valid) or SubscriptionError."""
    cents = price_cents(settings, tier)
    if tier == FREE or cents <= 0:
        raise SubscriptionError("sub_not_sold")
    user, subscription = await _lock(session, user_id)
    now = utcnow()
    active = subscription is not None and subscription.state == "active" and _as_utc(subscription.paid_until) > now
    if active and subscription is not None and subscription.channel == "stars" and subscription.auto_renew:
        raise SubscriptionError("sub_cancel_first")  # Telegram would go on renewing the other one
    same_tier = active and subscription is not None and subscription.tier == tier
    start = _as_utc(subscription.paid_until) if same_tier and subscription is not None else now
    until = start + PERIOD
    if not await _charge_period(session, user_id, tier, cents, f"{user_id}:offer:{offer}", until):
        assert subscription is not None
        return subscription, False
    if subscription is None:
        subscription = Subscription(user_id=user_id, tier=tier, channel="balance", paid_until=until, created_at=now)
        session.add(subscription)
    subscription.tier, subscription.channel, subscription.state = tier, "balance", "active"
    subscription.paid_until, subscription.auto_renew = until, True
    subscription.platform_user_id = subscription.charge_id = None
    user.tier = tier
    await session.flush()
    return subscription, True


async def set_auto_renew(session: AsyncSession, user_id: int, on: bool) -> Subscription:
    """Renewals off (cancel: the tier stays until `paid_until`) or back on; SubscriptionError if none is active."""
    _, subscription = await _lock(session, user_id)
    if subscription is None or subscription.state != "active":
        raise SubscriptionError("sub_none_active")
    subscription.auto_renew = on
    await session.flush()
    return subscription


async def current(session: AsyncSession, user_id: int) -> Subscription | None:
    """The account's subscription while it is active (paid or about to renew), else None."""
    subscription = await session.scalar(select(Subscription).where(Subscription.user_id == user_id))
    return subscription if subscription is not None and subscription.state == "active" else None


# --- renewals and lapses (the job) ----------------------------------------------------------------------------------


def _tier_name(locale: str, tier: str) -> str:
    return t(locale, f"sub_tier_{tier}")


async def _notify(session: AsyncSession, user: User, key: str, dedupe_key: str, **kwargs: object) -> None:
    text = t(user.locale, key, **{k: v if isinstance(v, str) else str(v) for k, v in kwargs.items()})
    await outbox.enqueue_for_user(
        session, user.id, kind="subscription", message=outbox.OutgoingMessage(text=text), dedupe_key=dedupe_key
    )


async def _lapse(session: AsyncSession, user: User, subscription: Subscription, reason: str, cents: int = 0) -> None:
    ended = _as_utc(subscription.paid_until)
    subscription.state, subscription.auto_renew = "lapsed", False
    if user.tier == subscription.tier:
        user.tier = FREE  # an admin's /tier since then is left alone
    await _notify(
        session, user, reason, f"sub:lapse:{subscription.id}:{int(ended.timestamp())}",
        tier=_tier_name(user.locale, subscription.tier), price=money(cents),
    )
    log.info("subscription of account %s (%s) lapsed to free", user.id, subscription.tier)


async def settle(db: Database, settings: Settings, user_id: int, now: datetime | None = None) -> str:
    """Renew or lapse one account's subscription that is due; says what happened ("renewed", "lapsed", "skipped")."""
    now = now or utcnow()
    async with db.transaction() as session:
        user, subscription = await _lock(session, user_id)
        # Re-read under the locks: another run may have settled it a moment ago.
        if subscription is None or subscription.state != "active" or _as_utc(subscription.paid_until) > now:
            return "skipped"
        paid_until = _as_utc(subscription.paid_until)
        if subscription.channel == "stars":
            if subscription.auto_renew and paid_until + STARS_RENEWAL_GRACE > now:
                return "skipped"  # Telegram's renewal may be on its way
            await _lapse(session, user, subscription, "sub_lapsed")
            return "lapsed"
        cents = price_cents(settings, subscription.tier)
        if not subscription.auto_renew or cents <= 0:
            await _lapse(session, user, subscription, "sub_lapsed")
            return "lapsed"
        try:
            charged = await _charge_period(
                session, user_id, subscription.tier, cents, f"{user_id}:{int(paid_until.timestamp())}",
                paid_until + PERIOD,
            )
        except ledger.InsufficientFunds:
            await _lapse(session, user, subscription, "sub_lapsed_funds", cents)
            return "lapsed"
        if not charged:
            return "skipped"
        subscription.paid_until = paid_until + PERIOD
        await _notify(
            session, user, "sub_renewed", f"sub:renew:{user_id}:{int(paid_until.timestamp())}",
            tier=_tier_name(user.locale, subscription.tier), price=money(cents),
            until=subscription.paid_until.strftime("%Y-%m-%d"),
        )
        return "renewed"


async def run_due(db: Database, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """Every subscription past its date: balance ones renewed (or lapsed), Stars ones past the grace lapsed."""
    now = now or utcnow()
    async with db.read() as session:
        due = (await session.scalars(
            select(Subscription.user_id).where(
                Subscription.state == "active",
                or_(
                    and_(Subscription.channel == "balance", Subscription.paid_until <= now),
                    and_(Subscription.channel == "stars", Subscription.paid_until <= now - STARS_RENEWAL_GRACE),
                    and_(Subscription.channel == "stars", Subscription.auto_renew.is_(False),
                         Subscription.paid_until <= now),
                ),
            ).order_by(Subscription.paid_until).limit(500)
        )).all()
    outcomes: dict[str, int] = {}
    for user_id in due:
        outcome = await settle(db, settings, user_id, now)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def start_jobs(scheduler: Scheduler, db: Database, settings: Settings, seconds: float = JOB_SECONDS) -> None:
    """Renewals and lapses every minute, on one instance at a time."""

    async def job() -> None:
        await run_due(db, settings)

    scheduler.add_periodic(JOB_NAME, job, seconds)
