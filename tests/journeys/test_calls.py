"""Calls to an owned number, against the Twilio and Telegram test servers: bought with its voice URL, a call gives
"Missed call" at once and the voicemail as audio (once, however often Twilio reports it), unsigned webhooks get
403, and a number set to forward answers with <Dial>."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from core.messaging.errors import MessagingError, NotYours
from core.messaging.service import build_messaging_service
from core.models import Call, OutboxDelivery, PhoneNumber
from core.platform import outbox
from core.platform.db import Database
from core.services import build_services
from tests.bot.test_discord import discord_app
from tests.core.messaging.test_service import give_number, new_user, sms_settings
from tests.fakes.telegram_api import FakeUser
from tests.fakes.twilio_api import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilioServer
from tests.harness import TelegramHarness, buttons, telegram_app
from webhooks import twilio as twilio_routes
from webhooks import voice as voice_routes
from webhooks.server import WebServer, create_app

CALLER = "+14155550142"
# An MP3 as Twilio serves it: an ID3 header and frames; its bytes only need to arrive unchanged.
VOICEMAIL = b"ID3\x04\x00\x00\x00\x00\x00\x00" + os.urandom(24_000)


@dataclass
class Calls:
    h: TelegramHarness
    twilio: FakeTwilioServer
    base_url: str
    user: FakeUser

    async def voicemail_audio(self, since: int) -> dict[str, object]:
        call = await self.h.fake.wait_for(
            lambda c: c.ok and c.method == "sendAudio" and c.chat_id == self.user.id, since=since
        )
        return {"params": call.params, "file": call.files["audio"], "result": call.result}


@pytest.fixture
async def calls(db: Database) -> AsyncIterator[Calls]:
    async with FakeTwilioServer() as twilio, telegram_app(
        db, sandbox="auto", signup_bonus_cents=5000, twilio_account_sid=DEFAULT_ACCOUNT_SID,
        twilio_auth_token=DEFAULT_AUTH_TOKEN, twilio_api_base_url=twilio.base_url,
    ) as h:
        services = h.services
        web = WebServer(create_app(services, [twilio_routes.add_routes, voice_routes.add_routes]), "127.0.0.1", 0)
        await web.start()
        # Twilio reaches our loopback server directly here: that is the public address URLs and signatures use.
        base = services.settings.public_base_url = f"http://127.0.0.1:{web.port}"
        services.messaging.providers["twilio"].voice_url = f"{base}/webhooks/twilio/voice"
        try:
            yield Calls(h, twilio, base, h.user(4101))
        finally:
            await web.stop()


async def _buy(c: Calls) -> tuple[str, dict[str, object]]:
    """/numbers → Buy → United States → Any → a number → Confirm; returns it and the number's screen."""
    h, user = c.h, c.user
    await h.command(user, "/start")
    numbers = await h.command(user, "/numbers")
    countries = await h.tap(user, numbers, buttons(numbers)["Buy"])
    area = await h.tap(user, countries, buttons(countries)["United States"])
    listing = await h.tap(user, area, buttons(area)["Any"])
    pick = next(data for label, data in buttons(listing).items() if label.startswith("+1"))
    confirm = await h.tap(user, listing, pick)
    await h.tap(user, confirm, buttons(confirm)["Confirm"])
    async with h.services.db.read() as session:
        number = await session.scalar(select(PhoneNumber))
    assert number is not None
    mine = await h.command(user, "/numbers")
    screen = await h.tap(user, mine, next(d for label, d in buttons(mine).items() if d.startswith("num_open:")))
    return number.e164, screen


async def _voicemail_row(db: Database) -> OutboxDelivery:
    async with db.read() as session:
        row = await session.scalar(select(OutboxDelivery).where(OutboxDelivery.kind == "voicemail"))
    assert row is not None
    return row


async def _count(db: Database, model: type, *where: object) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_a_call_gives_a_notice_then_the_voicemail_once_and_forwarding_dials(calls: Calls, db: Database) -> None:
    c, h, twilio, user = calls, calls.h, calls.twilio, calls.user
    own, screen = await _buy(c)
    (bought,) = twilio.incoming_numbers.values()
    assert bought["voice_url"] == f"{c.base_url}/webhooks/twilio/voice" and bought["voice_method"] == "POST"
    assert "📞 Calls: Voicemail" in buttons(screen)

    # The call: TwiML with a greeting and up to a minute of voicemail; the chat hears of it at once.
    since = len(h.fake.calls)
    status, twiml = await twilio.deliver_call(own, CALLER, call_sid="CA" + "1" * 32)
    assert status == 200
    assert "<Say" in twiml and 'maxLength="60"' in twiml
    assert f'recordingStatusCallback="{c.base_url}/webhooks/twilio/recording"' in twiml
    assert f'action="{c.base_url}/webhooks/twilio/recording"' in twiml
    notice = await h.fake.wait_for(
        lambda m: m.ok and m.method == "sendMessage" and "Missed call" in str(m.params.get("text")), since=since
    )
    assert "Missed call from <b>+1 415-555-0142</b>" in notice.params["text"]
    assert {"Reply", "Block"} <= {label.split(" ", 1)[-1] for label in buttons(notice.result)}

    # The recording: <Record>'s action request hangs up; the completed callback sends the audio, fetched with
    # the account's credentials; Twilio reporting it again sends nothing more.
    recording = twilio.add_recording(VOICEMAIL)
    url = f"{c.base_url}/webhooks/twilio/recording"
    action = await twilio.post_text(twilio.signed_recording(url, call_sid="CA" + "1" * 32, recording_sid=recording,
                                                            duration=23, status=None))
    assert action == (200, '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup /></Response>')
    since = len(h.fake.calls)
    done = twilio.signed_recording(url, call_sid="CA" + "1" * 32, recording_sid=recording, duration=23)
    assert (await twilio.post_text(done))[0] == 200
    audio = await c.voicemail_audio(since)
    assert audio["file"].content == VOICEMAIL  # type: ignore[attr-defined]
    assert "Voicemail from <b>+1 415-555-0142</b>" in str(audio["params"]["caption"]) and "(0:23)" in str(
        audio["params"]["caption"])
    fetched = twilio.requests_to(f"/Recordings/{recording}.mp3", "GET")
    assert fetched and all(r.authorized for r in fetched)
    assert (await twilio.post_text(done))[0] == 200
    # The webhook answers once its transaction is over: a second audio would be queued by now.
    assert await _count(db, OutboxDelivery, OutboxDelivery.kind == "voicemail") == 1
    for _ in range(250):  # once sent, the audio's bytes leave the outbox row
        if (row := await _voicemail_row(db)).state == "sent":
            break
        await asyncio.sleep(0.02)
    assert row.payload["attachments"][0]["data"] == "" and row.payload["reply_context"]["kind"] == "sms"

    # Unsigned or forged webhooks change nothing.
    unsigned = twilio.signed_call(f"{c.base_url}/webhooks/twilio/voice", from_=CALLER, to=own)
    unsigned.headers.pop("X-Twilio-Signature")
    assert (await twilio.post_text(unsigned))[0] == 403
    forged = twilio.signed_recording(url, call_sid="CA" + "1" * 32, recording_sid="RE" + "0" * 32, duration=5)
    forged.headers["X-Twilio-Signature"] = "bm90IGEgc2lnbmF0dXJl"
    assert (await twilio.post_text(forged))[0] == 403
    assert await _count(db, Call) == 1

    # Forwarding, set on the number's screen (a number that cannot be used: see test_a_bad_forward_number…).
    settings = await h.tap(user, screen, buttons(screen)["📞 Calls: Voicemail"])
    asked = await h.tap(user, settings, buttons(settings)["Forward…"])
    assert "Which number" in asked["text"]
    saved = await h.command(user, "+1 (415) 555-2671")
    assert "Calls to" in saved["text"] and "Forward to +1 415-555-2671" in saved["text"]
    assert twilio.requests_to(f"/IncomingPhoneNumbers/{bought['sid']}.json", "POST")  # voice URL (re)pointed
    since = len(h.fake.calls)
    status, twiml = await twilio.deliver_call(own, CALLER)
    assert status == 200 and '<Dial timeout="25">+14155552671</Dial>' in twiml and "<Record" not in twiml
    await h.fake.wait_for(
        lambda m: m.ok and m.method == "sendMessage" and "forwarded to +1 415-555-2671" in str(m.params.get("text")),
        since=since,
    )
    assert sum(1 for m in h.fake.calls if m.method == "sendAudio") == 1  # still one voicemail, seconds later


async def test_a_bad_forward_number_is_refused_with_its_reason(db: Database) -> None:
    async with FakeTwilioServer() as twilio:
        settings = sms_settings(db, sandbox="auto", twilio_api_base_url=twilio.base_url)
        messaging = build_messaging_service(settings, db, None, build_services(settings, db=db).plan)
        try:
            number = await give_number(db, (await new_user(db, "4102")).id, "+14155550100")
            desk = messaging.calls
            for typed, reason in (("12", "too short"), ("+1 900 555 0100", "Premium-rate"), ("+14155550100", None)):
                with pytest.raises(MessagingError) as refused:
                    await desk.set_call_mode(number.user_id, number.id, "forward", typed)
                text = refused.value.text("en")
                assert ("can't take forwarded calls" in text and reason in text) if reason else (
                    "forward its calls to itself" in text)
            with pytest.raises(NotYours):
                await desk.set_call_mode(number.user_id + 1, number.id, "off")
            changed = await desk.set_call_mode(number.user_id, number.id, "forward", "(415) 555-2671")
            assert (changed.call_mode, changed.call_forward_to) == ("forward", "+14155552671")
            off = await desk.set_call_mode(number.user_id, number.id, "off")
            assert (off.call_mode, off.call_forward_to) == ("off", "+14155552671")  # kept for the next Forward
        finally:
            await messaging.close()


async def test_the_voicemail_reaches_discord_as_an_attachment(db: Database) -> None:
    voicemail = outbox.OutgoingMessage(
        text="🎙 Voicemail from <b>+1 415-555-0142</b> → your +1 415-555-0100 (0:23)",
        attachments=(outbox.Attachment(kind="audio", data=VOICEMAIL, filename="voicemail-RE1.mp3",
                                       content_type="audio/mpeg"),),
    )
    # Through the payload, as the outbox keeps it.
    stored = outbox.OutgoingMessage.from_payload(json.loads(json.dumps(voicemail.to_payload())))
    async with discord_app(db) as h:
        await h.front.sender.send("219", stored)
        (message,) = h.fake.dm_messages(219)
    assert "Voicemail from **+1 415-555-0142**" in message["content"]
    assert [(a["filename"], a["size"]) for a in message["attachments"]] == [("voicemail-RE1.mp3", len(VOICEMAIL))]
