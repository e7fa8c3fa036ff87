"""A picture sent in reply to a relayed SMS goes out as an MMS from the same number, to the same person."""

from __future__ import annotations

from bot.handlers.numbers import messaging_errors  # noqa: F401 - registers the messaging error mapper
from bot.handlers.router import Request, on_reply, pop_prompt
from bot.handlers.screens import Screen
from bot.handlers.sms import sent_screen
from core.messaging.errors import MessagingError
from core.messaging.media import size_text
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
    return sent_screen(req, messaging, sent)
