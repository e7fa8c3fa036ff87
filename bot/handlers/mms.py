"""A picture sent in reply to a relayed SMS goes out as an MMS from the same number, to the same person."""

from __future__ import annotations

from bot.handlers.numbers import messaging_errors  # noqa: F401 - registers the messaging error mapper
from bot.handlers.router import Request, on_reply, pop_prompt
from bot.handlers.screens import Button, Screen, SentRef
from core.messaging.errors import MessagingError
from core.messaging.media import size_text
from core.messaging.relay import sent_text
from core.messaging.service import MessagingService


@on_reply("sms:file")
async def picture_reply(req: Request) -> Screen:
    """The picture (its caption as the text) is sent from the conversation's number and charged once."""
    messaging: MessagingService = req.services.messaging
    context = req.reply_context or {}
    try:
        conversation_id = int(context["conversation_id"])
    except (KeyError, TypeError, ValueError):
        return Screen(req.t("error_stale_button"))
    assert req.file is not None
    limit = req.services.settings.media_max_bytes
    if req.file.size > limit:
        raise MessagingError("mms_out_too_large", size=size_text(req.file.size), limit=size_text(limit))
    await pop_prompt(req.services, req.contact)
    sent = await messaging.send_mms(
        req.user.id, conversation_id, req.text, req.file.data, req.file.content_type,
        request_key=f"{req.contact.platform}:{req.file.key}",
    )

    async def remember(ref: SentRef) -> None:
        await messaging.remember_status_message(sent.message_id, ref.platform, ref.chat_id, ref.message_id)

    return Screen(
        sent_text(req.locale, sent),
        buttons=[[Button(req.t("sms_btn_open"), action=f"conv:{sent.conversation_id}:0")]],
        reply_context={"kind": "sms", "conversation_id": sent.conversation_id},
        on_sent=remember,
    )
