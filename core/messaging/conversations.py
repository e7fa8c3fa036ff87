"""Reading threads and their messages: the inbox, one thread's history (marking it read), blocking a sender,
one message, and usage per provider."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from core.messaging.errors import NotYours
from core.messaging.results import ConversationView, ProviderUsage
from core.models import Conversation, Message, PhoneNumber
from core.platform.db import Database


def _view(conversation: Conversation, own: str, state: str, last: Any = None) -> ConversationView:
    return ConversationView(
        id=conversation.id, user_id=conversation.user_id, phone_number_id=conversation.phone_number_id,
        own_e164=own, remote_e164=conversation.remote_e164, contact_name=conversation.contact_name,
        unread_count=conversation.unread_count, opted_out=conversation.opted_out, blocked=conversation.blocked,
        last_message_at=conversation.last_message_at, number_active=state == "active",
        last_body=last.body if last is not None else None, last_direction=last.direction if last is not None else None,
    )


class Conversations:
    """Queries over a user's threads; every id is checked to be the user's own."""

    def __init__(self, db: Database) -> None:
        self.db = db

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
                views.append(_view(conversation, own, state, last))
        return views, int(total or 0)

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
        return _view(row[0], row[1], row[2])

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
            view = _view(row[0], row[1], row[2])
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
