"""What an outbound SMS costs the user: the tier's markup on the whole message's cost, rounded up once.

Charges are whole cents while a 1-cent message with a 30% markup is worth 1.3 cents. Rounding each message up on
its own would charge 2 cents every time, a 100% markup. Instead the rounding is carried over the day: the day's
charges add up to its exact price rounded up once, so they never exceed it by a cent or more (the first message
of a day costs 2 cents, the next ones 1, 1, 2, ...: on average the advertised 1.3)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Message
from core.platform.clock import start_of_utc_day


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def sms_price(cost_cents: int, markup_percent: int, *, cost_before: int = 0, charged_before: int = 0) -> int:
    """The price of a message whose provider cost (all its segments) is `cost_cents`.

    `cost_before` and `charged_before` are the day's earlier messages: their summed cost and what they were
    charged. With none, this is the cost plus markup rounded up. Whatever came before (a tier change during the
    day), the price stays within a cent of the message's own exact price."""
    if cost_cents <= 0:
        return 0
    scale = 100 + markup_percent
    price = _ceil_div((cost_before + cost_cents) * scale, 100) - charged_before
    return min(max(price, cost_cents * scale // 100), _ceil_div(cost_cents * scale, 100))


@dataclass(frozen=True)
class DaySoFar:
    """The day's charged SMS of one account: their summed cost and what they were charged."""

    cost_cents: int = 0
    charged_cents: int = 0


async def day_so_far(session: AsyncSession, user_id: int) -> DaySoFar:
    """Today's outbound SMS that were (or are about to be) charged; a refused one gave its money back."""
    row = (await session.execute(
        select(func.coalesce(func.sum(Message.cost_cents), 0), func.coalesce(func.sum(Message.price_cents), 0))
        .where(
            Message.user_id == user_id, Message.direction == "outbound", Message.created_at >= start_of_utc_day(),
            Message.status != "rejected", Message.price_cents > 0,
        )
    )).one()
    return DaySoFar(int(row[0]), int(row[1]))


async def price_for(session: AsyncSession, user_id: int, cost_cents: int, markup_percent: int) -> int:
    """The price of the account's next message of `cost_cents`, with the day's rounding carried over."""
    if cost_cents <= 0:
        return 0
    day = await day_so_far(session, user_id)
    return sms_price(cost_cents, markup_percent, cost_before=day.cost_cents, charged_before=day.charged_cents)
