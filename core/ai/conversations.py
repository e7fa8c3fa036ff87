"""The reads an AI answer starts from: the user's own SMS and conversations, and a conversation's recent turns.

Each runs in the caller's session; anything not the user's raises AiNotFound, exactly like what does not exist.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.ai.answers import AiNotFound, ConversationRef
from core.models import Conversation, Message
from core.providers import ai_prompts
from core.providers.ai import ChatTurn

HISTORY_TURNS = ai_prompts.HISTORY_MAX_TURNS
# Messages that never reached the other party are not part of what they read.
_UNSENT_STATUSES = ("failed", "undelivered", "rejected")


async def message_of(session: AsyncSession, user_id: int, message_id: int) -> Message:
    message = await session.get(Message, message_id)
    if message is None or message.user_id != user_id:
        raise AiNotFound(f"message {message_id}")
    return message


async def conversation_of(session: AsyncSession, user_id: int, conversation_id: int | None) -> ConversationRef | None:
    if conversation_id is None:
        return None
    row = await session.get(Conversation, conversation_id)
    if row is None or row.user_id != user_id:
        raise AiNotFound(f"conversation {conversation_id}")
    return ref(row)


async def history(session: AsyncSession, conversation_id: int, *, up_to: int | None = None) -> list[ChatTurn]:
    statement = select(Message.direction, Message.body).where(
        Message.conversation_id == conversation_id, Message.status.not_in(_UNSENT_STATUSES)
    )
    if up_to is not None:
        statement = statement.where(Message.id <= up_to)
    rows = (await session.execute(statement.order_by(Message.id.desc()).limit(HISTORY_TURNS))).all()
    return [ChatTurn(direction=direction, text=body) for direction, body in reversed(rows) if body]


async def recent(session: AsyncSession, user_id: int, limit: int) -> list[ConversationRef]:
    """The user's conversations, the most recently active first."""
    rows = await session.scalars(
        select(Conversation)
        .where(Conversation.user_id == user_id)
        .order_by(Conversation.last_message_at.desc(), Conversation.id.desc())
        .limit(limit)
    )
    return [ref(row) for row in rows]


def ref(row: Conversation) -> ConversationRef:
    return ConversationRef(row.id, row.phone_number_id, row.remote_e164, row.contact_name)
