"""Files fetched at send time: the fetchers a domain registers by source name, and turning a message's MediaRefs
into Attachments (or into lines of text saying why not) just before its sender gets it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from core.platform.i18n import t
from core.platform.outbox.messages import Attachment, MediaRef, OutgoingMessage


@dataclass(frozen=True)
class Fetched:
    """What a fetcher made of one MediaRef: an attachment to send, or a line (already HTML) to add to the text
    instead (too large, gone at the provider). A failure worth retrying is raised (DeliveryError), not returned."""

    attachment: Attachment | None = None
    note: str | None = None


# (the reference, the message's locale) → what to send in its place.
MediaFetcher = Callable[[MediaRef, str], Awaitable[Fetched]]

MEDIA_FETCHERS: dict[str, MediaFetcher] = {}


def register_media_fetcher(source: str, fetcher: MediaFetcher) -> None:
    """Registered by the domain that wrote the references (messaging: "twilio"); the latest registration wins."""
    MEDIA_FETCHERS[source] = fetcher


async def resolve_media(message: OutgoingMessage) -> OutgoingMessage:
    """The message with its media fetched: attachments added, notes appended to the text, references dropped.
    A reference with no fetcher registered is named rather than lost silently."""
    if not message.media:
        return message

    async def one(ref: MediaRef) -> Fetched:
        fetcher = MEDIA_FETCHERS.get(ref.source)
        if fetcher is None:  # e.g. relayed by an instance without that provider's credentials
            what = t(message.locale, "mms_file")
            return Fetched(note=str(t(message.locale, "mms_unavailable", what=what)))
        return await fetcher(ref, message.locale)

    results = await asyncio.gather(*(one(ref) for ref in message.media))
    attachments = [result.attachment for result in results if result.attachment is not None]
    notes = [result.note for result in results if result.note]
    text = "\n".join([message.text, *notes]) if notes else message.text
    return replace(message, text=text, media=(), attachments=(*message.attachments, *attachments))
