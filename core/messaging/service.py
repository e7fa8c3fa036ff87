"""Two-way SMS: owned numbers, sending (routed by cost, charged via the ledger), delivery status, inbound relay."""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import re
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import flag_modified

from core.admin.alerts import alert_admins
from core.messaging.phone import InvalidPhoneNumber, format_international, normalize, region_of
from core.messaging.sms_encoding import sms_parts
from core.models import (
    ChatIdentity,
    Conversation,
    Hold,
    KeyValue,
    Message,
    OutboxDelivery,
    PhoneNumber,
    User,
    WebhookEvent,
)
from core.money import ledger, limits
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.i18n import Html, escape, money, t
from core.platform.metrics import Metrics
from core.platform.settings import Settings
from core.providers.plan import ProviderPlan
from core.providers.sms import (
    AvailableNumber,
    InboundSms,
    InvalidRecipient,
    NotSmsCapable,
    ProviderUnavailable,
    RateLimited,
    RecipientOptedOut,
    SmsProvider,
    SmsProviderError,
    StatusUpdate,
    UnverifiedTrialNumber,
    country_of,
)

log = logging.getLogger(__name__)

# Paths of our webhook routes; webhooks/ imports them from here so the URLs we give providers and the routes
# we serve cannot drift apart.
TWILIO_SMS_PATH = "/webhooks/twilio/sms"
TWILIO_STATUS_PATH = "/webhooks/twilio/status"
VONAGE_INBOUND_PATH = "/webhooks/vonage/inbound"
VONAGE_STATUS_PATH = "/webhooks/vonage/status"

# Carrier keywords (CTIA and the major aggregators); matched on the whole message, case and punctuation ignored.
OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})

RELAY_PRIORITY = 10  # above broadcasts (0) and alerts (5): a person is waiting for this text
MAX_BODY_CHARS = 1600  # Twilio's limit for one (concatenated) message; Vonage's is similar
NUMBER_PERIOD = timedelta(days=30)
OFFER_TTL = timedelta(minutes=30)
QUOTE_TTL = timedelta(minutes=15)
PARTS_TTL = timedelta(days=1)
PARTS_WAIT = timedelta(minutes=10)  # Vonage sends the parts of one text within seconds; later means one was lost
STATUS_REF_TTL = timedelta(days=2)
EARLY_STATUS_TTL = timedelta(hours=1)

# Our own state before the provider answers is "queued"; then statuses only move up this ladder.
_STATUS_RANK = {"queued": 0, "accepted": 1, "sending": 2, "sent": 3, "delivered": 4, "undelivered": 4, "failed": 4}
FINAL_STATUSES = frozenset({"delivered", "undelivered", "failed", "rejected"})
FAILED_STATUSES = frozenset({"undelivered", "failed"})

# Delivery-failure codes worth explaining to a person; anything else reads as "the carrier did not deliver it".
_FAILURE_REASONS: dict[str, dict[str, str]] = {
    "twilio": {
        "30003": "unreachable", "30004": "blocked", "30005": "unknown_number", "30006": "landline",
        "30007": "filtered", "30008": "unknown",
    },
    "vonage": {"2": "unreachable", "3": "unknown_number", "4": "blocked", "6": "filtered", "7": "unreachable",
               "9": "unknown_number"},
}
_FAILURE_REASONS["sandbox"] = _FAILURE_REASONS["twilio"]

_PROVIDER_ERROR_KEYS: tuple[tuple[type[SmsProviderError], str], ...] = (
    (InvalidRecipient, "sms_err_invalid_recipient"),
    (RecipientOptedOut, "sms_err_opted_out"),
    (NotSmsCapable, "sms_err_not_sms_capable"),
    (UnverifiedTrialNumber, "sms_err_trial"),
    (RateLimited, "sms_err_rate_limited"),
)

# core.messaging.phone's reasons are English sentences; these keys let Spanish readers get them in Spanish.
_PHONE_REASON_KEYS = {
    "Please enter a phone number.": "sms_reason_empty",
    "Unknown country code. Start with + and the country code.": "sms_reason_country_code",
    "That doesn't look like a phone number.": "sms_reason_not_a_number",
    "The number is too short.": "sms_reason_too_short",
    "The number is too long.": "sms_reason_too_long",
    "The number has the wrong number of digits for its country.": "sms_reason_length",
    "Include the area code.": "sms_reason_area_code",
    "That number isn't valid for its country.": "sms_reason_invalid",
}


# --- errors ----------------------------------------------------------------------------------------------------


class MessagingError(Exception):
    """A rule of messaging refused the request; `key` is a text key, `details` its (escaped) arguments."""

    def __init__(self, key: str, **details: Any) -> None:
        super().__init__(key)
        self.key = key
        self.details = details

    def text(self, locale: str) -> Html:
        return t(locale, self.key, **self.details)


class NotYours(MessagingError):
    """An id that belongs to someone else (or to nobody): a forged or foreign button."""

    def __init__(self) -> None:
        super().__init__("error_not_yours")


class ProviderRefused(MessagingError):
    """The SMS provider said no; nothing was charged. The text is the provider error in plain words."""

    def __init__(self, error: SmsProviderError) -> None:
        self.error = error
        key = next((k for cls, k in _PROVIDER_ERROR_KEYS if isinstance(error, cls)), None)
        if key is None and isinstance(error, ProviderUnavailable) and error.retryable:
            key = "sms_err_unavailable"
        super().__init__(key or "sms_err_other", detail=error.message)

    def text(self, locale: str) -> Html:
        # A provider-specific sentence (e.g. "Texting that country isn't enabled") exists in English only.
        if self.key == "sms_err_other" and locale == "en":
            return t(locale, "sms_err_plain", detail=self.error.message)
        return super().text(locale)


class InvalidNumber(MessagingError):
    """The destination is not a number we can text; `reason` is core.messaging.phone's sentence."""

    def __init__(self, number: str, reason: str) -> None:
        super().__init__("sms_invalid_number", number=number)
        self.reason = reason

    def text(self, locale: str) -> Html:
        return t(locale, self.key, number=self.details["number"], reason=phone_reason(locale, self.reason))


def phone_reason(locale: str, reason: str) -> Html:
    key = _PHONE_REASON_KEYS.get(reason)
    return t(locale, key) if key else escape(reason)


# --- results ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NumberQuote:
    """What a number costs this user per month, remembered under `token` for the Confirm button."""

    token: str
    user_id: int
    e164: str
    provider: str
    country: str
    locality: str | None
    monthly_price_cents: int


@dataclass(frozen=True)
class SentSms:
    """An SMS the provider accepted (or, with `duplicate`, the one an earlier identical request sent)."""

    message_id: int
    conversation_id: int
    provider: str
    from_e164: str
    to_e164: str
    segments: int
    encoding: str
    cost_cents: int
    price_cents: int
    status: str
    duplicate: bool = False


@dataclass
class _PendingInbound:
    sms: InboundSms
    received_at: datetime
    future: asyncio.Future[InboundOutcome]


@dataclass(frozen=True)
class InboundOutcome:
    """What became of an inbound SMS: relayed, duplicate, part_stored, blocked, unknown_destination."""

    outcome: str
    message_id: int | None = None
    conversation_id: int | None = None


@dataclass(frozen=True)
class ConversationView:
    id: int
    user_id: int
    phone_number_id: int
    own_e164: str
    remote_e164: str
    contact_name: str | None
    unread_count: int
    opted_out: bool
    blocked: bool
    last_message_at: datetime
    number_active: bool
    last_body: str | None = None
    last_direction: str | None = None


@dataclass(frozen=True)
class ProviderUsage:
    provider: str
    direction: str
    messages: int
    segments: int
    cost_cents: int
    price_cents: int


# --- helpers ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def display_number(e164: str) -> str:
    """`+1 415-555-0100`; an alphanumeric sender id ("MyBank") is shown as it came. Cached: every relayed SMS
    formats two numbers, and libphonenumber takes a noticeable share of the inbound path's time."""
    try:
        return format_international(e164)
    except InvalidPhoneNumber:
        return e164


def with_markup(cost_cents: int, markup_percent: int) -> int:
    """Provider cost plus the tier's markup, rounded up to the cent so a fraction is never given away."""
    return cost_cents + (cost_cents * markup_percent + 99) // 100


def _insert(session: AsyncSession) -> Any:
    return postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert


def _short_key(prefix: str, *parts: str) -> str:
    """A KeyValue key within its 160 characters, whatever the provider ids look like."""
    raw = ":".join(parts)
    key = f"{prefix}:{raw}"
    return key if len(key) <= 160 else f"{prefix}:#{hashlib.sha256(raw.encode()).hexdigest()}"


async def _serialise(session: AsyncSession, key: str) -> None:
    """Take a transaction-scoped lock on `key` (PostgreSQL; SQLite already has a single writer)."""
    if session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


async def _kv_put(session: AsyncSession, key: str, value: dict[str, Any], expires_at: datetime | None) -> None:
    statement = _insert(session)(KeyValue).values(key=key, value=value, expires_at=expires_at)
    await session.execute(
        statement.on_conflict_do_update(index_elements=["key"], set_={"value": value, "expires_at": expires_at})
    )


async def _kv_get(session: AsyncSession, key: str) -> dict[str, Any] | None:
    row = (await session.execute(select(KeyValue.value, KeyValue.expires_at).where(KeyValue.key == key))).first()
    if row is None or (row.expires_at is not None and row.expires_at < utcnow()):
        return None
    return dict(row.value)


def _keyword(body: str) -> str:
    return re.sub(r"[^A-Za-z]", "", body).upper()


# --- the service -----------------------------------------------------------------------------------------------


class MessagingService:
    """Numbers, sending, status and inbound relay. Every method runs its own transactions; provider calls are
    always made outside a transaction so a slow provider never holds a row lock."""

    def __init__(
        self, db: Database, providers: dict[str, SmsProvider], settings: Settings, metrics: Metrics | None = None,
        *, max_batch: int = 64, max_writers: int = 2,
    ) -> None:
        if not providers:
            raise ValueError("MessagingService needs at least one SMS provider")
        self.db = db
        self.providers = dict(providers)
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.max_batch = max_batch
        self.max_writers = max_writers
        self._pending: list[_PendingInbound] = []
        self._writers: set[asyncio.Task[None]] = set()
        self.ai: Any = None  # core.ai.service.AiService, set by the composition root for automatic analysis
        self._notes: dict[tuple[str, str], str] = {}

    async def close(self) -> None:
        if self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)
        for provider in self.providers.values():
            try:
                await provider.close()
            except Exception:
                log.exception("closing SMS provider %s failed", provider.name)

    # -- URLs given to providers --

    def inbound_url(self, provider: str) -> str:
        path = VONAGE_INBOUND_PATH if provider == "vonage" else TWILIO_SMS_PATH
        return f"{self.settings.public_base_url}{path}"

    def status_url(self, provider: str) -> str:
        path = VONAGE_STATUS_PATH if provider == "vonage" else TWILIO_STATUS_PATH
        return f"{self.settings.public_base_url}{path}"

    # -- costs --

    def segment_cost(self, provider: str, country: str) -> int:
        """Cents per segment from SMS costs ("*" for unlisted countries); an unlisted provider costs the most."""
        table = self.settings.sms_costs.get(provider)
        if table is not None:
            cost = table.get(country.upper(), table.get("*"))
            if cost is not None:
                return cost
        return max([1, *(c for costs in self.settings.sms_costs.values() for c in costs.values())])

    def cheapest_provider(self, country: str, candidates: list[str] | None = None) -> str:
        """The configured provider with the lowest cost for `country`; ties go to the plan's order."""
        names = [name for name in (candidates or list(self.providers)) if name in self.providers]
        if not names:
            raise MessagingError("sms_number_unavailable")
        return min(names, key=lambda name: (self.segment_cost(name, country), names.index(name)))

    async def _call(self, provider: SmsProvider, call: Any) -> Any:
        """Await one provider call, counting its outcome and time in the provider metrics."""
        started = time.monotonic()
        try:
            result = await call
        except SmsProviderError:
            self.metrics.provider_calls.labels(provider.name, "refused").inc()
            raise
        except Exception:
            self.metrics.provider_calls.labels(provider.name, "error").inc()
            raise
        finally:
            self.metrics.provider_latency.labels(provider.name).observe(time.monotonic() - started)
        self.metrics.provider_calls.labels(provider.name, "ok").inc()
        return result

    # --- numbers ---------------------------------------------------------------------------------------------

    async def search_numbers(
        self, country: str, area_code: str | None = None, contains: str | None = None, limit: int = 8
    ) -> list[AvailableNumber]:
        """Numbers for sale across the configured providers, cheapest first; each is remembered as an offer so
        the price shown later comes from the database, not from a button."""
        country = country.upper()
        providers = list(self.providers.values())
        results = await asyncio.gather(
            *(self._call(p, p.search_numbers(country, area_code, contains, limit)) for p in providers),
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
                    await _kv_put(
                        session, _short_key("numoffer", number.e164),
                        {"provider": number.provider, "country": number.country, "locality": number.locality,
                         "cost_cents": number.monthly_cost_cents},
                        expires,
                    )
        return numbers

    async def _offer(self, e164: str) -> dict[str, Any] | None:
        async with self.db.read() as session:
            offer = await _kv_get(session, _short_key("numoffer", e164))
        if offer is not None and offer.get("provider") in self.providers:
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
        async with self.db.transaction() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise NotYours()
            markup = limits.limits_for(self.settings, user).markup_percent
            quote = NumberQuote(
                token=secrets.token_urlsafe(9), user_id=user_id, e164=e164, provider=str(offer["provider"]),
                country=str(offer["country"]), locality=offer.get("locality"),
                monthly_price_cents=with_markup(int(offer["cost_cents"]), markup),
            )
            await _kv_put(
                session, _short_key("numquote", quote.token),
                {"user_id": user_id, "e164": e164}, utcnow() + QUOTE_TTL,
            )
        return quote

    async def quoted_number(self, user_id: int, token: str) -> str:
        """The number a Confirm button's quote is for; NotYours for someone else's, num_gone when expired."""
        async with self.db.read() as session:
            quote = await _kv_get(session, _short_key("numquote", token))
        if quote is None:
            raise MessagingError("num_quote_expired")
        if int(quote["user_id"]) != user_id:
            raise NotYours()
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
        provider = self.providers[provider_name]
        try:
            bought = await self._call(
                provider, provider.buy_number(e164, self.inbound_url(provider_name), self.status_url(provider_name))
            )
        except Exception as error:
            # (A cancellation leaves the hold in place: whether the provider bought is unknown.)
            async with self.db.transaction() as session:
                await ledger.release(session, hold_id)
                if isinstance(error, SmsProviderError):
                    await session.execute(delete(KeyValue).where(KeyValue.key == _short_key("numoffer", e164)))
            if isinstance(error, SmsProviderError):
                raise ProviderRefused(error) from error
            raise
        now = utcnow()
        async with self.db.transaction() as session:
            number = PhoneNumber(
                user_id=user_id, provider=provider_name, provider_sid=bought.provider_sid, e164=bought.e164,
                country=bought.country or country_of(bought.e164), state="active", monthly_price_cents=price,
                purchased_at=now, renews_at=now + NUMBER_PERIOD,
            )
            session.add(number)
            await ledger.capture(session, hold_id)
            await session.execute(delete(KeyValue).where(KeyValue.key == _short_key("numoffer", e164)))
            await session.flush()
        log.info("user %s bought %s at %s for %s cents/month", user_id, bought.e164, provider_name, price)
        return number

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
        provider = self.providers.get(number.provider)
        if provider is not None:
            try:
                await self._call(provider, provider.release_number(number.provider_sid))
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

    # --- sending ---------------------------------------------------------------------------------------------

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
            earlier = await session.scalar(select(Hold).where(Hold.idempotency_key == hold_key))
            if earlier is not None:
                message = await session.scalar(select(Message).where(Message.hold_id == earlier.id))
                if message is not None:
                    return self._sent(message, duplicate=True)
            number, to_e164 = await self._route(session, user_id, to_raw, from_number_id)
            provider_name = number.provider
            conversation = await self._conversation(session, user_id, number.id, to_e164)
            if conversation.blocked:
                raise MessagingError("sms_blocked", number=display_number(to_e164))
            if conversation.opted_out:
                raise MessagingError("sms_opted_out", number=display_number(to_e164))
            await limits.check_sms(session, self.settings, user)
            parts = sms_parts(body)
            cost = self.segment_cost(provider_name, region_of(to_e164)) * parts.segments
            price = with_markup(cost, limits.limits_for(self.settings, user).markup_percent)
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

        provider = self.providers[provider_name]
        try:
            result = await self._call(
                provider, provider.send(from_e164, to_e164, body, self.status_url(provider_name))
            )
        except Exception as error:
            await self._send_refused(message_id, conversation_id, hold_id, error)
            if isinstance(error, SmsProviderError):
                raise ProviderRefused(error) from error
            raise

        async with self.db.transaction() as session:
            await _serialise(session, _short_key("smsstatus", provider_name, result.provider_message_id))
            message = await session.get(Message, message_id, with_for_update=True)
            assert message is not None
            message.provider_message_id = result.provider_message_id
            message.status = result.status if result.status in _STATUS_RANK else "queued"
            # cost_cents stays the cost-table figure the price was based on: providers report theirs in the
            # account's currency (EUR for most Vonage accounts), which would mix units in one column.
            message.updated_at = utcnow()
            if hold_id is not None:
                await ledger.capture(session, hold_id)
            await session.execute(
                update(Conversation).where(Conversation.id == conversation_id)
                .values(last_message_at=message.updated_at).execution_options(synchronize_session=False)
            )
            # A status callback can overtake this commit; it left its news for us.
            early_key = _short_key("smsstatus", provider_name, result.provider_message_id)
            early = await _kv_get(session, early_key)
            if early is not None:
                await session.execute(delete(KeyValue).where(KeyValue.key == early_key))
                await self._apply(session, message, StatusUpdate(
                    result.provider_message_id, early["status"], early.get("error_code"), provider_name,
                    early.get("cost_cents"),
                ))
            return self._sent(message)

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
            usable = [n for n in numbers if n.provider in self.providers]
            if not usable:
                raise MessagingError("sms_number_unavailable")
            country = region_of(to_e164)
            best = self.cheapest_provider(country, [n.provider for n in usable])
            chosen = next(n for n in usable if n.provider == best)
        elif chosen.provider not in self.providers:
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

    @staticmethod
    def _sent(message: Message, *, duplicate: bool = False) -> SentSms:
        return SentSms(
            message_id=message.id, conversation_id=message.conversation_id or 0, provider=message.provider,
            from_e164=message.from_e164, to_e164=message.to_e164, segments=message.segments,
            encoding=message.encoding, cost_cents=message.cost_cents, price_cents=message.price_cents,
            status=message.status, duplicate=duplicate,
        )

    async def remember_status_message(self, message_id: int, platform: str, chat_id: str, chat_message_id: str) -> None:
        """Where the "sent" answer to /sms landed, so delivery news can update it in place."""
        async with self.db.transaction() as session:
            await _kv_put(
                session, f"smsref:{message_id}",
                {"platform": platform, "chat_id": chat_id, "message_id": chat_message_id},
                utcnow() + STATUS_REF_TTL,
            )

    # --- delivery status -------------------------------------------------------------------------------------

    async def apply_status(self, update_: StatusUpdate) -> bool:
        """Move a sent message up queued → sent → delivered (or to failed/undelivered). Never backwards; a
        repeat is a no-op. Returns True when the status changed."""
        provider = update_.provider
        async with self.db.transaction() as session:
            key = _short_key("smsstatus", provider or "", update_.provider_message_id)
            await _serialise(session, key)
            query = select(Message).where(
                Message.provider_message_id == update_.provider_message_id, Message.direction == "outbound"
            )
            if provider:
                query = query.where(Message.provider == provider)
            message = await session.scalar(query.with_for_update())
            if message is None:
                if provider and provider in self.providers:
                    await self._remember_early(session, key, update_)
                else:
                    log.warning("status %s for unknown message %s", update_.status, update_.provider_message_id)
                return False
            return await self._apply(session, message, update_)

    async def _remember_early(self, session: AsyncSession, key: str, update_: StatusUpdate) -> None:
        earlier = await _kv_get(session, key)
        if earlier is not None and _STATUS_RANK.get(earlier["status"], 0) >= _STATUS_RANK.get(update_.status, 0):
            return
        await _kv_put(
            session, key,
            {"status": update_.status, "error_code": update_.error_code, "cost_cents": update_.cost_cents},
            utcnow() + EARLY_STATUS_TTL,
        )

    async def _apply(self, session: AsyncSession, message: Message, update_: StatusUpdate) -> bool:
        new = update_.status
        if message.status in FINAL_STATUSES or _STATUS_RANK.get(new, -1) <= _STATUS_RANK.get(message.status, 0):
            return False
        message.status = new
        message.updated_at = utcnow()
        if update_.error_code:
            message.error_code = update_.error_code[:16]
        if message.user_id is None:
            return True
        locale = await session.scalar(select(User.locale).where(User.id == message.user_id)) or "en"
        if new in FAILED_STATUSES:
            reason = _FAILURE_REASONS.get(message.provider, {}).get(update_.error_code or "", "unknown")
            notice = t(
                locale, "sms_failed_notice", to=display_number(message.to_e164),
                from_=display_number(message.from_e164), reason=t(locale, f"sms_fail_{reason}"),
                body=_preview(message.body),
            )
            buttons: tuple[tuple[outbox.OutButton, ...], ...] = ()
            if message.conversation_id:
                buttons = ((outbox.OutButton(t(locale, "sms_btn_open"), action=f"conv:{message.conversation_id}:0"),),)
            await outbox.enqueue_for_user(
                session, message.user_id, kind="sms_status",
                message=outbox.OutgoingMessage(text=notice, buttons=buttons),
                dedupe_key=f"smsfail:{message.id}", priority=RELAY_PRIORITY,
            )
        else:
            # The "sent" answer to /sms is updated in place (sent → delivered) where the chat allows edits.
            ref = await _kv_get(session, f"smsref:{message.id}")
            if ref is not None:
                open_button = outbox.OutButton(t(locale, "sms_btn_open"), action=f"conv:{message.conversation_id}:0")
                await outbox.enqueue(
                    session, platform=ref["platform"], chat_id=ref["chat_id"], kind="sms_status",
                    message=outbox.OutgoingMessage(
                        text=sent_text(locale, self._sent(message)), buttons=((open_button,),),
                        edit_message_id=ref["message_id"],
                    ),
                    user_id=message.user_id, dedupe_key=f"smsstatus:{message.id}:{new}",
                )
        return True

    # --- inbound ---------------------------------------------------------------------------------------------

    async def receive_inbound(self, sms: InboundSms, received_at: datetime | None = None) -> InboundOutcome:
        """Store an inbound SMS and queue its relay to the owner's chats, all in one transaction.

        A retried webhook is stored and relayed once; parts of a long text wait until all have come."""
        received_at = received_at or sms.received_at
        await self._prepare_note(sms)
        async with self.db.transaction() as session:
            if sms.part is not None and sms.part[1] > 1:
                joined = await self._collect_part(session, sms)
                if joined is None:
                    return InboundOutcome("part_stored")
                sms = joined
            return await self._store_inbound(session, sms, received_at)

    async def submit_inbound(self, sms: InboundSms, received_at: datetime | None = None) -> InboundOutcome:
        """receive_inbound for webhooks: SMS arriving together share one transaction (group commit).

        Returns once this SMS and its relay are committed, like receive_inbound. A batch that fails is retried
        one SMS per transaction, so a bad message only fails itself."""
        received_at = received_at or sms.received_at
        if sms.part is not None and sms.part[1] > 1:
            return await self.receive_inbound(sms, received_at)
        await self._prepare_note(sms)
        future: asyncio.Future[InboundOutcome] = asyncio.get_running_loop().create_future()
        self._pending.append(_PendingInbound(sms, received_at, future))
        if len(self._writers) < self.max_writers:
            writer = asyncio.create_task(self._write_pending(), name="inbound-sms-writer")
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        return await future

    async def _prepare_note(self, sms: InboundSms) -> None:
        """Automatic analysis for owners who turned it on, done before the transaction: the model may take up to
        2 s and no lock may wait on it. The note is picked up when the relay is built."""
        if self.ai is None or (sms.part is not None and sms.part[1] > 1):
            return
        async with self.db.read() as session:
            owner = await session.scalar(
                select(User).join(PhoneNumber, PhoneNumber.user_id == User.id)
                .where(PhoneNumber.e164 == sms.to_e164, PhoneNumber.state == "active", User.auto_analyze.is_(True))
                .order_by(PhoneNumber.id.desc()).limit(1)
            )
            if owner is None:
                return
            # A retried webhook is relayed once; it must not be analysed (and cost tokens) again either.
            if await session.scalar(select(Message.id).where(
                    Message.provider == sms.provider, Message.provider_message_id == sms.provider_message_id)):
                return
        from core.ai.service import relay_note

        analysis = await self.ai.auto_analysis(owner, sms.body)
        if analysis is not None:
            self._notes[(sms.provider, sms.provider_message_id)] = str(relay_note(owner.locale, analysis))

    async def _write_pending(self) -> None:
        # No waiting for a batch to fill: a lone SMS is written at once, and under load batches grow by themselves.
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            try:
                outcomes = await self._store_batch(batch)
            except Exception:
                log.warning("inbound batch of %d failed; writing them one by one", len(batch), exc_info=True)
                for item in batch:
                    try:
                        outcome = await self.receive_inbound(item.sms, item.received_at)
                    except Exception as error:
                        if not item.future.done():
                            item.future.set_exception(error)
                    else:
                        if not item.future.done():
                            item.future.set_result(outcome)
                continue
            for item, outcome in zip(batch, outcomes, strict=True):
                if not item.future.done():
                    item.future.set_result(outcome)

    async def _store_batch(self, batch: list[_PendingInbound]) -> list[InboundOutcome]:
        """The work of _store_inbound for many SMS, with one statement per step instead of one per SMS."""
        if len(batch) == 1:  # the usual case at low rates: _store_inbound needs one round trip fewer
            async with self.db.transaction() as session:
                return [await self._store_inbound(session, batch[0].sms, batch[0].received_at)]
        outcomes: list[InboundOutcome | None] = [None] * len(batch)
        async with self.db.transaction() as session:
            first: dict[tuple[str, str], int] = {}
            unique: list[int] = []
            for index, item in enumerate(batch):
                key = (item.sms.provider, item.sms.provider_message_id)
                if key in first:
                    outcomes[index] = InboundOutcome("duplicate")
                else:
                    first[key] = index
                    unique.append(index)
            owners = {
                row.e164: row
                for row in (
                    await session.execute(
                        select(PhoneNumber.id, PhoneNumber.user_id, PhoneNumber.e164, User.locale)
                        .join(User, User.id == PhoneNumber.user_id)
                        .where(PhoneNumber.e164.in_({batch[i].sms.to_e164 for i in unique}),
                               PhoneNumber.state == "active")
                        .order_by(PhoneNumber.id)  # the newest owner of a number wins, as in _store_inbound
                    )
                ).all()
            }
            owned: list[int] = []
            for index in unique:
                if batch[index].sms.to_e164 in owners:
                    owned.append(index)
                else:  # rare: the one-by-one path alerts the admins
                    outcomes[index] = await self._store_inbound(session, batch[index].sms, batch[index].received_at)
            if owned:
                await self._store_owned(session, batch, owned, owners, outcomes)
        return [outcome or InboundOutcome("duplicate") for outcome in outcomes]

    async def _store_owned(
        self, session: AsyncSession, batch: list[_PendingInbound], owned: list[int], owners: dict[str, Any],
        outcomes: list[InboundOutcome | None],
    ) -> None:
        pairs = {(owners[batch[i].sms.to_e164].id, batch[i].sms.from_e164) for i in owned}
        conversations = await self._conversations_for(session, pairs)
        missing = pairs - conversations.keys()
        if missing:
            now = utcnow()
            user_of = {owners[batch[i].sms.to_e164].id: owners[batch[i].sms.to_e164].user_id for i in owned}
            await session.execute(
                _insert(session)(Conversation)
                .values([
                    {"user_id": user_of[number_id], "phone_number_id": number_id, "remote_e164": remote,
                     "unread_count": 0, "opted_out": False, "blocked": False, "last_message_at": now,
                     "created_at": now}
                    for number_id, remote in sorted(missing)
                ])
                .on_conflict_do_nothing(index_elements=["phone_number_id", "remote_e164"])
            )
            conversations.update(await self._conversations_for(session, missing))
        now = utcnow()
        rows = []
        for index in owned:
            sms, owner = batch[index].sms, owners[batch[index].sms.to_e164]
            parts = sms_parts(sms.body)
            rows.append({
                "conversation_id": conversations[(owner.id, sms.from_e164)].id, "user_id": owner.user_id,
                "direction": "inbound", "provider": sms.provider, "provider_message_id": sms.provider_message_id,
                "from_e164": sms.from_e164, "to_e164": sms.to_e164, "body": sms.body,
                "media_urls": list(sms.media_urls), "status": "received", "segments": parts.segments,
                "encoding": parts.encoding, "cost_cents": 0, "price_cents": 0,
                "received_at": batch[index].received_at, "created_at": now, "updated_at": now,
            })
        table = Message.__table__
        connection = await session.connection()
        inserted = {
            (row.provider, row.provider_message_id): row.id
            for row in (
                await connection.execute(
                    _insert(session)(table)
                    .on_conflict_do_nothing(index_elements=["provider", "provider_message_id"])
                    .returning(table.c.id, table.c.provider, table.c.provider_message_id),
                    rows,
                )
            ).all()
        }
        unread: dict[int, list[Any]] = {}
        relays: list[tuple[int, int, outbox.OutgoingMessage, datetime]] = []
        for index in owned:
            item, owner = batch[index], owners[batch[index].sms.to_e164]
            conversation = conversations[(owner.id, item.sms.from_e164)]
            message_id = inserted.get((item.sms.provider, item.sms.provider_message_id))
            if message_id is None:
                outcomes[index] = InboundOutcome("duplicate", conversation_id=conversation.id)
                continue
            keyword = _keyword(item.sms.body) if len(item.sms.body) <= 20 else ""
            notice_key: str | None = None
            if keyword in OPT_OUT_KEYWORDS or keyword in OPT_IN_KEYWORDS:
                # Rare enough to take the row-at-a-time path; the relay below still says what changed.
                opting_out = keyword in OPT_OUT_KEYWORDS
                result = await session.execute(
                    update(Conversation)
                    .where(Conversation.id == conversation.id, Conversation.opted_out.is_(not opting_out))
                    .values(opted_out=opting_out)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount:
                    notice_key = "sms_stop_notice" if opting_out else "sms_start_notice"
            if conversation.blocked:
                outcomes[index] = InboundOutcome("blocked", message_id, conversation.id)
                continue
            counter = unread.setdefault(conversation.id, [0, item.received_at])
            counter[0] += 1
            counter[1] = max(counter[1], item.received_at)
            relays.append((owner.user_id, message_id, relay_message(
                owner.locale, message_id=message_id, conversation_id=conversation.id, from_e164=item.sms.from_e164,
                own_e164=owner.e164, body=item.sms.body, media_urls=item.sms.media_urls,
                contact_name=conversation.contact_name, notice_key=notice_key,
                note=self._notes.pop((item.sms.provider, item.sms.provider_message_id), None),
            ), item.received_at))
            outcomes[index] = InboundOutcome("relayed", message_id, conversation.id)
        if unread:
            table = Conversation.__table__
            connection = await session.connection()
            # Sorted, so two writers always lock conversations in the same order.
            await connection.execute(
                update(table).where(table.c.id == bindparam("b_id")).values(
                    unread_count=table.c.unread_count + bindparam("b_count"), last_message_at=bindparam("b_at"),
                ),
                [{"b_id": cid, "b_count": n, "b_at": at} for cid, (n, at) in sorted(unread.items())],
            )
        if relays:
            await self._enqueue_relays(session, relays)

    async def _conversations_for(self, session: AsyncSession, pairs: set[tuple[int, str]]) -> dict[tuple[int, str], Any]:
        found = (
            await session.execute(
                select(Conversation.id, Conversation.phone_number_id, Conversation.remote_e164, Conversation.blocked,
                       Conversation.opted_out, Conversation.contact_name)
                .where(Conversation.phone_number_id.in_({n for n, _ in pairs}),
                       Conversation.remote_e164.in_({r for _, r in pairs}))
            )
        ).all()
        return {(row.phone_number_id, row.remote_e164): row for row in found if (row.phone_number_id, row.remote_e164) in pairs}

    async def _enqueue_relays(
        self, session: AsyncSession, relays: list[tuple[int, int, outbox.OutgoingMessage, datetime]]
    ) -> None:
        """outbox.enqueue_for_user for many messages, reading the users' chats once."""
        chats: dict[int, list[tuple[str, str]]] = {}
        for row in (
            await session.execute(
                select(ChatIdentity.user_id, ChatIdentity.platform, ChatIdentity.chat_id)
                .where(ChatIdentity.user_id.in_({user_id for user_id, _, _, _ in relays}),
                       ChatIdentity.chat_id.is_not(None), ChatIdentity.unreachable_at.is_(None))
                .order_by(ChatIdentity.id)
            )
        ).all():
            chats.setdefault(row.user_id, []).append((row.platform, row.chat_id))
        rows: list[dict[str, Any]] = []
        now = utcnow()
        for user_id, message_id, relay, received_at in relays:
            seen: set[str] = set()
            payload = relay.to_payload()
            for platform, chat_id in chats.get(user_id, []):
                # The same dedupe keys enqueue_for_user gives, so either path makes a retry harmless.
                suffix = platform if platform not in seen else f"{platform}:{chat_id}"
                seen.add(platform)
                rows.append({
                    "user_id": user_id, "platform": platform, "chat_id": str(chat_id), "kind": "sms",
                    "payload": payload, "dedupe_key": f"sms:{message_id}:{suffix}", "state": "pending",
                    "priority": RELAY_PRIORITY, "attempts": 0, "next_attempt_at": now,
                    "source_received_at": received_at, "created_at": now,
                })
        if not rows:
            return
        # The first goes through outbox.enqueue, which also arranges the dispatchers' wake-up (NOTIFY); the rest
        # are the same rows in one executemany, which costs a fraction of an INSERT each.
        head = rows[0]
        await outbox.enqueue(
            session, platform=head["platform"], chat_id=head["chat_id"], kind="sms",
            message=outbox.OutgoingMessage.from_payload(head["payload"]), user_id=head["user_id"],
            dedupe_key=head["dedupe_key"], priority=RELAY_PRIORITY, source_received_at=head["source_received_at"],
        )
        if len(rows) > 1:
            table = OutboxDelivery.__table__
            connection = await session.connection()
            await connection.execute(
                _insert(session)(table).on_conflict_do_nothing(index_elements=["dedupe_key"]), rows[1:]
            )

    async def _collect_part(self, session: AsyncSession, sms: InboundSms) -> InboundSms | None:
        """Keep one part; the whole text once the last part arrives (in any order), else None."""
        assert sms.part is not None
        ref, total, index = sms.part
        seen = await session.scalar(
            _insert(session)(WebhookEvent)
            .values(provider=sms.provider, event_key=f"part:{sms.provider_message_id}"[:160], received_at=utcnow())
            .on_conflict_do_nothing(index_elements=["provider", "event_key"])
            .returning(WebhookEvent.id)
        )
        if seen is None:
            return None
        key = _short_key("smsparts", sms.provider, sms.from_e164, sms.to_e164, ref)
        first = {"parts": {}, "total": total, "provider": sms.provider, "from": sms.from_e164, "to": sms.to_e164,
                 "first_at": utcnow().isoformat()}
        await session.execute(
            _insert(session)(KeyValue).values(key=key, value=first, expires_at=utcnow() + PARTS_TTL)
            .on_conflict_do_nothing(index_elements=["key"])
        )
        row = await session.scalar(
            select(KeyValue).where(KeyValue.key == key).with_for_update().execution_options(populate_existing=True)
        )
        assert row is not None
        parts: dict[str, dict[str, Any]] = dict(row.value.get("parts") or {})
        parts[str(index)] = {"id": sms.provider_message_id, "text": sms.body, "media": list(sms.media_urls)}
        if not all(str(i) in parts for i in range(1, total + 1)):
            row.value = {**row.value, "total": total, "parts": parts}
            flag_modified(row, "value")
            return None
        await session.delete(row)
        ordered = [parts[str(i)] for i in range(1, total + 1)]
        return replace(
            sms, provider_message_id=ordered[0]["id"], body="".join(p["text"] for p in ordered),
            media_urls=tuple(url for p in ordered for url in p["media"]), part=None,
        )

    async def _insert_inbound(
        self, session: AsyncSession, sms: InboundSms, user_id: int | None, conversation_id: int | None,
        received_at: datetime,
    ) -> int | None:
        parts = sms_parts(sms.body)
        now = utcnow()
        return await session.scalar(
            _insert(session)(Message)
            .values(
                conversation_id=conversation_id, user_id=user_id, direction="inbound", provider=sms.provider,
                provider_message_id=sms.provider_message_id, from_e164=sms.from_e164, to_e164=sms.to_e164,
                body=sms.body, media_urls=list(sms.media_urls), status="received", segments=parts.segments,
                encoding=parts.encoding, cost_cents=0, price_cents=0, received_at=received_at,
                created_at=now, updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["provider", "provider_message_id"])
            .returning(Message.id)
        )

    async def _store_inbound(self, session: AsyncSession, sms: InboundSms, received_at: datetime) -> InboundOutcome:
        # One query finds the owner, their language and the thread (if any): this path runs for every SMS.
        owner = (
            await session.execute(
                select(
                    PhoneNumber.id, PhoneNumber.user_id, PhoneNumber.e164, User.locale,
                    Conversation.id.label("conversation_id"), Conversation.blocked, Conversation.opted_out,
                    Conversation.contact_name,
                )
                .join(User, User.id == PhoneNumber.user_id)
                .outerjoin(
                    Conversation,
                    and_(Conversation.phone_number_id == PhoneNumber.id, Conversation.remote_e164 == sms.from_e164),
                )
                .where(PhoneNumber.e164 == sms.to_e164, PhoneNumber.state == "active")
                .order_by(PhoneNumber.id.desc())
                .limit(1)
            )
        ).first()
        if owner is None:
            message_id = await self._insert_inbound(session, sms, None, None, received_at)
            if message_id is None:
                return InboundOutcome("duplicate")
            log.warning("inbound %s SMS %s to %s: no active number owns it", sms.provider,
                        sms.provider_message_id, sms.to_e164)
            await alert_admins(
                session, self.settings, kind="unknown destination", key=sms.to_e164[:128],
                text=escape(f"{sms.provider} delivered an SMS to {sms.to_e164}, which no user owns "
                            f"(message {message_id}). Check the number's webhook settings at the provider."),
            )
            return InboundOutcome("unknown_destination", message_id)

        conversation_id, blocked, opted_out, contact_name = (
            owner.conversation_id, bool(owner.blocked), bool(owner.opted_out), owner.contact_name
        )
        if conversation_id is None:
            conversation = await self._conversation(session, owner.user_id, owner.id, sms.from_e164)
            conversation_id, blocked, opted_out, contact_name = (
                conversation.id, conversation.blocked, conversation.opted_out, conversation.contact_name
            )
        message_id = await self._insert_inbound(session, sms, owner.user_id, conversation_id, received_at)
        if message_id is None:
            return InboundOutcome("duplicate", conversation_id=conversation_id)
        keyword = _keyword(sms.body) if len(sms.body) <= 20 else ""
        changes: dict[str, Any] = {}
        notice_key: str | None = None
        if keyword in OPT_OUT_KEYWORDS and not opted_out:
            changes["opted_out"], notice_key = True, "sms_stop_notice"
        elif keyword in OPT_IN_KEYWORDS and opted_out:
            changes["opted_out"], notice_key = False, "sms_start_notice"
        if blocked:
            if changes:
                await session.execute(
                    update(Conversation).where(Conversation.id == conversation_id).values(**changes)
                    .execution_options(synchronize_session=False)
                )
            return InboundOutcome("blocked", message_id, conversation_id)
        await session.execute(
            update(Conversation).where(Conversation.id == conversation_id)
            .values(unread_count=Conversation.unread_count + 1, last_message_at=received_at, **changes)
            .execution_options(synchronize_session=False)
        )
        relay = relay_message(
            owner.locale, message_id=message_id, conversation_id=conversation_id, from_e164=sms.from_e164,
            own_e164=owner.e164, body=sms.body, media_urls=sms.media_urls, contact_name=contact_name,
            notice_key=notice_key, note=self._notes.pop((sms.provider, sms.provider_message_id), None),
        )
        await outbox.enqueue_for_user(
            session, owner.user_id, kind="sms", message=relay, dedupe_key=f"sms:{message_id}",
            priority=RELAY_PRIORITY, source_received_at=received_at,
        )
        return InboundOutcome("relayed", message_id, conversation_id)

    async def _conversation(
        self, session: AsyncSession, user_id: int, number_id: int, remote_e164: str
    ) -> Conversation:
        """The thread between one own number and one outside number, created on first contact."""
        query = select(Conversation).where(
            Conversation.phone_number_id == number_id, Conversation.remote_e164 == remote_e164
        )
        conversation = await session.scalar(query)
        if conversation is None:
            now = utcnow()
            await session.execute(
                _insert(session)(Conversation)
                .values(user_id=user_id, phone_number_id=number_id, remote_e164=remote_e164, unread_count=0,
                        opted_out=False, blocked=False, last_message_at=now, created_at=now)
                .on_conflict_do_nothing(index_elements=["phone_number_id", "remote_e164"])
            )
            conversation = await session.scalar(query)
            assert conversation is not None
        return conversation

    # --- housekeeping ----------------------------------------------------------------------------------------

    def start_jobs(self, scheduler: Any) -> None:
        """Register the sweeper with the database-leased scheduler (core.platform.scheduler.Scheduler)."""

        async def sweep() -> None:
            await self.sweep()

        scheduler.add_periodic("messaging-sweep", sweep, 60.0)

    async def sweep(self, now: datetime | None = None) -> int:
        """Run every minute or so (the scheduler): expired offers, quotes and status notes are deleted, and a long
        text whose parts are still incomplete after PARTS_WAIT is relayed as it is, "[…]" marking what is missing,
        rather than never. Returns how many such texts were relayed."""
        now = now or utcnow()
        relayed = 0
        async with self.db.transaction() as session:
            await session.execute(
                delete(KeyValue).where(
                    KeyValue.expires_at < now,
                    or_(*(KeyValue.key.like(f"{prefix}:%") for prefix in ("numoffer", "numquote", "smsref", "smsstatus"))),
                )
            )
            rows = (await session.scalars(select(KeyValue).where(KeyValue.key.like("smsparts:%")).with_for_update())).all()
            for row in rows:
                value = row.value
                first_at = datetime.fromisoformat(value["first_at"]) if value.get("first_at") else now
                if first_at > now - PARTS_WAIT or not value.get("parts"):
                    continue
                parts = value["parts"]
                present = sorted(parts, key=int)
                body = "".join(parts[str(i)]["text"] if str(i) in parts else "[…]"
                               for i in range(1, int(value.get("total") or len(parts)) + 1))
                await session.delete(row)
                log.warning("relaying %s SMS %s with missing parts", value.get("provider"), parts[present[0]]["id"])
                await self._store_inbound(session, InboundSms(
                    provider=value["provider"], provider_message_id=parts[present[0]]["id"], from_e164=value["from"],
                    to_e164=value["to"], body=body, media_urls=tuple(u for i in present for u in parts[i]["media"]),
                ), first_at)
                relayed += 1
        return relayed

    # --- conversations ---------------------------------------------------------------------------------------

    async def conversations(self, user_id: int, offset: int = 0, limit: int = 8) -> tuple[list[ConversationView], int]:
        """The user's threads, most recent first, with unread counts and the last message's start."""
        async with self.db.read() as session:
            total = await session.scalar(
                select(func.count()).select_from(Conversation).where(Conversation.user_id == user_id)
            )
            rows = (
                await session.execute(
                    select(Conversation, PhoneNumber.e164, PhoneNumber.state)
                    .join(PhoneNumber, PhoneNumber.id == Conversation.phone_number_id)
                    .where(Conversation.user_id == user_id)
                    .order_by(Conversation.last_message_at.desc(), Conversation.id.desc())
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
            views = []
            for conversation, own, state in rows:
                last = (
                    await session.execute(
                        select(Message.body, Message.direction)
                        .where(Message.conversation_id == conversation.id)
                        .order_by(Message.created_at.desc(), Message.id.desc())
                        .limit(1)
                    )
                ).first()
                views.append(self._view(conversation, own, state, last))
        return views, int(total or 0)

    @staticmethod
    def _view(conversation: Conversation, own: str, state: str, last: Any = None) -> ConversationView:
        return ConversationView(
            id=conversation.id, user_id=conversation.user_id, phone_number_id=conversation.phone_number_id,
            own_e164=own, remote_e164=conversation.remote_e164, contact_name=conversation.contact_name,
            unread_count=conversation.unread_count, opted_out=conversation.opted_out, blocked=conversation.blocked,
            last_message_at=conversation.last_message_at, number_active=state == "active",
            last_body=last.body if last is not None else None, last_direction=last.direction if last is not None else None,
        )

    async def conversation(self, user_id: int, conversation_id: int) -> ConversationView:
        async with self.db.read() as session:
            row = (
                await session.execute(
                    select(Conversation, PhoneNumber.e164, PhoneNumber.state)
                    .join(PhoneNumber, PhoneNumber.id == Conversation.phone_number_id)
                    .where(Conversation.id == conversation_id)
                )
            ).first()
        if row is None or row[0].user_id != user_id:
            raise NotYours()
        return self._view(row[0], row[1], row[2])

    async def history(
        self, conversation_id: int, offset: int = 0, limit: int = 10, *, user_id: int | None = None
    ) -> tuple[ConversationView, list[Message], int]:
        """One page of a thread, newest first; reading it marks the thread read."""
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    select(Conversation, PhoneNumber.e164, PhoneNumber.state)
                    .join(PhoneNumber, PhoneNumber.id == Conversation.phone_number_id)
                    .where(Conversation.id == conversation_id)
                )
            ).first()
            if row is None or (user_id is not None and row[0].user_id != user_id):
                raise NotYours()
            total = await session.scalar(
                select(func.count()).select_from(Message).where(Message.conversation_id == conversation_id)
            )
            messages = list(
                (await session.scalars(
                    select(Message).where(Message.conversation_id == conversation_id)
                    .order_by(Message.created_at.desc(), Message.id.desc()).offset(offset).limit(limit)
                )).all()
            )
            if row[0].unread_count:
                await session.execute(
                    update(Conversation).where(Conversation.id == conversation_id).values(unread_count=0)
                    .execution_options(synchronize_session=False)
                )
            view = self._view(row[0], row[1], row[2])
        return replace(view, unread_count=0), messages, int(total or 0)

    async def block(self, user_id: int, conversation_id: int, blocked: bool = True) -> ConversationView:
        """Stop (or resume) relaying texts from this outside number to this number; they are still stored."""
        async with self.db.transaction() as session:
            conversation = await session.get(Conversation, conversation_id, with_for_update=True)
            if conversation is None or conversation.user_id != user_id:
                raise NotYours()
            conversation.blocked = blocked
        return await self.conversation(user_id, conversation_id)

    async def message(self, user_id: int, message_id: int) -> Message:
        async with self.db.read() as session:
            message = await session.get(Message, message_id)
        if message is None or message.user_id != user_id:
            raise NotYours()
        return message

    async def usage(self, since: datetime, user_id: int | None = None) -> list[ProviderUsage]:
        """Messages, segments, provider cost and price charged per provider and direction since `since`."""
        query = (
            select(
                Message.provider, Message.direction, func.count(), func.coalesce(func.sum(Message.segments), 0),
                func.coalesce(func.sum(Message.cost_cents), 0), func.coalesce(func.sum(Message.price_cents), 0),
            )
            .where(Message.created_at >= since, Message.status != "rejected")
            .group_by(Message.provider, Message.direction)
            .order_by(Message.provider, Message.direction)
        )
        if user_id is not None:
            query = query.where(Message.user_id == user_id)
        async with self.db.read() as session:
            rows = (await session.execute(query)).all()
        return [ProviderUsage(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]


# --- chat texts built in core (they travel through the outbox) -------------------------------------------------


def _preview(body: str, limit: int = 60) -> str:
    flat = " ".join(body.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


STATUS_ICONS = {
    "queued": "🕓", "accepted": "🕓", "sending": "🕓", "sent": "✓", "delivered": "✓✓", "received": "",
    "failed": "❌", "undelivered": "❌", "rejected": "❌",
}


def sent_text(locale: str, sent: SentSms) -> Html:
    """The answer to a sent SMS, also used to update it in place as delivery news comes."""
    return t(
        locale, "sms_sent", to=display_number(sent.to_e164), from_=display_number(sent.from_e164),
        parts=sent.segments, price=money(sent.price_cents),
        status=Html(f"{STATUS_ICONS.get(sent.status, '')} {t(locale, f'sms_status_{sent.status}')}".strip()),
    )


def relay_buttons(locale: str, message_id: int, conversation_id: int) -> tuple[tuple[outbox.OutButton, ...], ...]:
    return (
        (
            outbox.OutButton(t(locale, "sms_btn_reply"), action=f"sms_reply:{conversation_id}"),
            outbox.OutButton(t(locale, "sms_btn_suggest"), action=f"ai:sug:{message_id}"),
        ),
        (
            outbox.OutButton(t(locale, "sms_btn_analyze"), action=f"ai:an:{message_id}"),
            outbox.OutButton(t(locale, "sms_btn_block"), action=f"sms_block:{conversation_id}"),
        ),
    )


def relay_message(
    locale: str, *, message_id: int, conversation_id: int, from_e164: str, own_e164: str, body: str,
    media_urls: tuple[str, ...] | list[str] = (), contact_name: str | None = None, notice_key: str | None = None,
    note: str | None = None,
) -> outbox.OutgoingMessage:
    """A relayed SMS: who sent it, to which of the user's numbers, the text (escaped) and its links."""
    sender = display_number(from_e164)
    shown_sender: Html = escape(f"{contact_name} ({sender})") if contact_name else escape(sender)
    lines = [str(t(locale, "sms_relay_header", sender=shown_sender, to=display_number(own_e164)))]
    if body:
        lines += ["", str(escape(body))]
    for index, url in enumerate(media_urls, start=1):
        link = t(locale, "sms_media_link", n=index)
        lines.append(f'📎 <a href="{html.escape(url, quote=True)}">{link}</a>')
    if note:
        lines += ["", note]  # automatic analysis: a scam warning right on the relayed message
    if notice_key:
        lines += ["", str(t(locale, notice_key, sender=sender, to=display_number(own_e164)))]
    return outbox.OutgoingMessage(
        text="\n".join(lines),
        buttons=relay_buttons(locale, message_id, conversation_id),
        reply_context={"kind": "sms", "conversation_id": conversation_id, "message_id": message_id},
    )


# --- wiring ----------------------------------------------------------------------------------------------------


def build_messaging_service(
    settings: Settings, db: Database, metrics: Metrics | None, plan: ProviderPlan
) -> MessagingService:
    """Providers per the plan: Twilio and/or Vonage with credentials, else the sandbox twin, whose simulated
    delivery reports and replies go through the same status and inbound paths as real webhooks."""
    providers: dict[str, SmsProvider] = {}
    if "twilio" in plan.sms:
        from core.providers.twilio import TwilioProvider

        assert settings.twilio_account_sid and settings.twilio_auth_token
        providers["twilio"] = TwilioProvider(
            settings.twilio_account_sid, settings.twilio_auth_token.get_secret_value(), settings.twilio_api_base_url
        )
    if "vonage" in plan.sms:
        from core.providers.vonage import VonageProvider

        assert settings.vonage_api_key and settings.vonage_api_secret
        providers["vonage"] = VonageProvider(settings.vonage_api_key, settings.vonage_api_secret.get_secret_value())
    sandbox = None
    if not providers:
        from core.providers.sandbox_sms import SandboxSmsProvider

        sandbox = SandboxSmsProvider(success_rate=settings.sandbox_sms_success_rate)
        providers["sandbox"] = sandbox
    service = MessagingService(db, providers, settings, metrics)
    if sandbox is not None:
        sandbox.on_status = service.apply_status

        async def sandbox_inbound(sms: InboundSms) -> None:
            await service.receive_inbound(sms, utcnow())

        sandbox.on_inbound = sandbox_inbound
    return service
