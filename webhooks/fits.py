"""Parsed webhook values checked against what the database stores, before anything is written.

A signed webhook with an absurd field (a 300-character message id, a 70-digit number, a text in 10^15 parts) is
still bad input: it gets a 400 here instead of failing its transaction (and the batch it shares with others) with
a 500. The lengths come from core/models.py, so they follow the schema.
"""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import InstrumentedAttribute

from core.models import Message
from core.providers.sms import InboundSms, StatusUpdate
from webhooks.bodies import BadBody

# Vonage numbers concatenated parts with one byte: 255 at most. Twilio sends at most 10 media per message.
MAX_PARTS = 255
MAX_MEDIA = 10
MAX_URL_CHARS = 2048
# A price beyond this is no price (a BigInteger column would overflow long before it).
MAX_COST_CENTS = 10**9


def _length(column: InstrumentedAttribute[str] | InstrumentedAttribute[str | None]) -> int:
    kind = column.property.columns[0].type
    assert isinstance(kind, String) and kind.length is not None
    return int(kind.length)


def _fits(what: str, value: str | None, column: InstrumentedAttribute[str] | InstrumentedAttribute[str | None]) -> None:
    if value is not None and len(value) > _length(column):
        raise BadBody(400, f"{what} longer than {_length(column)} characters")


def check_inbound(sms: InboundSms) -> None:
    """An inbound SMS whose every field fits its column; raises BadBody(400) otherwise."""
    _fits("message id", sms.provider_message_id, Message.provider_message_id)
    _fits("sender", sms.from_e164, Message.from_e164)
    _fits("recipient", sms.to_e164, Message.to_e164)
    if len(sms.media_urls) > MAX_MEDIA or any(len(url) > MAX_URL_CHARS for url in sms.media_urls):
        raise BadBody(400, f"more than {MAX_MEDIA} media or a media URL over {MAX_URL_CHARS} characters")
    if sms.part is not None:
        ref, total, index = sms.part
        if not (1 <= total <= MAX_PARTS and 1 <= index <= total) or len(ref) > _length(Message.provider_message_id):
            raise BadBody(400, f"concatenation fields out of range (at most {MAX_PARTS} parts)")


def check_media_count(num_media: str | None) -> None:
    """Twilio's NumMedia, before the parser counts up to it: at most MAX_MEDIA."""
    text = (num_media or "").strip()
    if text.isdigit() and (len(text) > 3 or int(text) > MAX_MEDIA):
        raise BadBody(400, f"more than {MAX_MEDIA} media")


def check_status(update: StatusUpdate) -> None:
    """A delivery report whose fields fit; raises BadBody(400) otherwise."""
    _fits("message id", update.provider_message_id, Message.provider_message_id)
    _fits("error code", update.error_code, Message.error_code)
    if update.cost_cents is not None and not 0 <= update.cost_cents <= MAX_COST_CENTS:
        raise BadBody(400, "price out of range")
