"""MMS out on Discord: the Reply box under a relayed SMS takes a picture (Discord's modal file upload), which is
downloaded from the attachment's CDN URL and goes out as an MMS from the same number, with a MediaUrl Twilio
fetches, charged once even when the same upload is submitted twice."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from core.messaging.service import MessagingService
from core.models import ChatIdentity, Hold, LedgerEntry, Message
from core.platform.db import Database
from core.providers.sms import InboundSms
from core.providers.twilio import TwilioProvider
from tests.bot.test_discord import discord_app
from tests.core.messaging.test_service import balance, give_number
from tests.fakes.discord_api import buttons, text_of, walk_components
from tests.fakes.twilio_api import FakeTwilioServer
from tests.harness import deliveries_recorded
from tests.journeys.test_mms import OWN, PEER, SMALL
from webhooks import twilio as twilio_webhooks
from webhooks.server import WebServer, create_app


async def test_a_picture_in_the_reply_box_goes_out_as_one_mms_charged_once(db: Database) -> None:
    async with FakeTwilioServer() as twilio, discord_app(db) as h:
        provider = TwilioProvider(twilio.account_sid, twilio.auth_token, twilio.base_url, backoff_seconds=0.001)
        h.services.messaging = MessagingService(db, {"twilio": provider}, h.services.settings, h.services.metrics)
        web = WebServer(create_app(h.services, [twilio_webhooks.add_routes]), "127.0.0.1", 0)
        await web.start()
        h.services.settings.public_base_url = f"http://127.0.0.1:{web.port}"
        try:
            cy = h.user(4101)
            await h.command(cy, "start")
            async with db.read() as session:
                user_id = await session.scalar(
                    select(ChatIdentity.user_id).where(ChatIdentity.platform_user_id == str(cy.id))
                )
            assert user_id is not None
            await give_number(db, user_id, OWN)
            await h.services.messaging.receive_inbound(InboundSms(
                provider="twilio", provider_message_id="SM" + "2" * 32, from_e164=PEER, to_e164=OWN,
                body="Send me the photo",
            ))
            dm = await h.fake.wait_for(lambda: next(
                (m for m in h.fake.dm_messages(cy.id) if "Send me the photo" in text_of(m)), None
            ))
            await deliveries_recorded(db)  # under CI load a submit came before the relay's id was on record
            reply = next(custom_id for label, custom_id in buttons(dm).items() if "Reply" in label)

            # The Reply box: its text, and an optional file upload (type 19) inside a label.
            opened = await h.press(cy, dm, reply)
            assert opened.callback_type == 9 and opened.modal is not None
            uploads = [c for c in walk_components(opened.modal["components"]) if c.get("type") == 19]
            assert len(uploads) == 1 and uploads[0]["required"] is False
            before = (await balance(db, user_id)).available_cents

            # Submitted with a picture, and the same submit again at once (a double click): one MMS, one charge.
            first = h.fake.modal_submit(cy, opened, "Here it is", files=[("photo.jpg", SMALL, "image/jpeg")])
            second = h.fake.redelivered(first)
            h.fake.dispatch(h.front.client, first)
            h.fake.dispatch(h.front.client, second)
            await asyncio.gather(h.fake.answered(first), h.fake.answered(second))
            await h.front.idle(5.0)

            cards = [text_of(m) for i in (first, second) for m in h.fake.produced(i) if m["id"] != dm["id"]]
            assert len(cards) == 2 and all("MMS (picture) to +1 415-555-0199" in card for card in cards), cards
            # Downloaded from the attachment's URL on the CDN (once per submit: the duplicate is found later).
            assert len(set(h.fake.cdn_requests)) == 1 and "/photo.jpg" in h.fake.cdn_requests[0]

            sent = [m for m in twilio.messages.values() if m["num_media"] == "1"]
            assert len(sent) == 1 and sent[0]["from"] == OWN and sent[0]["to"] == PEER
            assert sent[0]["body"] == "Here it is"
            fetched = sent[0]["_media"][0]
            assert fetched["status"] == 200 and fetched["content"] == SMALL and fetched["content_type"] == "image/jpeg"
            assert fetched["url"].startswith(f"http://127.0.0.1:{web.port}/media/")

            async with db.read() as session:
                holds = (await session.scalars(
                    select(Hold).where(Hold.user_id == user_id, Hold.purpose == "mms")
                )).all()
                captures = await session.scalar(
                    select(func.count()).select_from(LedgerEntry).where(LedgerEntry.hold_id == holds[0].id)
                ) if holds else 0
                outbound = (await session.scalars(select(Message).where(Message.direction == "outbound"))).all()
            assert len(holds) == 1 and holds[0].state == "captured" and captures >= 1
            assert len(outbound) == 1 and outbound[0].price_cents == holds[0].amount_cents > 0
            assert (await balance(db, user_id)).available_cents == before - holds[0].amount_cents

            # A picture over MEDIA_MAX_BYTES is refused by its declared size, without downloading it.
            h.services.settings.media_max_bytes = len(SMALL) - 1
            opened = await h.press(cy, dm, reply)
            big = h.fake.modal_submit(cy, opened, "Another", files=[("big.jpg", SMALL, "image/jpeg")])
            h.fake.dispatch(h.front.client, big)
            await h.fake.answered(big)
            await h.front.idle(5.0)
            answer = " ".join(text_of(m) for m in h.fake.produced(big) if m["id"] != dm["id"])
            assert "too large" in answer, answer
            assert not any("/big.jpg" in url for url in h.fake.cdn_requests)
            assert len([m for m in twilio.messages.values() if m["num_media"] == "1"]) == 1
        finally:
            await web.stop()
            await h.services.messaging.close()
