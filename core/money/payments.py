"""Top-ups with Telegram Stars: invoice payloads, pre-checkout validation, one credit per charge, refunds."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.admin import audit
from core.models import Payment, User
from core.money import ledger
from core.platform.clock import utcnow
from core.platform.settings import Settings

STARS = "XTR"
PROVIDER = "telegram_stars"

Refunder = Callable[[str, str], Awaitable[None]]  # (platform user id, charge id): asks Telegram to refund


class PaymentError(Exception):
    """A payment was refused; `reason` is a message key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TopUpOffer:
    stars: int
    cents: int


def offers(settings: Settings) -> list[TopUpOffer]:
    return [TopUpOffer(stars, stars * settings.stars_cents_per_star) for stars in settings.topup_star_amounts]


def _sign(settings: Settings, body: str) -> str:
    # The payload round-trips through Telegram; a short MAC stops a forged payload crediting another amount.
    key = (settings.telegram_bot_token.get_secret_value() if settings.telegram_bot_token else "sandbox").encode()
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()[:16]


def sign_payload(settings: Settings, body: str) -> str:
    """The MAC an invoice payload carries (top-ups here, tier subscriptions in core.money.subscriptions)."""
    return _sign(settings, body)


def make_payload(settings: Settings, user_id: int, stars: int) -> str:
    body = f"topup:{user_id}:{stars}:{secrets.token_hex(4)}"
    return f"{body}:{_sign(settings, body)}"


@dataclass(frozen=True)
class ParsedPayload:
    user_id: int
    stars: int


def parse_payload(settings: Settings, payload: str) -> ParsedPayload:
    parts = payload.split(":")
    if len(parts) != 5 or parts[0] != "topup":
        raise PaymentError("payment_bad_payload")
    body, signature = ":".join(parts[:4]), parts[4]
    if not hmac.compare_digest(signature, _sign(settings, body)):
        raise PaymentError("payment_bad_payload")
    try:
        return ParsedPayload(int(parts[1]), int(parts[2]))
    except ValueError:
        raise PaymentError("payment_bad_payload") from None


async def validate_pre_checkout(
    session: AsyncSession, settings: Settings, user: User, payload: str, currency: str, total_amount: int
) -> None:
    """Raise PaymentError unless the payment matches an offer made to this active account and not paid yet."""
    parsed = parse_payload(settings, payload)
    if currency != STARS or parsed.stars != total_amount or total_amount not in settings.topup_star_amounts:
        raise PaymentError("payment_bad_amount")
    if parsed.user_id != user.id:
        raise PaymentError("payment_bad_payload")
    if user.status != "active":
        raise PaymentError("payment_account_inactive")
    # An invoice is one offer: once paid, paying it again (an old invoice message) is refused before any charge.
    if await session.scalar(select(Payment.id).where(Payment.provider == PROVIDER, Payment.payload == payload).limit(1)):
        raise PaymentError("payment_offer_used")


async def record_payment(
    session: AsyncSession, settings: Settings, user: User, *, charge_id: str, payload: str, currency: str,
    total_amount: int,
) -> tuple[Payment, bool]:
    """Credit a successful payment once per charge id; returns the payment and whether this call credited it."""
    existing = await session.scalar(
        select(Payment).where(Payment.provider == PROVIDER, Payment.provider_charge_id == charge_id)
    )
    if existing is not None:
        return existing, False
    parsed = parse_payload(settings, payload)
    cents = total_amount * settings.stars_cents_per_star
    payment = Payment(
        user_id=parsed.user_id if parsed.user_id == user.id else user.id, provider=PROVIDER,
        provider_charge_id=charge_id, currency=currency, amount=total_amount, credited_cents=cents,
        payload=payload, state="paid", created_at=utcnow(),
    )
    try:
        async with session.begin_nested():
            session.add(payment)
            await session.flush()
    except IntegrityError:
        # The same charge arrived twice at once; the other delivery credited it.
        existing = await session.scalar(
            select(Payment).where(Payment.provider == PROVIDER, Payment.provider_charge_id == charge_id)
        )
        assert existing is not None
        return existing, False
    credited = await ledger.post(
        session, payment.user_id, cents, kind="topup", idempotency_key=f"stars:{charge_id}",
        reference=f"payment:{payment.id}", note=f"{total_amount} Stars",
    )
    return payment, credited


async def refund_payment(
    session: AsyncSession, actor: User, payment_id: int, refunder: Refunder, platform_user_id: str
) -> Payment:
    """Reverse a Stars top-up once: the credit is taken back, then Telegram refunds the Stars."""
    payment = await session.get(Payment, payment_id)
    if payment is None:
        raise PaymentError("payment_not_found")
    changed = await session.execute(
        update(Payment).where(Payment.id == payment_id, Payment.state == "paid")
        .values(state="refunded", refunded_at=utcnow()).execution_options(synchronize_session=False)
    )
    if changed.rowcount != 1:
        raise PaymentError("payment_already_refunded")
    await ledger.post(
        session, payment.user_id, -payment.credited_cents, kind="topup_refund",
        idempotency_key=f"stars-refund:{payment.provider_charge_id}", reference=f"payment:{payment.id}",
        actor_user_id=actor.id,
    )
    # Last, so a refused refund at Telegram rolls the whole transaction back.
    await refunder(platform_user_id, payment.provider_charge_id)
    await audit.record(
        session, actor_user_id=actor.id, action="refund", target_user_id=payment.user_id,
        before={"payment": payment.id, "state": "paid"}, after={"state": "refunded", "cents": payment.credited_cents},
    )
    await session.refresh(payment)
    return payment
