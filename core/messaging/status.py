"""Delivery status of sent SMS: provider callbacks move a message up its ladder (never back), statuses that
overtake our own commit are kept for the sender, and the owner hears of failures and progress in chat."""

from __future__ import annotations

import logging
from collections.abc import Container
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.api import events as api_events
from core.messaging.relay import RELAY_PRIORITY, display_number, preview, sent_text
from core.messaging.results import sent_sms
from core.messaging.storage import kv_get, kv_put, serialise, short_key
from core.models import KeyValue, Message, OutboxDelivery, User
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.i18n import t
from core.providers.sms import StatusUpdate

log = logging.getLogger(__name__)

STATUS_REF_TTL = timedelta(days=2)
EARLY_STATUS_TTL = timedelta(hours=1)

# Our own state before the provider answers is "queued"; then statuses only move up this ladder.
STATUS_RANK = {"queued": 0, "accepted": 1, "sending": 2, "sent": 3, "delivered": 4, "undelivered": 4, "failed": 4}
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


def status_key(provider: str, provider_message_id: str) -> str:
    """The key both the sender and status callbacks lock on, and under which an early status waits."""
    return short_key("smsstatus", provider, provider_message_id)


class DeliveryStatus:
    """Status callbacks for outbound messages; `providers` are the names whose early statuses are kept."""

    def __init__(self, db: Database, providers: Container[str]) -> None:
        self.db = db
        self.providers = providers

    async def apply_status(self, update_: StatusUpdate) -> bool:
        """Move a sent message up queued → sent → delivered (or to failed/undelivered). Never backwards; a
        repeat is a no-op. Returns True when the status changed."""
        provider = update_.provider
        async with self.db.transaction() as session:
            key = status_key(provider or "", update_.provider_message_id)
            await serialise(session, key)
            query = select(Message).where(
                Message.provider_message_id == update_.provider_message_id, Message.direction == "outbound"
            )
            if provider:
                query = query.where(Message.provider == provider)
            message = await session.scalar(query.with_for_update())
            if message is None:
                if provider and provider in self.providers:
                    await _remember_early(session, key, update_)
                else:
                    log.warning("status %s for unknown message %s", update_.status, update_.provider_message_id)
                return False
            return await advance(session, message, update_)

    async def remember_status_message(self, message_id: int, platform: str, chat_id: str, chat_message_id: str) -> None:
        """Where the "sent" answer to /sms landed, so delivery news can update it in place."""
        async with self.db.transaction() as session:
            await kv_put(
                session, f"smsref:{message_id}",
                {"platform": platform, "chat_id": chat_id, "message_id": chat_message_id},
                utcnow() + STATUS_REF_TTL,
            )


async def _remember_early(session: AsyncSession, key: str, update_: StatusUpdate) -> None:
    earlier = await kv_get(session, key)
    if earlier is not None and STATUS_RANK.get(earlier["status"], 0) >= STATUS_RANK.get(update_.status, 0):
        return
    await kv_put(
        session, key,
        {"status": update_.status, "error_code": update_.error_code, "cost_cents": update_.cost_cents},
        utcnow() + EARLY_STATUS_TTL,
    )


async def apply_early_status(session: AsyncSession, message: Message, provider: str, provider_message_id: str) -> None:
    """A status callback can overtake the sender's commit; it left its news for the sender to apply now."""
    early_key = status_key(provider, provider_message_id)
    early = await kv_get(session, early_key)
    if early is not None:
        await session.execute(delete(KeyValue).where(KeyValue.key == early_key))
        await advance(session, message, StatusUpdate(
            provider_message_id, early["status"], early.get("error_code"), provider, early.get("cost_cents"),
        ))


async def advance(session: AsyncSession, message: Message, update_: StatusUpdate) -> bool:
    """Apply one status to a locked message and tell its owner; False when it would not move the message up."""
    new = update_.status
    if message.status in FINAL_STATUSES or STATUS_RANK.get(new, -1) <= STATUS_RANK.get(message.status, 0):
        return False
    message.status = new
    message.updated_at = utcnow()
    if update_.error_code:
        message.error_code = update_.error_code[:16]
    await api_events.message_status(session, message)
    if message.user_id is None:
        return True
    locale = await session.scalar(select(User.locale).where(User.id == message.user_id)) or "en"
    failed = new in FAILED_STATUSES
    text = sent_text(locale, sent_sms(message))
    if failed:
        reason = _FAILURE_REASONS.get(message.provider, {}).get(update_.error_code or "", "unknown")
        text = t(
            locale, "sms_failed_notice", to=display_number(message.to_e164),
            from_=display_number(message.from_e164), reason=t(locale, f"sms_fail_{reason}"),
            body=preview(message.body),
        )
    buttons: tuple[tuple[outbox.OutButton, ...], ...] = ()
    if message.conversation_id:
        buttons = ((outbox.OutButton(t(locale, "sms_btn_open"), action=f"conv:{message.conversation_id}:0"),),)
    # One SMS, one status message: the answer to /sms is edited in place (queued → sent → delivered, or the
    # failure and why), where the chat allows edits; a chat that does not gets the news as a new message.
    ref = await kv_get(session, f"smsref:{message.id}")
    if ref is not None:
        await outbox.enqueue(
            session, platform=ref["platform"], chat_id=ref["chat_id"], kind="sms_status",
            message=outbox.OutgoingMessage(
                text=text, buttons=buttons, edit_message_id=await _card_id(session, message.id, ref["message_id"]),
            ),
            user_id=message.user_id, dedupe_key=f"smsstatus:{message.id}:{new}",
            priority=RELAY_PRIORITY if failed else 0,
        )
    elif failed:
        # Sent without a chat answer to edit (the API, a scheduled text): a failure is still news worth a message.
        await outbox.enqueue_for_user(
            session, message.user_id, kind="sms_status", message=outbox.OutgoingMessage(text=text, buttons=buttons),
            dedupe_key=f"smsfail:{message.id}", priority=RELAY_PRIORITY,
        )
    return True


async def _card_id(session: AsyncSession, message_id: int, first_id: str) -> str:
    """Where the status message is now: an edit the chat refused (too old, deleted) came as a new message, and
    later news edits that one instead of adding another."""
    latest = await session.scalar(
        select(OutboxDelivery.platform_message_id)
        .where(
            OutboxDelivery.dedupe_key.in_([f"smsstatus:{message_id}:{status}" for status in STATUS_RANK]),
            OutboxDelivery.platform_message_id.is_not(None),
        )
        .order_by(OutboxDelivery.id.desc())
        .limit(1)
    )
    return latest or first_id
