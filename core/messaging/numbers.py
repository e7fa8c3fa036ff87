"""The number shop: search with remembered offers, quotes for Confirm, buying behind a hold, listing, release,
and the tier's limit on numbers owned."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.messaging.errors import MessagingError, NotYours, ProviderRefused
from core.messaging.gateway import SmsGateway, with_markup
from core.messaging.relay import display_number
from core.messaging.results import NumberQuote
from core.messaging.storage import kv_get, kv_put, short_key
from core.models import Hold, KeyValue, PhoneNumber, User
from core.money import ledger, limits, offers
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.db_faults import database_unavailable, describe
from core.platform.phone import mask_number
from core.providers.sms import AvailableNumber, SmsProviderError, country_of

log = logging.getLogger(__name__)

NUMBER_PERIOD = timedelta(days=30)
OFFER_TTL = timedelta(minutes=30)
QUOTE_TTL = timedelta(minutes=15)
# A quote is an offer (core.money.offers): its Confirm buys once, and never after its Cancel or QUOTE_TTL. The
# "numquote" prefix keeps expired quotes in the messaging sweep too.
QUOTE_KIND = "numquote"


class NumberShop:
    """Buying and giving back owned numbers. Provider calls are made outside any transaction."""

    def __init__(self, db: Database, gateway: SmsGateway) -> None:
        self.db = db
        self.gateway = gateway
        self.settings = gateway.settings

    async def search_numbers(
        self, country: str, area_code: str | None = None, contains: str | None = None, limit: int = 8
    ) -> list[AvailableNumber]:
        """Numbers for sale across the configured providers, cheapest first; each is remembered as an offer so
        the price shown later comes from the database, not from a button."""
        country = country.upper()
        providers = list(self.gateway.providers.values())
        results = await asyncio.gather(
            *(self.gateway.call(p, p.search_numbers(country, area_code, contains, limit)) for p in providers),
            return_exceptions=True,
        )
        found: dict[str, AvailableNumber] = {}
        errors: list[SmsProviderError] = []
        for result in results:
            if isinstance(result, SmsProviderError):
                errors.append(result)
                continue
            if isinstance(result, BaseException):
                raise result
            for number in result:
                if number.e164 not in found or number.monthly_cost_cents < found[number.e164].monthly_cost_cents:
                    found[number.e164] = number
        if not found and errors:
            raise ProviderRefused(errors[0])
        numbers = sorted(found.values(), key=lambda n: (n.monthly_cost_cents, n.e164))[:limit]
        if numbers:
            expires = utcnow() + OFFER_TTL
            async with self.db.transaction() as session:
                for number in numbers:
                    await kv_put(
                        session, short_key("numoffer", number.e164),
                        {"provider": number.provider, "country": number.country, "locality": number.locality,
                         "cost_cents": number.monthly_cost_cents},
                        expires,
                    )
        return numbers

    async def _offer(self, e164: str) -> dict[str, Any] | None:
        async with self.db.read() as session:
            offer = await kv_get(session, short_key("numoffer", e164))
        if offer is not None and offer.get("provider") in self.gateway.providers:
            return offer
        # The offer expired (or came from a provider no longer configured): ask again while it is for sale.
        country = country_of(e164)
        digits = re.sub(r"\D", "", e164)
        if country == "ZZ":
            return None
        for number in await self.search_numbers(country, contains=digits[-7:], limit=20):
            if number.e164 == e164:
                return {"provider": number.provider, "country": number.country, "locality": number.locality,
                        "cost_cents": number.monthly_cost_cents}
        return None

    async def check_can_buy(self, user_id: int) -> None:
        """Raises LimitReached when the tier allows no further number (shown before any step of Buy)."""
        async with self.db.read() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise NotYours()
            await self._check_number_limit(session, user)

    async def _check_number_limit(self, session: AsyncSession, user: User) -> None:
        await limits.check_number(session, self.settings, user)
        # Purchases under way count too, so two quick Confirms on different numbers cannot pass the limit.
        pending = await session.scalar(
            select(func.count()).select_from(Hold).where(
                Hold.user_id == user.id, Hold.purpose == "number", Hold.state == "held"
            )
        )
        usage = await limits.usage(session, self.settings, user)
        allowed = usage.limits.numbers_owned
        if usage.numbers_owned + int(pending or 0) >= allowed:
            raise limits.LimitReached("numbers_owned", usage.numbers_owned + int(pending or 0), allowed, None)

    async def quote_number(self, user_id: int, e164: str) -> NumberQuote:
        """The monthly price this user would pay for `e164` (provider cost + tier markup), kept for Confirm."""
        offer = await self._offer(e164)
        if offer is None:
            raise MessagingError("num_gone")
        async with self.db.read() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise NotYours()
            markup = limits.limits_for(self.settings, user).markup_percent
        token = await offers.make(self.db, QUOTE_KIND, user_id, {"user_id": user_id, "e164": e164}, QUOTE_TTL)
        return NumberQuote(
            token=token, user_id=user_id, e164=e164, provider=str(offer["provider"]),
            country=str(offer["country"]), locality=offer.get("locality"),
            monthly_price_cents=with_markup(int(offer["cost_cents"]), markup),
        )

    async def quoted_number(self, user_id: int, token: str) -> str:
        """The number an open quote of this user is for; num_quote_expired when it is used, cancelled, expired or
        not theirs (quotes are kept per account)."""
        quote = await offers.peek(self.db, QUOTE_KIND, user_id, token)
        if quote is None:
            raise MessagingError("num_quote_expired")
        return str(quote["e164"])

    async def buy_number(self, user_id: int, e164: str, request_key: str) -> PhoneNumber:
        """Buy `e164` for a month: hold the price, buy at the provider, then capture (or release on refusal).

        The same `request_key` (a double click) buys once: a repeat gets the number bought, or a refusal while
        the first purchase is still under way."""
        hold_key = f"num:{request_key}"
        async with self.db.read() as session:
            earlier = await session.scalar(select(Hold).where(Hold.idempotency_key == hold_key))
        if earlier is None:
            offer = await self._offer(e164)
            if offer is None:
                raise MessagingError("num_gone")
        else:
            offer = {}
        async with self.db.transaction() as session:
            user = await session.scalar(select(User).where(User.id == user_id).with_for_update())
            if user is None:
                raise NotYours()
            hold = await session.scalar(select(Hold).where(Hold.idempotency_key == hold_key))
            if hold is not None:
                return await self._repeat_purchase(session, hold, user_id, e164)
            await self._check_number_limit(session, user)
            provider_name = str(offer["provider"])
            price = with_markup(int(offer["cost_cents"]), limits.limits_for(self.settings, user).markup_percent)
            hold = await ledger.place_hold(
                session, user_id, price, purpose="number", idempotency_key=hold_key, reference=f"number:{e164}"
            )
            hold_id = hold.id
        provider = self.gateway.providers[provider_name]
        try:
            bought = await self.gateway.call(
                provider,
                provider.buy_number(e164, self.gateway.inbound_url(provider_name), self.gateway.status_url(provider_name)),
            )
        except Exception as error:
            # (A cancellation leaves the hold in place: whether the provider bought is unknown.)
            async with self.db.transaction() as session:
                await ledger.release(session, hold_id)
                if isinstance(error, SmsProviderError):
                    await session.execute(delete(KeyValue).where(KeyValue.key == short_key("numoffer", e164)))
            if isinstance(error, SmsProviderError):
                raise ProviderRefused(error) from error
            raise
        now = utcnow()
        try:
            async with self.db.transaction() as session:
                number = PhoneNumber(
                    user_id=user_id, provider=provider_name, provider_sid=bought.provider_sid, e164=bought.e164,
                    country=bought.country or country_of(bought.e164), state="active", monthly_price_cents=price,
                    purchased_at=now, renews_at=now + NUMBER_PERIOD,
                )
                session.add(number)
                await ledger.capture(session, hold_id)
                await session.execute(delete(KeyValue).where(KeyValue.key == short_key("numoffer", e164)))
                await session.flush()
        except BaseException as error:
            # Bought but not recorded: the number goes back and the hold is released, each once, and shielded so
            # a cancellation cannot stop half-way. The number first: unlike the hold, nothing would find it again.
            await asyncio.shield(self._undo_purchase(provider_name, bought.provider_sid, hold_id, error))
            if isinstance(error, Exception) and not database_unavailable(error):
                raise MessagingError("num_buy_failed") from error
            raise
        log.info("user %s bought %s at %s for %s cents/month", user_id, mask_number(bought.e164), provider_name, price)
        return number

    async def _undo_purchase(self, provider_name: str, provider_sid: str, hold_id: int, error: BaseException) -> None:
        if database_unavailable(error):
            log.warning("recording number %s failed, the database is unavailable (%s); releasing it", provider_sid,
                        describe(error))
        elif isinstance(error, Exception):
            log.error("recording number %s failed; releasing it", provider_sid, exc_info=error)
        provider = self.gateway.providers[provider_name]
        try:
            await self.gateway.call(provider, provider.release_number(provider_sid))
        except SmsProviderError as release_error:
            log.warning("releasing the unrecorded number %s failed: %s", provider_sid, release_error)
        try:
            async with self.db.transaction() as session:
                await ledger.release(session, hold_id)
        except Exception as release_error:
            log.warning("releasing hold %s of an unrecorded number failed: %s", hold_id, describe(release_error))

    async def _repeat_purchase(self, session: AsyncSession, hold: Hold, user_id: int, e164: str) -> PhoneNumber:
        if hold.state == "held":
            raise MessagingError("num_buy_in_progress")
        if hold.state == "captured":
            number = await session.scalar(
                select(PhoneNumber)
                .where(PhoneNumber.user_id == user_id, PhoneNumber.e164 == e164)
                .order_by(PhoneNumber.id.desc())
            )
            if number is not None:
                return number
        raise MessagingError("num_quote_expired")

    async def list_numbers(self, user_id: int) -> list[PhoneNumber]:
        async with self.db.read() as session:
            rows = await session.scalars(
                select(PhoneNumber)
                .where(PhoneNumber.user_id == user_id, PhoneNumber.state == "active")
                .order_by(PhoneNumber.purchased_at, PhoneNumber.id)
            )
            return list(rows.all())

    async def owned_number(self, user_id: int, number_id: int) -> PhoneNumber:
        """The user's number (active or released); NotYours for anyone else's or an unknown id."""
        async with self.db.read() as session:
            number = await session.get(PhoneNumber, number_id)
        if number is None or number.user_id != user_id:
            raise NotYours()
        return number

    async def release_number(self, user_id: int, number_id: int) -> PhoneNumber:
        """Give a number back to the provider; texts to it stop. No refund of the month already paid."""
        number = await self.owned_number(user_id, number_id)
        if number.state != "active":
            raise MessagingError("num_already_released", number=display_number(number.e164))
        provider = self.gateway.providers.get(number.provider)
        if provider is not None:
            try:
                await self.gateway.call(provider, provider.release_number(number.provider_sid))
            except SmsProviderError as error:
                raise ProviderRefused(error) from error
        else:
            log.warning("number %s is at %s, which is not configured; released here only", number.id, number.provider)
        async with self.db.transaction() as session:
            result = await session.execute(
                update(PhoneNumber)
                .where(PhoneNumber.id == number_id, PhoneNumber.state == "active")
                .values(state="released", released_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if not result.rowcount:
                raise MessagingError("num_already_released", number=display_number(number.e164))
        return await self.owned_number(user_id, number_id)


async def owned_active_number(db: Database, user_id: int, number_id: int) -> PhoneNumber:
    """The user's number, still active: what a button on a number's card acts on (NotYours, or "already
    released", otherwise)."""
    async with db.read() as session:
        number = await session.get(PhoneNumber, number_id)
    if number is None or number.user_id != user_id:
        raise NotYours()
    if number.state != "active":
        raise MessagingError("num_already_released", number=display_number(number.e164))
    return number

