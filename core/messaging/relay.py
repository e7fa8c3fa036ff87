"""Chat texts built in core for SMS (they travel through the outbox): relayed texts, the "sent" card, numbers."""

from __future__ import annotations

import html
from functools import lru_cache

from core.messaging.results import SentSms
from core.platform import outbox
from core.platform.i18n import Html, escape, money, t
from core.platform.phone import InvalidPhoneNumber, format_international

RELAY_PRIORITY = 10  # above broadcasts (0) and alerts (5): a person is waiting for this text

STATUS_ICONS = {
    "queued": "🕓", "accepted": "🕓", "sending": "🕓", "sent": "✓", "delivered": "✓✓", "received": "",
    "failed": "❌", "undelivered": "❌", "rejected": "❌",
}


@lru_cache(maxsize=8192)
def display_number(e164: str) -> str:
    """`+1 415-555-0100`; an alphanumeric sender id ("MyBank") is shown as it came. Cached: every relayed SMS
    formats two numbers, and libphonenumber takes a noticeable share of the inbound path's time."""
    try:
        return format_international(e164)
    except InvalidPhoneNumber:
        return e164


def preview(body: str, limit: int = 60) -> str:
    flat = " ".join(body.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def sent_text(locale: str, sent: SentSms) -> Html:
    """The answer to a sent SMS, also used to update it in place as delivery news comes."""
    return t(
        locale, "mms_sent" if sent.media else "sms_sent", to=display_number(sent.to_e164),
        from_=display_number(sent.from_e164),
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
    note: str | None = None, provider: str | None = None,
) -> outbox.OutgoingMessage:
    """A relayed SMS: who sent it, to which of the user's numbers, the text (escaped) and its links. An MMS from
    Twilio (`provider`) carries its pictures as references the outbox fetches (core/messaging/media.py) and shows
    with the text as caption; the links need the account's credentials, so they are not shown."""
    media = tuple(outbox.MediaRef(source="twilio", url=url) for url in media_urls) if provider == "twilio" else ()
    if media:
        media_urls = ()
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
        media=media, locale=locale,
    )
