"""What the messaging parts hand back: quotes, sent and received SMS outcomes, thread views, usage rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.models import Message


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
    media: bool = False  # an MMS: it carried a picture


@dataclass(frozen=True)
class SmsQuote:
    """What an SMS would cost now, shown before it is sent."""

    to_e164: str  # empty for a quote to a country
    country: str
    segments: int
    price_cents: int


def sent_sms(message: Message, *, duplicate: bool = False) -> SentSms:
    return SentSms(
        message_id=message.id, conversation_id=message.conversation_id or 0, provider=message.provider,
        from_e164=message.from_e164, to_e164=message.to_e164, segments=message.segments,
        encoding=message.encoding, cost_cents=message.cost_cents, price_cents=message.price_cents,
        status=message.status, duplicate=duplicate, media=bool(message.media_urls),
    )


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
