"""Outbound SMS: refusals before any charge, the sending number chosen by cost, a hold captured once the provider
accepts (released when it refuses)."""

from __future__ import annotations

from collections.abc import Awaitable

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.messaging import pricing
from core.messaging.errors import InvalidNumber, MessagingError, NotYours, ProviderRefused
from core.messaging.gateway import SmsGateway
from core.messaging.relay import display_number
from core.messaging.results import SentSms, SmsQuote, sent_sms
from core.messaging.status import STATUS_RANK, apply_early_status, status_key
from core.messaging.storage import conversation_between, serialise
from core.models import Conversation, Hold, Message, PhoneNumber, User
from core.money import ledger, limits
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.phone import InvalidPhoneNumber, normalize, region_of
from core.providers.sms import RecipientOptedOut, SendResult, SmsProviderError
from core.providers.sms_encoding import sms_parts

MAX_BODY_CHARS = 1600  # Twilio's limit for one (concatenated) message; Vonage's is similar


async def sent_before(session: AsyncSession, hold_key: str) -> SentSms | None:
    """The message already sent under this request's hold (a double tap, a retried request): said again, never
    charged or sent twice."""
    earlier = await session.scalar(select(Hold).where(Hold.idempotency_key == hold_key))
    if earlier is None:
        return None
    message = await session.scalar(select(Message).where(Message.hold_id == earlier.id))
    return None if message is None else sent_sms(message, duplicate=True)


class SmsSender:
    """Sends from the user's numbers; the provider is called outside any transaction so it never holds a lock."""

    def __init__(self, db: Database, gateway: SmsGateway) -> None:
        self.db = db
        self.gateway = gateway
        self.settings = gateway.settings

    async def send_sms(
        self, user_id: int, to_raw: str, body: str, *, from_number_id: int | None = None, request_key: str
    ) -> SentSms:
        """Send `body` to `to_raw` from one of the user's numbers and charge for it once the provider accepts.

        Without `from_number_id` the number whose provider is cheapest for the destination is used. An invalid
        number, an opted-out or blocked recipient or a limit refuses before any provider call or charge."""
        body = body.strip()
        if not body:
            raise MessagingError("sms_empty")
        if len(body) > MAX_BODY_CHARS:
            raise MessagingError("sms_too_long", limit=MAX_BODY_CHARS)
        hold_key = f"sms:{request_key}"
        async with self.db.transaction() as session:
            user = await session.scalar(select(User).where(User.id == user_id).with_for_update())
            if user is None:
                raise NotYours()
            earlier = await sent_before(session, hold_key)
            if earlier is not None:
                return earlier
            number, to_e164 = await self._route(session, user_id, to_raw, from_number_id)
            provider_name = number.provider
            conversation = await conversation_between(session, user_id, number.id, to_e164)
            if conversation.blocked:
                raise MessagingError("sms_blocked", number=display_number(to_e164))
            if conversation.opted_out:
                raise MessagingError("sms_opted_out", number=display_number(to_e164))
            await limits.check_sms(session, self.settings, user)
            parts = sms_parts(body)
            # The markup applies to the whole message (every segment) and is rounded once: see pricing.
            cost = self.gateway.segment_cost(provider_name, region_of(to_e164)) * parts.segments
            price = await pricing.price_for(session, user_id, cost, limits.limits_for(self.settings, user).markup_percent)
            hold_id: int | None = None
            if price > 0:
                hold = await ledger.place_hold(
                    session, user_id, price, purpose="sms", idempotency_key=hold_key, reference=f"sms:{to_e164}"
                )
                hold_id = hold.id
            now = utcnow()
            message = Message(
                conversation_id=conversation.id, user_id=user_id, direction="outbound", provider=provider_name,
                from_e164=number.e164, to_e164=to_e164, body=body, media_urls=[], status="queued",
                segments=parts.segments, encoding=parts.encoding, cost_cents=cost, price_cents=price,
                hold_id=hold_id, created_at=now, updated_at=now,
            )
            session.add(message)
            await session.flush()
            message_id, conversation_id, from_e164 = message.id, conversation.id, number.e164

        provider = self.gateway.providers[provider_name]
        return await self.hand_over(
            message_id, conversation_id, hold_id, provider_name,
            provider.send(from_e164, to_e164, body, self.gateway.status_url(provider_name)),
        )

    async def hand_over(
        self, message_id: int, conversation_id: int, hold_id: int | None, provider_name: str,
        send: Awaitable[SendResult],
    ) -> SentSms:
        """Call the provider for a message row already written (SMS or MMS): on acceptance record its id and
        capture the hold; on refusal release the hold and mark the message refused."""
        provider = self.gateway.providers[provider_name]
        try:
            result = await self.gateway.call(provider, send)
        except Exception as error:
            await self._send_refused(message_id, conversation_id, hold_id, error)
            if isinstance(error, SmsProviderError):
                raise ProviderRefused(error) from error
            raise

        async with self.db.transaction() as session:
            await serialise(session, status_key(provider_name, result.provider_message_id))
            message = await session.get(Message, message_id, with_for_update=True)
            assert message is not None
            message.provider_message_id = result.provider_message_id
            message.status = result.status if result.status in STATUS_RANK else "queued"
            # cost_cents stays the cost-table figure the price was based on: providers report theirs in the
            # account's currency (EUR for most Vonage accounts), which would mix units in one column.
            message.updated_at = utcnow()
            if hold_id is not None:
                await ledger.capture(session, hold_id)
            await session.execute(
                update(Conversation).where(Conversation.id == conversation_id)
                .values(last_message_at=message.updated_at).execution_options(synchronize_session=False)
            )
            await apply_early_status(session, message, provider_name, result.provider_message_id)
            return sent_sms(message)

    async def quote(
        self, user_id: int, to_raw: str | None, body: str = "", *, from_number_id: int | None = None,
        country: str = "US",
    ) -> SmsQuote:
        """What sending `body` (a one-part text when empty) to `to_raw` would cost now; nothing is held. Without
        `to_raw`, the price to a number in `country` from the user's numbers."""
        async with self.db.read() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise NotYours()
            if to_raw is not None:
                number, to_e164 = await self._route(session, user_id, to_raw, from_number_id)
                provider, country = number.provider, region_of(to_e164)
            else:
                owned = (await session.scalars(
                    select(PhoneNumber.provider).where(PhoneNumber.user_id == user_id, PhoneNumber.state == "active")
                )).all()
                usable = [name for name in owned if name in self.gateway.providers]
                if not usable:
                    raise MessagingError("sms_no_number")
                provider, to_e164 = self.gateway.cheapest_provider(country, usable), ""
            segments = sms_parts(body).segments if body.strip() else 1
            cost = self.gateway.segment_cost(provider, country) * segments
            price = await pricing.price_for(
                session, user_id, cost, limits.limits_for(self.settings, user).markup_percent
            )
        return SmsQuote(to_e164=to_e164, country=country, segments=segments, price_cents=price)

    async def _route(
        self, session: AsyncSession, user_id: int, to_raw: str, from_number_id: int | None
    ) -> tuple[PhoneNumber, str]:
        """The sending number and the destination in E.164."""
        numbers = list(
            (await session.scalars(
                select(PhoneNumber).where(PhoneNumber.user_id == user_id, PhoneNumber.state == "active")
                .order_by(PhoneNumber.purchased_at.desc(), PhoneNumber.id.desc())
            )).all()
        )
        chosen: PhoneNumber | None = None
        if from_number_id is not None:
            chosen = next((n for n in numbers if n.id == from_number_id), None)
            if chosen is None:
                owned = await session.get(PhoneNumber, from_number_id)
                if owned is None or owned.user_id != user_id:
                    raise NotYours()
                raise MessagingError("sms_number_released", number=display_number(owned.e164))
        if not numbers:
            raise MessagingError("sms_no_number")
        region = (chosen or numbers[0]).country or "US"
        try:
            to_e164 = normalize(to_raw, region)
        except InvalidPhoneNumber as error:
            raise InvalidNumber(to_raw, error.reason) from None
        if chosen is None:
            usable = [n for n in numbers if n.provider in self.gateway.providers]
            if not usable:
                raise MessagingError("sms_number_unavailable")
            country = region_of(to_e164)
            best = self.gateway.cheapest_provider(country, [n.provider for n in usable])
            chosen = next(n for n in usable if n.provider == best)
        elif chosen.provider not in self.gateway.providers:
            raise MessagingError("sms_number_unavailable")
        return chosen, to_e164

    async def _send_refused(
        self, message_id: int, conversation_id: int, hold_id: int | None, error: BaseException
    ) -> None:
        """The provider refused (or we failed before knowing): nothing is charged and the message is marked."""
        provider_error = error if isinstance(error, SmsProviderError) else None
        async with self.db.transaction() as session:
            if hold_id is not None:
                await ledger.release(session, hold_id)
            await session.execute(
                update(Message).where(Message.id == message_id).values(
                    status="rejected", error_code=(provider_error.code if provider_error else "internal"),
                    error_message=(provider_error.message if provider_error else type(error).__name__)[:256],
                    updated_at=utcnow(),
                ).execution_options(synchronize_session=False)
            )
            if isinstance(error, RecipientOptedOut):
                # The carrier knows they said STOP; refuse the next attempt before it reaches the provider.
                await session.execute(
                    update(Conversation).where(Conversation.id == conversation_id).values(opted_out=True)
                    .execution_options(synchronize_session=False)
                )
