"""MMS both ways: the pictures of an inbound MMS fetched from the provider when the relay is sent, and a picture
sent in reply going out as an MMS, served to the provider under an unguessable link that expires.

Inbound media are stored as references (the provider's URLs) in the relay's outbox payload and fetched at send time
with the account's credentials: the database stays small, and a failed fetch is retried by the outbox like a
failed send. Anything over MEDIA_MAX_BYTES is named in the chat instead of shown."""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.messaging import pricing
from core.messaging.errors import MessagingError, NotYours
from core.messaging.gateway import SmsGateway
from core.messaging.relay import display_number
from core.messaging.results import SentSms
from core.messaging.sending import SmsSender, sent_before
from core.messaging.storage import conversation_between
from core.models import Conversation, MediaLink, Message, User
from core.money import ledger, limits
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.i18n import t
from core.platform.outbox import Attachment, DeliveryError, Fetched, MediaRef, register_media_fetcher
from core.platform.settings import Settings
from core.providers.sms import SmsProviderError
from core.providers.sms_encoding import sms_parts

log = logging.getLogger(__name__)

MEDIA_PATH = "/media"  # webhooks/media.py serves GET MEDIA_PATH/{token}
LINK_TTL = timedelta(hours=1)  # Twilio fetches the picture within seconds of the send; an hour leaves room for retries
TOKEN_BYTES = 16  # 128 bits
PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_TYPES = ("image/jpeg", "image/png", "image/webp")  # shown inline everywhere; anything else goes as a file


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def size_text(size: int) -> str:
    """`7.2 MB`, `640 KB`: how a size is named in the chat."""
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB"
    return f"{max(1, round(size / 1024))} KB"


def is_photo(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() in PHOTO_TYPES


def media_refs(provider: str, urls: tuple[str, ...] | list[str]) -> tuple[MediaRef, ...]:
    """The references the relay carries; only a provider with a registered fetcher has any (Twilio)."""
    return tuple(MediaRef(source=provider, url=url) for url in urls) if provider == "twilio" else ()


# --- inbound: fetched at send time ---------------------------------------------------------------------------


class ProviderMediaFetcher:
    """Fetches an MMS picture with the provider's credentials for the outbox (core.platform.outbox.media)."""

    def __init__(self, provider: Any, settings: Settings) -> None:
        self.provider = provider
        self.settings = settings
        self._count = 0

    async def __call__(self, ref: MediaRef, locale: str) -> Fetched:
        from core.providers.twilio import MediaTooLarge

        limit = self.settings.media_max_bytes
        try:
            data, content_type = await self.provider.fetch_media(ref.url, limit)
        except MediaTooLarge as error:
            what = t(locale, "mms_picture" if is_photo(error.content_type) else "mms_file")
            size = size_text(error.size) if error.size else t(locale, "mms_size_over", size=size_text(limit))
            return Fetched(note=str(t(locale, "mms_too_large", what=what, size=size)))
        except SmsProviderError as error:
            if error.retryable:  # an outage at the provider: the outbox tries the whole message again later
                raise DeliveryError(f"MMS media fetch failed: {error.code}") from None
            log.warning("MMS media %s could not be fetched (%s); relayed without it", ref.url, error.code)
            return Fetched(note=str(t(locale, "mms_unavailable", what=t(locale, "mms_picture"))))
        content_type = content_type.split(";")[0].strip().lower() or "application/octet-stream"
        self._count += 1
        extension = mimetypes.guess_extension(content_type) or ".bin"
        # Telegram takes photos up to 10 MB (MEDIA_MAX_BYTES may allow more): a larger picture goes as a file.
        kind = "photo" if is_photo(content_type) and len(data) <= PHOTO_MAX_BYTES else "document"
        return Fetched(attachment=Attachment(
            kind=kind, data=data, filename=f"mms-{self._count}{extension}", content_type=content_type,
        ))


def register_fetchers(gateway: SmsGateway) -> None:
    """Tell the outbox how to fetch each provider's media (those that can: Twilio)."""
    for name, provider in gateway.providers.items():
        if hasattr(provider, "fetch_media"):
            register_media_fetcher(name, ProviderMediaFetcher(provider, gateway.settings))


# --- outbound: served under an expiring link ---------------------------------------------------------------


async def create_link(session: AsyncSession, data: bytes, content_type: str, now: datetime) -> tuple[str, int]:
    """A new link to `data` for LINK_TTL: the token (shown once, in the URL) and the row's id. Expired links are
    deleted here, so the table holds an hour of pictures at most."""
    await session.execute(delete(MediaLink).where(MediaLink.expires_at < now))
    token = secrets.token_urlsafe(TOKEN_BYTES)
    link = MediaLink(
        token_hash=token_hash(token), content_type=content_type, data=base64.b64encode(data).decode("ascii"),
        size=len(data), created_at=now, expires_at=now + LINK_TTL,
    )
    session.add(link)
    await session.flush()
    return token, link.id


async def open_link(db: Database, token: str) -> tuple[bytes, str] | None:
    """The picture behind a token and its content type; None for an unknown or expired token."""
    if not 10 <= len(token) <= 64:
        return None
    async with db.read() as session:
        link = await session.scalar(
            select(MediaLink).where(MediaLink.token_hash == token_hash(token), MediaLink.expires_at > utcnow())
        )
        if link is None:
            return None
        return base64.b64decode(link.data), link.content_type


class MmsSender:
    """A picture (and an optional text) sent as an MMS from the number of a conversation, charged once from the
    MMS cost table when the provider accepts it."""

    def __init__(self, db: Database, gateway: SmsGateway, sms: SmsSender) -> None:
        self.db = db
        self.gateway = gateway
        self.settings = gateway.settings
        self.sms = sms

    def mms_cost(self, provider: str, country: str) -> int:
        table = self.settings.mms_costs.get(provider)
        if table is not None:
            cost = table.get(country.upper(), table.get("*"))
            if cost is not None:
                return cost
        return max([1, *(c for costs in self.settings.mms_costs.values() for c in costs.values())])

    async def send_mms(
        self, user_id: int, conversation_id: int, body: str, data: bytes, content_type: str, *, request_key: str,
        region: str = "US",
    ) -> SentSms:
        """Send the picture to the other side of the conversation; the same `request_key` sends and charges once."""
        body = body.strip()
        limit = self.settings.media_max_bytes
        if len(data) > limit:
            raise MessagingError("mms_out_too_large", size=size_text(len(data)), limit=size_text(limit))
        hold_key = f"mms:{request_key}"
        now = utcnow()
        async with self.db.transaction() as session:
            user = await session.scalar(select(User).where(User.id == user_id).with_for_update())
            conversation = await session.get(Conversation, conversation_id)
            if user is None or conversation is None or conversation.user_id != user_id:
                raise NotYours()
            earlier = await sent_before(session, hold_key)
            if earlier is not None:
                return earlier
            number, to_e164 = await self.sms._route(
                session, user_id, conversation.remote_e164, conversation.phone_number_id
            )
            provider_name = number.provider
            provider = self.gateway.providers.get(provider_name)
            if provider is None or not hasattr(provider, "send_mms"):
                raise MessagingError("mms_unsupported")
            conversation = await conversation_between(session, user_id, number.id, to_e164)
            if conversation.blocked:
                raise MessagingError("sms_blocked", number=display_number(to_e164))
            if conversation.opted_out:
                raise MessagingError("sms_opted_out", number=display_number(to_e164))
            await limits.check_sms(session, self.settings, user)
            cost = self.mms_cost(provider_name, number.country or region)
            price = await pricing.price_for(
                session, user_id, cost, limits.limits_for(self.settings, user).markup_percent
            )
            hold_id: int | None = None
            if price > 0:
                hold = await ledger.place_hold(
                    session, user_id, price, purpose="mms", idempotency_key=hold_key, reference=f"mms:{to_e164}"
                )
                hold_id = hold.id
            token, link_id = await create_link(session, data, content_type, now)
            parts = sms_parts(body)
            message = Message(
                conversation_id=conversation.id, user_id=user_id, direction="outbound", provider=provider_name,
                # Not the link (its token is shown once): which of ours it was, for the conversation's 📎.
                from_e164=number.e164, to_e164=to_e164, body=body, media_urls=[f"{MEDIA_PATH}#{link_id}"],
                status="queued", segments=1, encoding=parts.encoding, cost_cents=cost, price_cents=price,
                hold_id=hold_id, created_at=now, updated_at=now,
            )
            session.add(message)
            await session.flush()
            message_id, conversation_id, from_e164 = message.id, conversation.id, number.e164

        media_url = f"{self.settings.public_base_url}{MEDIA_PATH}/{token}"
        return await self.sms.hand_over(
            message_id, conversation_id, hold_id, provider_name,
            provider.send_mms(from_e164, to_e164, body, [media_url], self.gateway.status_url(provider_name)),
        )
