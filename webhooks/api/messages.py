"""SMS: send (202, with Idempotency-Key), list messages newest first, and conversations, as the chat's /sms."""

from __future__ import annotations

from sqlalchemy import select

from core.models import Conversation, Message, PhoneNumber
from webhooks.api import models
from webhooks.api.problems import ApiProblem
from webhooks.api.routing import Call, Result, operation

CONVERSATIONS_MAX = 100


def plain_e164(raw: str) -> str:
    """`+` and the digits: how numbers are stored, whatever spacing or brackets were typed."""
    return "+" + "".join(ch for ch in raw if ch.isdigit())


_e164 = plain_e164


@operation("POST", "/messages", summary="Send an SMS from one of this account's numbers", tag="messages",
           status=202, response=models.MessageAccepted, body=models.MessageRequest,
           errors=(400, 402, 403, 404, 409, 422, 502), idempotent=True,
           description="Accepted for delivery: its progress comes as `message.status` events.")
async def send(call: Call) -> Result:
    request: models.MessageRequest = call.body
    own = _e164(request.from_)
    numbers = await call.services.messaging.list_numbers(call.user_id)
    number = next((n for n in numbers if n.e164 == own), None)
    if number is None:
        raise ApiProblem(404, "not-found", "`from` is not an active number of this account")
    sent = await call.services.messaging.send_sms(
        call.user_id, request.to, request.text, from_number_id=number.id, request_key=call.request_key("sms")
    )
    return 202, models.MessageAccepted(id=str(sent.message_id), state=sent.status)


@operation("GET", "/messages", summary="Messages, newest first, optionally of one number and one peer",
           tag="messages", response=models.MessageList, query=models.MessagesQuery, errors=(422,))
async def list_messages(call: Call) -> Result:
    query_ = call.query
    statement = select(Message).where(Message.user_id == call.user_id)
    if query_.number is not None:
        own = _e164(query_.number)
        statement = statement.where(
            ((Message.direction == "outbound") & (Message.from_e164 == own))
            | ((Message.direction == "inbound") & (Message.to_e164 == own))
        )
    if query_.peer is not None:
        peer = _e164(query_.peer)
        statement = statement.where(
            ((Message.direction == "outbound") & (Message.to_e164 == peer))
            | ((Message.direction == "inbound") & (Message.from_e164 == peer))
        )
    async with call.services.db.read() as session:
        rows = (await session.scalars(
            statement.order_by(Message.created_at.desc(), Message.id.desc()).limit(query_.limit)
        )).all()
    data = [
        models.Message(
            id=str(m.id), direction=m.direction, from_=m.from_e164, to=m.to_e164, text=m.body,  # type: ignore[arg-type]
            state=m.status, conversation_id=None if m.conversation_id is None else str(m.conversation_id),
            created_at=m.created_at,
        )
        for m in rows
    ]
    return 200, models.MessageList(data=data)


@operation("GET", "/conversations", summary="Conversations, most recent first", tag="messages",
           response=models.ConversationList)
async def list_conversations(call: Call) -> Result:
    async with call.services.db.read() as session:
        rows = (await session.execute(
            select(Conversation, PhoneNumber.e164)
            .join(PhoneNumber, PhoneNumber.id == Conversation.phone_number_id)
            .where(Conversation.user_id == call.user_id)
            .order_by(Conversation.last_message_at.desc(), Conversation.id.desc())
            .limit(CONVERSATIONS_MAX)
        )).all()
    data = [
        models.Conversation(id=str(c.id), number=own, peer=c.remote_e164, unread_count=c.unread_count,
                            blocked=c.blocked, last_message_at=c.last_message_at)
        for c, own in rows
    ]
    return 200, models.ConversationList(data=data)
