"""MMS both ways against the fake Twilio and the fake chat platforms: an MMS arrives as a photo with its caption
(Telegram) and as an attachment (Discord), an album, a picture over MEDIA_MAX_BYTES named in the chat, and a photo
sent in reply going out as an MMS whose MediaUrl Twilio can fetch, charged once."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from sqlalchemy import func, select

from core.messaging.service import MessagingService
from core.models import ChatIdentity, Hold, LedgerEntry, MediaLink, Message
from core.platform.db import Database
from core.providers.sms import InboundSms
from core.providers.twilio import TwilioProvider
from tests.bot.test_discord import discord_app
from tests.core.messaging.test_service import balance, give_number
from tests.fakes.telegram_api import FakeUser
from tests.fakes.twilio_api import FakeTwilioServer
from tests.harness import TelegramHarness, buttons, telegram_app
from webhooks import twilio as twilio_webhooks
from webhooks.server import WebServer, create_app

OWN = "+14155550100"
PEER = "+14155550199"
# Not a real JPEG: nothing on the way decodes it, and Telegram's fake keeps the bytes it was given.
SMALL = b"\xff\xd8\xff\xe0" + b"small picture" * 80
LARGE = b"\xff\xd8\xff\xe0" + b"x" * 200_000
CAP = 100_000


@asynccontextmanager
async def mms_app(db: Database, twilio: FakeTwilioServer) -> AsyncIterator[tuple[TelegramHarness, WebServer]]:
    """The Telegram front end with SMS at the fake Twilio, and our webhook server (Twilio routes, /media)."""
    async with telegram_app(
        db, twilio_account_sid=twilio.account_sid, twilio_auth_token=twilio.auth_token, media_max_bytes=CAP,
    ) as h:
        await h.services.messaging.close()
        provider = TwilioProvider(twilio.account_sid, twilio.auth_token, twilio.base_url, backoff_seconds=0.001)
        h.services.messaging = MessagingService(db, {"twilio": provider}, h.services.settings, h.services.metrics)
        web = WebServer(create_app(h.services, [twilio_webhooks.add_routes]), "127.0.0.1", 0)
        await web.start()
        h.services.settings.public_base_url = f"http://127.0.0.1:{web.port}"
        try:
            yield h, web
        finally:
            await web.stop()


async def _owner(h: TelegramHarness, user: FakeUser) -> int:
    await h.command(user, "/start")
    async with h.services.db.read() as session:
        user_id = await session.scalar(
            select(ChatIdentity.user_id).where(ChatIdentity.platform_user_id == str(user.id))
        )
    assert user_id is not None
    await give_number(h.services.db, user_id, OWN)
    return user_id


async def _mms(h: TelegramHarness, twilio: FakeTwilioServer, body: str, *media: tuple[bytes, str]) -> None:
    url = f"{h.services.settings.public_base_url}/webhooks/twilio/sms"
    hook = twilio.signed_inbound(
        url, from_=PEER, to=OWN, body=body, media=[(twilio.add_media(data, kind), kind) for data, kind in media],
    )
    async with aiohttp.ClientSession() as client, client.post(url, data=hook.params, headers=hook.headers) as answer:
        assert answer.status == 200, await answer.text()


async def test_mms_in_as_photos_and_a_photo_reply_out_as_mms_charged_once(db: Database) -> None:
    async with FakeTwilioServer() as twilio, mms_app(db, twilio) as (h, web):
        ann = h.user(3001)
        user_id = await _owner(h, ann)

        # One picture and one over the cap: a photo captioned with the text, the large one named, not shown.
        since = len(h.fake.calls)
        await _mms(h, twilio, "Look at this", (SMALL, "image/jpeg"), (LARGE, "image/png"))
        photo = await h.fake.wait_for(lambda c: c.method == "sendPhoto" and c.chat_id == ann.id, since=since)
        assert photo.ok and photo.files["photo"].content == SMALL
        relayed = photo.result
        assert "Look at this" in relayed["caption"]
        assert "📎 picture too large (195 KB), not shown" in relayed["caption"]
        assert {"Reply", "Block"} <= set(buttons(relayed))
        # The media were fetched with the account's credentials, then from storage without them.
        assert all(r.authorized for r in twilio.requests_to("/Media/"))
        assert twilio.requests_to("/media-storage/") and "api.twilio.com" not in relayed["caption"]

        # Two pictures: an album, then the text with the buttons.
        since = len(h.fake.calls)
        await _mms(h, twilio, "Two of them", (SMALL, "image/jpeg"), (SMALL[::-1], "image/webp"))
        album = await h.fake.wait_for(lambda c: c.method == "sendMediaGroup" and c.chat_id == ann.id, since=since)
        assert album.ok and len(album.result) == 2
        card = await h.fake.wait_for(lambda c: c.method == "sendMessage" and c.chat_id == ann.id, since=since)
        assert "Two of them" in card.result["text"] and "Reply" in buttons(card.result)

        # A photo in reply to the relayed MMS goes out as an MMS from the same number, charged once.
        before = (await balance(db, user_id)).available_cents
        since = len(h.fake.calls)
        update = ann.reply_photo(relayed, SMALL, caption="Here you go")
        answer = await h.fake.wait_for(lambda c: c.method == "sendMessage" and c.chat_id == ann.id, since=since)
        assert answer.ok and "+1 415-555-0199" in answer.result["text"], answer.result
        assert [c.method for c in h.fake.calls[since:] if c.method == "getFile"] == ["getFile"]
        sent = [m for m in twilio.messages.values() if m["num_media"] == "1"]
        assert len(sent) == 1 and sent[0]["from"] == OWN and sent[0]["to"] == PEER
        assert sent[0]["body"] == "Here you go"
        fetched = sent[0]["_media"][0]
        assert fetched["status"] == 200 and fetched["content"] == SMALL and fetched["content_type"] == "image/jpeg"
        media_url = fetched["url"]
        assert media_url.startswith(f"http://127.0.0.1:{web.port}/media/") and len(media_url.rsplit("/", 1)[1]) >= 22

        # The same message delivered again (a new update id): no second MMS, no second charge.
        again = copy.deepcopy(update)
        again.pop("update_id")
        since = len(h.fake.calls)
        h.fake.queue_update(again)
        await h.fake.wait_for(lambda c: c.method == "sendMessage" and c.chat_id == ann.id, since=since)
        assert len([m for m in twilio.messages.values() if m["num_media"] == "1"]) == 1
        async with db.read() as session:
            holds = (await session.scalars(select(Hold).where(Hold.user_id == user_id, Hold.purpose == "mms"))).all()
            captures = await session.scalar(
                select(func.count()).select_from(LedgerEntry).where(LedgerEntry.hold_id == holds[0].id)
            ) if holds else 0
            outbound = await session.scalar(select(Message).where(Message.direction == "outbound"))
            link = await session.scalar(select(MediaLink))
        assert len(holds) == 1 and holds[0].state == "captured" and captures >= 1
        assert outbound is not None and outbound.price_cents == holds[0].amount_cents > 0
        assert (await balance(db, user_id)).available_cents == before - holds[0].amount_cents
        # The link: only its hash is stored; a wrong token is not found; the picture is stored encrypted or encoded.
        assert link is not None and media_url.rsplit("/", 1)[1] not in link.token_hash
        async with aiohttp.ClientSession() as client:
            async with client.get(media_url[:-2] + "xx") as wrong:
                assert wrong.status == 404
            async with client.get(media_url) as right:
                assert right.status == 200 and await right.read() == SMALL

        # A photo that answers no relayed SMS is explained, and sends nothing.
        since = len(h.fake.calls)
        ann.reply_photo(h.fake.sent_messages(ann.id)[0], SMALL)  # the answer to /start
        await h.fake.wait_for(
            lambda c: c.method == "sendMessage" and c.chat_id == ann.id and "reply with it to a relayed SMS"
            in c.result["text"], since=since,
        )
        assert len([m for m in twilio.messages.values() if m["num_media"] == "1"]) == 1


async def test_an_mms_reaches_discord_as_an_attachment_after_a_failed_fetch(db: Database) -> None:
    async with FakeTwilioServer() as twilio, discord_app(db, media_max_bytes=CAP) as h:
        provider = TwilioProvider(twilio.account_sid, twilio.auth_token, twilio.base_url, backoff_seconds=0.001)
        h.services.messaging = MessagingService(db, {"twilio": provider}, h.services.settings, h.services.metrics)
        bob = h.fake.user(4001)
        await h.command(bob, "start")
        async with db.read() as session:
            user_id = await session.scalar(select(ChatIdentity.user_id).where(ChatIdentity.platform_user_id == "4001"))
        assert user_id is not None
        await give_number(db, user_id, OWN)
        url = twilio.add_media(SMALL, "image/jpeg")
        # Twilio's media store down for every try of the provider's own retries: the outbox retries the relay.
        twilio.fail_next("/Media/", 503, count=4)
        await h.services.messaging.receive_inbound(InboundSms(
            provider="twilio", provider_message_id="MM" + "1" * 32, from_e164=PEER, to_e164=OWN, body="For Discord",
            media_urls=(url,),
        ))
        dm = await h.fake.wait_for(lambda: next(
            (m for m in h.fake.dm_messages(4001) if m["attachments"]), None
        ))
        assert "For Discord" in (dm["content"] or str(dm["embeds"]))
        assert dm["attachments"][0]["filename"].endswith(".jpg")
        assert len(twilio.requests_to("/Media/")) == 5
        await h.services.messaging.close()
