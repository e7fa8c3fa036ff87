"""Storing one inbound SMS and queueing its relay in the caller's transaction: the owner found in one query,
STOP/START keywords applied, blocked senders stored but not relayed, unknown destinations reported to admins."""

from __future__ import annotations

import functools
import logging
import re
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.admin.alerts import alert_admins
from core.api import events as api_events
from core.messaging.relay import RELAY_PRIORITY, relay_message
from core.messaging.results import InboundOutcome
from core.messaging.storage import conversation_between
from core.models import ChatIdentity, Conversation, Message, PhoneNumber, User
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import dialect_insert
from core.platform.i18n import escape
from core.platform.phone import mask_number
from core.platform.settings import Settings
from core.providers.sms import InboundSms
from core.providers.sms_encoding import sms_parts

log = logging.getLogger(__name__)

# Carrier keywords (CTIA and the major aggregators); matched on the whole message, case and punctuation ignored.
OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})

# Automatic-analysis notes waiting for their relay, by (provider, provider message id).
Notes = dict[tuple[str, str], str]
# (user id, message id, relay, received at) of one relay to queue.
Relay = tuple[int, int, outbox.OutgoingMessage, datetime]
# User id -> the (platform, chat id, busy) of each chat their relays go to, oldest first; busy: something is
# waiting or being sent there already.
Chats = dict[int, list[tuple[str, str, bool]]]
# An outcome that never leaves core.messaging.inbound: stored nothing, analyse it outside the transaction first.
NEEDS_NOTE = "needs_note"


def keyword(body: str) -> str:
    return re.sub(r"[^A-Za-z]", "", body).upper()


def inbound_row(
    sms: InboundSms, user_id: int | None, conversation_id: int | None, received_at: datetime, now: datetime
) -> dict[str, Any]:
    """The Message columns of an inbound SMS, for one INSERT here or many in the group commit."""
    parts = sms_parts(sms.body)
    return {
        "conversation_id": conversation_id, "user_id": user_id, "direction": "inbound", "provider": sms.provider,
        "provider_message_id": sms.provider_message_id, "from_e164": sms.from_e164, "to_e164": sms.to_e164,
        "body": sms.body, "media_urls": list(sms.media_urls), "status": "received", "segments": parts.segments,
        "encoding": parts.encoding, "cost_cents": 0, "price_cents": 0, "received_at": received_at,
        "created_at": now, "updated_at": now,
    }


# The statements of this path are built once, with bound parameters, rather than per SMS: building a statement
# and its cache key cost more of the CPU than anything else an SMS does here (a profile of one SMS at a time).


@functools.cache
def message_insert(dialect: str) -> Any:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id of `inbound_row`s, one or many (executemany)."""
    table = Message.__table__
    insert = dialect_insert(dialect)
    return (
        insert(table).on_conflict_do_nothing(index_elements=["provider", "provider_message_id"])
        .returning(table.c.id, table.c.provider, table.c.provider_message_id)
    )


@functools.cache
def _owner_query() -> Any:
    """The newest active owner of a number (b_to), their thread with the sender (b_from) and their chats."""
    return (
        select(
            PhoneNumber.id, PhoneNumber.user_id, PhoneNumber.e164, User.locale, User.auto_analyze,
            Conversation.id.label("conversation_id"), Conversation.blocked, Conversation.opted_out,
            Conversation.contact_name, ChatIdentity.platform, ChatIdentity.chat_id, outbox.chat_busy(),
        )
        .join(User, User.id == PhoneNumber.user_id)
        .outerjoin(
            Conversation,
            and_(Conversation.phone_number_id == PhoneNumber.id,
                 Conversation.remote_e164 == bindparam("b_from", type_=String)),
        )
        .outerjoin(ChatIdentity, owner_chats())
        .where(PhoneNumber.e164 == bindparam("b_to", type_=String), PhoneNumber.state == "active")
        .order_by(PhoneNumber.id.desc(), ChatIdentity.id)
    )


@functools.cache
def unread_update() -> Any:
    """A thread's unread count raised by b_count and its last message time set to b_at (executemany)."""
    table = Conversation.__table__
    return update(table).where(table.c.id == bindparam("b_id")).values(
        unread_count=table.c.unread_count + bindparam("b_count", type_=Integer),
        last_message_at=bindparam("b_at", type_=table.c.last_message_at.type),
    )


async def _insert_inbound(
    session: AsyncSession, sms: InboundSms, user_id: int | None, conversation_id: int | None, received_at: datetime
) -> int | None:
    row = (
        await session.execute(
            message_insert(session.bind.dialect.name), [inbound_row(sms, user_id, conversation_id, received_at, utcnow())]
        )
    ).first()
    return None if row is None else int(row.id)


def add_chat(chats: Chats, row: Any) -> None:
    """A row of an owner query that outer-joins the owner's reachable chats (with `outbox.chat_busy()`)."""
    known = chats.setdefault(row.user_id, [])
    if row.chat_id is not None and all(chat[:2] != (row.platform, row.chat_id) for chat in known):
        known.append((row.platform, row.chat_id, bool(row.busy)))


def owner_chats() -> Any:
    """The outer join of an owner query (User in its FROM) to the chats that owner's relays go to."""
    return and_(ChatIdentity.user_id == User.id, ChatIdentity.chat_id.is_not(None),
                ChatIdentity.unreachable_at.is_(None))


async def store_inbound(
    session: AsyncSession, settings: Settings, notes: Notes, sms: InboundSms, received_at: datetime,
    *, defer_auto: bool = False,
) -> InboundOutcome:
    """Store one SMS and queue its relay; with `defer_auto`, an SMS to an owner who turned automatic analysis on
    is not stored but answered NEEDS_NOTE (see batch.store_batch)."""
    # One query finds the owner, their language, the thread (if any) and the chats to relay to, a row per chat:
    # this path runs for every SMS.
    connection = await session.connection()
    rows = (await connection.execute(_owner_query(), {"b_to": sms.to_e164, "b_from": sms.from_e164})).all()
    owner = rows[0] if rows else None  # the newest owner of the number wins
    if owner is None:
        message_id = await _insert_inbound(session, sms, None, None, received_at)
        if message_id is None:
            return InboundOutcome("duplicate")
        log.warning("inbound %s SMS %s to %s: no active number owns it", sms.provider,
                    sms.provider_message_id, mask_number(sms.to_e164))
        await alert_admins(
            session, settings, kind="unknown destination", key=sms.to_e164[:128],
            text=escape(f"{sms.provider} delivered an SMS to {sms.to_e164}, which no user owns "
                        f"(message {message_id}). Check the number's webhook settings at the provider."),
        )
        return InboundOutcome("unknown_destination", message_id)
    if defer_auto and owner.auto_analyze:
        return InboundOutcome(NEEDS_NOTE)

    conversation_id, blocked, opted_out, contact_name = (
        owner.conversation_id, bool(owner.blocked), bool(owner.opted_out), owner.contact_name
    )
    if conversation_id is None:
        conversation = await conversation_between(session, owner.user_id, owner.id, sms.from_e164)
        conversation_id, blocked, opted_out, contact_name = (
            conversation.id, conversation.blocked, conversation.opted_out, conversation.contact_name
        )
    message_id = await _insert_inbound(session, sms, owner.user_id, conversation_id, received_at)
    if message_id is None:
        return InboundOutcome("duplicate", conversation_id=conversation_id)
    word = keyword(sms.body) if len(sms.body) <= 20 else ""
    changes: dict[str, Any] = {}
    notice_key: str | None = None
    if word in OPT_OUT_KEYWORDS and not opted_out:
        changes["opted_out"], notice_key = True, "sms_stop_notice"
    elif word in OPT_IN_KEYWORDS and opted_out:
        changes["opted_out"], notice_key = False, "sms_start_notice"
    if changes:  # rare: STOP or START
        await session.execute(
            update(Conversation).where(Conversation.id == conversation_id).values(**changes)
            .execution_options(synchronize_session=False)
        )
    if blocked:
        return InboundOutcome("blocked", message_id, conversation_id)
    await session.execute(unread_update(), [{"b_id": conversation_id, "b_count": 1, "b_at": received_at}])
    relay = relay_message(
        owner.locale, message_id=message_id, conversation_id=conversation_id, from_e164=sms.from_e164,
        own_e164=owner.e164, body=sms.body, media_urls=sms.media_urls, contact_name=contact_name,
        notice_key=notice_key, note=notes.pop((sms.provider, sms.provider_message_id), None), provider=sms.provider,
    )
    await api_events.message_received(
        session, owner.user_id, message_id=message_id, conversation_id=conversation_id, from_e164=sms.from_e164,
        to_e164=sms.to_e164, text_=sms.body, received_at=received_at,
    )
    chats: Chats = {}
    for row in rows:
        if row.id == owner.id:
            add_chat(chats, row)
    await enqueue_relays(session, [(owner.user_id, message_id, relay, received_at)], chats)
    return InboundOutcome("relayed", message_id, conversation_id)


async def enqueue_relays(session: AsyncSession, relays: list[Relay], chats: Chats) -> None:
    """outbox.enqueue_for_user(express=True) for one or many relays, to the chats the owners' query found
    (`add_chat`), in one statement: the first relay to a chat with nothing waiting is claimed for this process's
    dispatcher and sent at commit."""
    await outbox.enqueue_many(session, [row for _message_id, row in relay_rows(session, relays, chats)])


def relay_rows(session: AsyncSession, relays: list[Relay], chats: Chats) -> list[tuple[int, dict[str, Any]]]:
    """The outbox rows of `enqueue_relays`, each with its message's id, for outbox.enqueue_many or a statement of
    the caller's."""
    rows: list[tuple[int, dict[str, Any]]] = []
    now = utcnow()
    origin = outbox.origin_of(session)
    queued: set[tuple[str, str]] = set()  # chats this batch has queued a relay for already
    for user_id, message_id, relay, received_at in relays:
        seen: set[str] = set()
        payload = relay.to_payload()
        for platform, chat_id, busy in chats.get(user_id, []):
            # The same dedupe keys enqueue_for_user gives, so either path makes a retry harmless.
            suffix = platform if platform not in seen else f"{platform}:{chat_id}"
            seen.add(platform)
            row = outbox.delivery_row(
                user_id=user_id, platform=platform, chat_id=chat_id, kind="sms", payload=payload,
                dedupe_key=f"sms:{message_id}:{suffix}", priority=RELAY_PRIORITY, source_received_at=received_at,
                now=now, origin=origin,
            )
            if not busy and (platform, chat_id) not in queued and (claim := outbox.express_claim(session, platform)):
                row.update(claim.columns())
            queued.add((platform, chat_id))
            rows.append((message_id, row))
    return rows
