"""The database schema as SQLAlchemy 2 typed models; integrity rules live here as constraints too."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from core.platform.clock import utcnow
from core.platform.column_types import BigId, UTCDateTime
from core.platform.crypto import EncryptedJSON, EncryptedText

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


ROLES = ("user", "admin")
USER_STATUSES = ("active", "banned")
TIERS = ("free", "pro", "business")
PLATFORMS = ("telegram", "discord", "console")
# The outbox also POSTs integrators' events to their webhook endpoints (core.api.delivery).
DELIVERY_PLATFORMS = (*PLATFORMS, "webhook")
LEDGER_KINDS = (
    "signup_bonus", "topup", "topup_refund", "grant", "hold", "capture", "release", "refund", "merge",
    "renewal",
)
HOLD_STATES = ("held", "captured", "released", "refunded")
PAYMENT_STATES = ("paid", "refunded")
VERIFICATION_STATES = ("requested", "active", "code_received", "completed", "cancelled", "expired", "failed")
NUMBER_STATES = ("active", "released")
# What a call to an owned number gets: a voicemail, nothing (rejected), or forwarded (core.messaging.calls).
CALL_MODES = ("voicemail", "off", "forward")
DIRECTIONS = ("inbound", "outbound")
MESSAGE_STATUSES = ("received", "accepted", "queued", "sending", "sent", "delivered", "failed", "undelivered", "rejected")
DELIVERY_STATES = ("pending", "sending", "sent", "parked", "cancelled")
# A delivery still holding its place in its chat's queue (outbox.ACTIVE_STATES), as SQL with the states inline:
# a partial index is only used for a condition the planner can match without knowing bound values.
ACTIVE_DELIVERY = text("state IN ('pending', 'sending')")
PENDING_DELIVERY = text("state = 'pending'")
BROADCAST_STATES = ("draft", "running", "paused", "cancelled", "finished")
RECIPIENT_STATES = ("pending", "sending", "sent", "failed", "blocked", "skipped")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class User(Base):
    """One person's account, shared by every chat identity linked to it."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        CheckConstraint(_in("status", USER_STATUSES), name="status"),
        CheckConstraint(_in("tier", TIERS), name="tier"),
        CheckConstraint("held_cents >= 0", name="held_not_negative"),
        CheckConstraint("balance_cents - held_cents >= 0", name="available_not_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="user")
    status: Mapped[str] = mapped_column(String(16), default="active")
    tier: Mapped[str] = mapped_column(String(16), default="free")
    locale: Mapped[str] = mapped_column(String(8), default="en")
    display_name: Mapped[str | None] = mapped_column(String(128))
    # Cached sums of the ledger; changed only in the transaction that writes the entry (tests compare them).
    balance_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    held_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    ai_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_analyze: Mapped[bool] = mapped_column(Boolean, default=False)
    announcements: Mapped[bool] = mapped_column(Boolean, default=True)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    identities: Mapped[list[ChatIdentity]] = relationship(back_populates="user", foreign_keys="ChatIdentity.user_id")

    @property
    def available_cents(self) -> int:
        return self.balance_cents - self.held_cents


class ChatIdentity(Base):
    """A user's presence on one chat platform; where the outbox sends to."""

    __tablename__ = "chat_identities"
    __table_args__ = (
        UniqueConstraint("platform", "platform_user_id"),
        CheckConstraint(_in("platform", PLATFORMS), name="platform"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(16))
    platform_user_id: Mapped[str] = mapped_column(String(64))
    chat_id: Mapped[str | None] = mapped_column(String(64))
    username: Mapped[str | None] = mapped_column(String(64), index=True)
    language_code: Mapped[str | None] = mapped_column(String(16))
    unreachable_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship(back_populates="identities", foreign_keys=[user_id])


class ApiKey(Base):
    """A programmatic key; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(12))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class ApiEvent(Base):
    """An integrator API event (verification.code, message.received…), written with the change that caused it
    and kept 24 hours for `?after=` replay."""

    __tablename__ = "api_events"
    __table_args__ = (Index("ix_api_events_user_id", "user_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))
    # Encrypted at rest: it holds codes and SMS texts.
    data: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON)
    dedupe_key: Mapped[str | None] = mapped_column(String(160), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ApiIdempotency(Base):
    """One `Idempotency-Key` of an account: the request's hash and, once answered, the answer to repeat."""

    __tablename__ = "api_idempotency"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    # Encrypted at rest: an answer may hold a code or a message text.
    response: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ApiWebhookEndpoint(Base):
    """Where an integrator's events are also POSTed, signed with the endpoint's secret."""

    __tablename__ = "api_webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    # Encrypted at rest, as the contract says of integrators' webhook secrets.
    secret: Mapped[str] = mapped_column(EncryptedText)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column()


class LinkCode(Base):
    """A one-time code that joins a second chat identity to an account."""

    __tablename__ = "link_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Hold(Base):
    """Money set aside for a purchase until it is captured, released or (after capture) refunded."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint(_in("state", HOLD_STATES), name="state"),
        CheckConstraint("amount_cents > 0", name="amount_positive"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="held")
    purpose: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str | None] = mapped_column(String(128))
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column()


class LedgerEntry(Base):
    """One change of a balance: `amount_cents` moves the balance, `held_delta_cents` the held part of it."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint(_in("kind", LEDGER_KINDS), name="kind"),
        Index("ix_ledger_entries_user_created", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    amount_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    held_delta_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    idempotency_key: Mapped[str] = mapped_column(String(160), unique=True)
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("holds.id"), index=True)
    reference: Mapped[str | None] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(String(256))
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Payment(Base):
    """A top-up received from a payment provider (Telegram Stars), credited once per charge id."""

    __tablename__ = "payments"
    __table_args__ = (
        UniqueConstraint("provider", "provider_charge_id"),
        CheckConstraint(_in("state", PAYMENT_STATES), name="state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    provider_charge_id: Mapped[str] = mapped_column(String(128))
    currency: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger)
    credited_cents: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="paid")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    refunded_at: Mapped[datetime | None] = mapped_column()


SUBSCRIPTION_CHANNELS = ("stars", "balance")
SUBSCRIPTION_STATES = ("active", "lapsed")


class Subscription(Base):
    """An account's paid tier (core.money.subscriptions): held until `paid_until`, then renewed or lapsed to free."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint(_in("tier", TIERS), name="tier"),
        CheckConstraint(_in("channel", SUBSCRIPTION_CHANNELS), name="channel"),
        CheckConstraint(_in("state", SUBSCRIPTION_STATES), name="state"),
        Index("ix_subscriptions_state_paid_until", "state", "paid_until"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    tier: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16))  # stars: Telegram renews it; balance: our job does
    state: Mapped[str] = mapped_column(String(16), default="active")
    auto_renew: Mapped[bool] = mapped_column(Boolean, default=True)
    paid_until: Mapped[datetime] = mapped_column()
    # Stars: who pays and the latest charge, for editUserStarSubscription.
    platform_user_id: Mapped[str | None] = mapped_column(String(64))
    charge_id: Mapped[str | None] = mapped_column(String(160))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SubscriptionPayment(Base):
    """One paid period of a subscription: a Telegram Stars charge, or a monthly debit of the balance."""

    __tablename__ = "subscription_payments"
    __table_args__ = (UniqueConstraint("provider", "charge_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    provider: Mapped[str] = mapped_column(String(32))  # telegram_stars or balance
    # Telegram's telegram_payment_charge_id, or for the balance the period's key (one per account and period).
    charge_id: Mapped[str] = mapped_column(String(160))
    tier: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(8))  # XTR or USD (cents)
    amount: Mapped[int] = mapped_column(BigInteger)
    paid_until: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Verification(Base):
    """A rented number waiting for one service's code, and its money."""

    __tablename__ = "verifications"
    __table_args__ = (
        UniqueConstraint("provider", "provider_verification_id"),
        CheckConstraint(_in("state", VERIFICATION_STATES), name="state"),
        Index("ix_verifications_state_ends", "state", "ends_at"),
        Index("ix_verifications_user_created", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    provider: Mapped[str] = mapped_column(String(32))
    provider_verification_id: Mapped[str | None] = mapped_column(String(128))
    service: Mapped[str] = mapped_column(String(64))
    service_name: Mapped[str] = mapped_column(String(128))
    phone_number: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="requested")
    price_cents: Mapped[int] = mapped_column(BigInteger)
    provider_cost_cents: Mapped[int] = mapped_column(BigInteger)
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("holds.id"))
    # Encrypted at rest, like the SMS the code came in.
    code: Mapped[str | None] = mapped_column(EncryptedText)
    sms_text: Mapped[str | None] = mapped_column(EncryptedText)
    failure_reason: Mapped[str | None] = mapped_column(String(256))
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    ends_at: Mapped[datetime | None] = mapped_column()
    code_received_at: Mapped[datetime | None] = mapped_column()
    code_delivered_at: Mapped[datetime | None] = mapped_column()
    status_platform: Mapped[str | None] = mapped_column(String(16))
    status_chat_id: Mapped[str | None] = mapped_column(String(64))
    status_message_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class VerificationSms(Base):
    """Each SMS a verification's number received (the first carries the code; later ones are shown too)."""

    __tablename__ = "verification_sms"
    __table_args__ = (UniqueConstraint("verification_id", "provider_sms_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    verification_id: Mapped[int] = mapped_column(ForeignKey("verifications.id", ondelete="CASCADE"))
    provider_sms_id: Mapped[str] = mapped_column(String(128))
    # Encrypted at rest; `text_hash` (Keyring.fingerprint of dedupe_text) finds the same text seen twice.
    text: Mapped[str] = mapped_column(EncryptedText)
    text_hash: Mapped[str] = mapped_column(String(64))
    code: Mapped[str | None] = mapped_column(EncryptedText)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    @staticmethod
    def dedupe_text(verification_id: int, text: str) -> str:
        """What is fingerprinted: the verification (equal texts of two verifications never match) and the text
        with its spacing normalised (a webhook and the SMS list may trim or wrap it differently)."""
        return f"{verification_id}\n{' '.join(text.split())}"


class PhoneNumber(Base):
    """A number an account owns (rented monthly) for two-way SMS."""

    __tablename__ = "phone_numbers"
    __table_args__ = (
        UniqueConstraint("provider", "provider_sid"),
        CheckConstraint(_in("state", NUMBER_STATES), name="state"),
        CheckConstraint(_in("call_mode", CALL_MODES), name="call_mode"),
        Index("ix_phone_numbers_e164_state", "e164", "state"),
        Index("ix_phone_numbers_state_renews", "state", "renews_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    provider_sid: Mapped[str] = mapped_column(String(128))
    e164: Mapped[str] = mapped_column(String(32))
    country: Mapped[str] = mapped_column(String(2))
    state: Mapped[str] = mapped_column(String(16), default="active")
    monthly_price_cents: Mapped[int] = mapped_column(BigInteger)
    purchased_at: Mapped[datetime] = mapped_column(default=utcnow)
    renews_at: Mapped[datetime | None] = mapped_column()
    released_at: Mapped[datetime | None] = mapped_column()
    # Rentals (core.messaging.renewals): charged monthly from the balance while on; the renewal the owner was told
    # the balance does not cover; set when an unpaid number's release at the provider began (no renewal after it).
    auto_renew: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    low_balance_notice_for: Mapped[datetime | None] = mapped_column()
    release_started_at: Mapped[datetime | None] = mapped_column()
    call_mode: Mapped[str] = mapped_column(String(16), default="voicemail", server_default="voicemail")
    call_forward_to: Mapped[str | None] = mapped_column(String(32))  # E.164, when call_mode is "forward"


class Conversation(Base):
    """The thread between one of our numbers and one outside number."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("phone_number_id", "remote_e164"),
        Index("ix_conversations_user_last", "user_id", "last_message_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    phone_number_id: Mapped[int] = mapped_column(ForeignKey("phone_numbers.id"))
    remote_e164: Mapped[str] = mapped_column(String(32))
    contact_name: Mapped[str | None] = mapped_column(String(128))
    unread_count: Mapped[int] = mapped_column(Integer, default=0)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    last_message_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """One SMS in or out, with its provider, cost and delivery status."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("provider", "provider_message_id"),
        CheckConstraint(_in("direction", DIRECTIONS), name="direction"),
        CheckConstraint(_in("status", MESSAGE_STATUSES), name="status"),
        Index("ix_messages_conversation_created", "conversation_id", "created_at"),
        Index("ix_messages_created_direction", "created_at", "direction"),
        Index("ix_messages_user_created", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    direction: Mapped[str] = mapped_column(String(8))
    provider: Mapped[str] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    from_e164: Mapped[str] = mapped_column(String(32))
    to_e164: Mapped[str] = mapped_column(String(32))
    # Encrypted at rest: the database cannot filter, sort or search on the text.
    body: Mapped[str] = mapped_column(EncryptedText)
    media_urls: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(16))
    error_message: Mapped[str | None] = mapped_column(String(256))
    segments: Mapped[int] = mapped_column(Integer, default=1)
    encoding: Mapped[str] = mapped_column(String(8), default="GSM-7")
    cost_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    price_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("holds.id"))
    received_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Call(Base):
    """One call to an owned number: how it was answered (its number's call mode then) and its voicemail, kept
    once per CallSid and RecordingSid so a webhook delivered twice has no second effect."""

    __tablename__ = "calls"
    __table_args__ = (
        CheckConstraint(_in("mode", CALL_MODES), name="mode"),
        Index("ix_calls_user_received", "user_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32), default="twilio")
    call_sid: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    phone_number_id: Mapped[int] = mapped_column(ForeignKey("phone_numbers.id"))
    from_e164: Mapped[str] = mapped_column(String(32))  # "" when the caller withheld their number
    mode: Mapped[str] = mapped_column(String(16))
    forwarded_to: Mapped[str | None] = mapped_column(String(32))
    recording_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    recording_seconds: Mapped[int | None] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxDelivery(Base):
    """A message waiting to be sent to a chat; written in the same transaction as what caused it."""

    __tablename__ = "outbox_deliveries"
    __table_args__ = (
        CheckConstraint(_in("state", DELIVERY_STATES), name="state"),
        CheckConstraint(_in("platform", DELIVERY_PLATFORMS), name="platform"),
        Index("ix_outbox_deliveries_state_next", "state", "next_attempt_at"),
        Index("ix_outbox_deliveries_chat", "platform", "chat_id", "id"),
        # Whether a chat has something waiting (outbox.chat_busy, on every inbound SMS) without walking its
        # sent history: only the few active rows are in it. By id too, for the claim's check of a candidate's
        # chat for an earlier one (core/platform/outbox/claim_plan.py).
        Index("ix_outbox_deliveries_active_chat", "platform", "chat_id", "id", postgresql_where=ACTIVE_DELIVERY,
              sqlite_where=ACTIVE_DELIVERY),
        # The claim's walk, in its order, over the pending rows only.
        Index("ix_outbox_deliveries_pending_order", text("priority DESC"), "id", postgresql_where=PENDING_DELIVERY,
              sqlite_where=PENDING_DELIVERY),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    platform: Mapped[str] = mapped_column(String(16))
    chat_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    # Encrypted at rest: it holds relayed SMS texts, codes and AI notes as the chat will show them.
    payload: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON)
    dedupe_key: Mapped[str | None] = mapped_column(String(160), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column()
    # The live instance (its liveness key) whose claim this is: the claim ends when that instance dies.
    claimed_by: Mapped[int | None] = mapped_column(Integer)
    # The live instance that enqueued it (its liveness key), which sends it unless it has not within a second:
    # each instance sends what it accepted, so its share of the bot's flood budget meets its share of the load.
    origin: Mapped[int | None] = mapped_column(Integer)
    # When the current run of transient failures began: they park a delivery only after a day of them.
    failing_since: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(String(512))
    platform_message_id: Mapped[str | None] = mapped_column(String(64))
    source_received_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()


class WebhookEvent(Base):
    """A provider event already handled; its key makes retries harmless."""

    __tablename__ = "webhook_events"
    __table_args__ = (UniqueConstraint("provider", "event_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    event_key: Mapped[str] = mapped_column(String(160))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChatUpdate(Base):
    """A chat update (a Telegram update, a Discord interaction) already claimed, so a redelivery has no effect."""

    __tablename__ = "chat_updates"

    platform: Mapped[str] = mapped_column(String(16), primary_key=True)
    update_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Broadcast(Base):
    """An admin's announcement, its segment and its progress."""

    __tablename__ = "broadcasts"
    __table_args__ = (CheckConstraint(_in("state", BROADCAST_STATES), name="state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created_by_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    text: Mapped[str] = mapped_column(Text)
    photo: Mapped[str | None] = mapped_column(String(512))
    buttons: Mapped[list[Any]] = mapped_column(default=list)
    segment: Mapped[dict[str, Any]] = mapped_column(default=dict)
    paid: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="draft")
    total: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    blocked: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column()
    progress_chat_id: Mapped[str | None] = mapped_column(String(64))
    progress_message_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class BroadcastRecipient(Base):
    """One user's copy of a broadcast; its state makes resumption exactly-once."""

    __tablename__ = "broadcast_recipients"
    __table_args__ = (
        CheckConstraint(_in("state", RECIPIENT_STATES), name="state"),
        Index("ix_broadcast_recipients_state", "broadcast_id", "state"),
    )

    broadcast_id: Mapped[int] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"), primary_key=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("chat_identities.id"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(256))
    sent_at: Mapped[datetime | None] = mapped_column()


class AuditLog(Base):
    """Who did what to whom, with the values before and after."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_target_created", "target_user_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(32))
    target_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    before: Mapped[dict[str, Any]] = mapped_column(default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class MessageTemplate(Base):
    """A user's own SMS template with `{variables}`."""

    __tablename__ = "message_templates"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AiUsage(Base):
    """Model tokens one user spent on one UTC day."""

    __tablename__ = "ai_usage"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)


class AlertState(Base):
    """When an alert of one kind and key was last sent, so an outage produces one message."""

    __tablename__ = "alert_state"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    suppressed: Mapped[int] = mapped_column(Integer, default=0)


class JobLease(Base):
    """Periodic work claimed through the database, so only one instance runs it at a time."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    lease_until: Mapped[datetime] = mapped_column()


class KeyValue(Base):
    """Small durable facts (conversation state of a chat dialog, cached provider data)."""

    __tablename__ = "key_values"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    # Encrypted at rest: values hold SMS parts waiting for the rest, AI drafts and what a chat dialog typed.
    value: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON)
    expires_at: Mapped[datetime | None] = mapped_column(index=True)


class MediaLink(Base):
    """A picture we send as an MMS, served to the provider at `/media/<token>` until `expires_at`: only the token's
    SHA-256 is kept, so the database alone cannot make the link."""

    __tablename__ = "media_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    content_type: Mapped[str] = mapped_column(String(100))
    # Encrypted at rest: the picture, in base64.
    data: Mapped[str] = mapped_column(EncryptedText)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
