"""Each Telegram update acts once: redelivered update ids (polling, webhook, two instances) and edited commands."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from telegram import Update

from core.messaging.service import MessagingService
from core.models import ChatIdentity, Hold, LinkCode, Message
from core.platform.db import Database
from core.providers.twilio import TwilioProvider
from tests.core.messaging.test_service import give_number
from tests.fakes.telegram_api import FakeTelegramServer, FakeUser, command_entities
from tests.fakes.twilio_api import FakeTwilioServer
from tests.harness import TelegramHarness, telegram_app

TO = "+14155550123"
EDIT_NOTICE = "Edits don't run commands — send it again."


@asynccontextmanager
async def sms_app(
    db: Database, twilio: FakeTwilioServer, *, webhook: bool = False, fake: FakeTelegramServer | None = None
) -> AsyncIterator[TelegramHarness]:
    """The Telegram front end whose SMS go to the fake Twilio."""
    async with telegram_app(db, webhook=webhook, fake=fake) as h:
        await h.services.messaging.close()
        provider = TwilioProvider(twilio.account_sid, twilio.auth_token, twilio.base_url, backoff_seconds=0.001)
        h.services.messaging = MessagingService(db, {"twilio": provider}, h.services.settings, h.services.metrics)
        yield h


async def _count(db: Database, model: Any, *where: Any) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def _with_number(h: TelegramHarness, user: FakeUser, e164: str) -> None:
    await h.command(user, "/start")
    async with h.services.db.read() as session:
        user_id = await session.scalar(
            select(ChatIdentity.user_id).where(ChatIdentity.platform_user_id == str(user.id))
        )
    assert user_id is not None
    await give_number(h.services.db, user_id, e164)


async def _settled(twilio: FakeTwilioServer, db: Database, seconds: float = 0.6) -> tuple[int, int]:
    """SMS at Twilio and SMS holds once nothing has changed for a while (a second effect would have come by then)."""
    last: tuple[int, int] | None = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = (len(twilio.messages), await _count(db, Hold, Hold.purpose == "sms"))
        if now == last:
            return now
        last = now
        await asyncio.sleep(seconds)
    raise AssertionError("the effects kept changing")


def _edited(user: FakeUser, original: dict[str, Any], text: str) -> dict[str, Any]:
    """The edited_message update Telegram sends when the user edits `original` (a message update) to `text`."""
    message = copy.deepcopy(original["message"])
    message.update(text=text, entities=command_entities(text), edit_date=int(time.time()))
    return user.server.queue_update({"edited_message": message})


async def test_a_redelivered_webhook_update_sends_one_sms_and_charges_once(db: Database) -> None:
    async with FakeTwilioServer() as twilio, sms_app(db, twilio, webhook=True) as h:
        ann = h.user(2001)
        await _with_number(h, ann, "+12125550101")
        since = len(h.fake.calls)
        update = ann.send(f"/sms {TO} Hello once")
        # Telegram timed out waiting for the first answer and sends the same update again, twice at once.
        statuses = await asyncio.gather(*(h.fake.deliver_webhook(update) for _ in range(3)))
        assert [s for batch in statuses for s in batch] == [200, 200, 200]
        await h.answer_after(since, ann.id)
        assert await _settled(twilio, db) == (1, 1)
        answers = [c for c in h.fake.calls[since:] if c.method in ("sendMessage", "editMessageText")
                   and c.chat_id == ann.id and "415" in str(c.params.get("text"))]
        assert len(answers) == 1
        assert await _count(db, Message, Message.direction == "outbound") == 1


async def test_a_redelivered_polled_update_sends_one_sms_and_charges_once(db: Database) -> None:
    async with FakeTwilioServer() as twilio, sms_app(db, twilio) as h:
        bea = h.user(2002)
        await _with_number(h, bea, "+12125550102")
        sent = bea.send(f"/sms {TO} Hello from polling")
        await h.fake.wait_for(lambda c: c.method == "sendMessage" and c.chat_id == bea.id and "415" in str(c.params))
        # The same update returned by getUpdates again (an offset never confirmed): handed to python-telegram-bot.
        app = h.front.application
        await app.process_update(Update.de_json(copy.deepcopy(sent), app.bot))
        assert await _settled(twilio, db) == (1, 1)


async def test_an_edited_sms_command_sends_nothing_and_charges_nothing(db: Database) -> None:
    async with FakeTwilioServer() as twilio, sms_app(db, twilio) as h:
        cam = h.user(2003)
        await _with_number(h, cam, "+12125550103")
        sent = cam.send(f"/sms {TO} First text")
        await h.fake.wait_for(lambda c: c.method == "sendMessage" and c.chat_id == cam.id and "415" in str(c.params))
        assert await _settled(twilio, db) == (1, 1)
        since = len(h.fake.calls)
        _edited(cam, sent, f"/sms {TO} First text, edited")
        notice = await h.answer_after(since, cam.id)
        assert notice.params["text"] == EDIT_NOTICE
        assert await _settled(twilio, db) == (1, 1)
        assert [m["body"] for m in twilio.messages.values()] == ["First text"]
        # A plain message edited into a command runs nothing either.
        since = len(h.fake.calls)
        plain = cam.send("hello")
        await h.answer_after(since, cam.id)  # the answer to "hello" itself, before the edit
        since = len(h.fake.calls)
        _edited(cam, plain, f"/sms {TO} sneaky")
        assert (await h.answer_after(since, cam.id)).params["text"] == EDIT_NOTICE
        assert await _settled(twilio, db) == (1, 1)


async def test_an_edited_link_command_issues_no_new_code(db: Database) -> None:
    async with telegram_app(db) as h:
        dee = h.user(2004, language_code="es")
        await h.command(dee, "/start")
        since = len(h.fake.calls)
        sent = dee.send("/link")
        await h.answer_after(since, dee.id)
        assert await _count(db, LinkCode) == 1
        since = len(h.fake.calls)
        _edited(dee, sent, "/link ")
        notice = await h.answer_after(since, dee.id)
        assert notice.params["text"] == "Las ediciones no ejecutan comandos: envíalo de nuevo."
        assert notice.params.get("reply_parameters", {}).get("message_id") == sent["message"]["message_id"]
        await asyncio.sleep(0.3)
        assert await _count(db, LinkCode) == 1
        assert [c for c in h.fake.calls[since:] if c.method == "sendMessage"] == [notice]


@pytest.mark.postgres_only
async def test_two_instances_given_one_update_at_once_act_once(db: Database) -> None:
    """Two `cumapp run` on one PostgreSQL, both handed the same update at the same moment: one SMS, one charge."""
    other_db = Database(db.url)
    try:
        async with (
            FakeTwilioServer() as twilio, FakeTelegramServer() as fake,
            sms_app(db, twilio, webhook=True, fake=fake) as one, sms_app(other_db, twilio, webhook=True, fake=fake) as two,
        ):
            eve = one.user(2005)
            await _with_number(one, eve, "+12125550105")
            sent = eve.send(f"/sms {TO} Only once")
            apps = [one.front.application, two.front.application]
            for _ in range(2):  # the second round is a plain redelivery to both, after the first is done
                await asyncio.gather(*(
                    app.process_update(Update.de_json(copy.deepcopy(sent), app.bot)) for app in apps for _ in range(2)
                ))
            assert await _settled(twilio, db) == (1, 1)
    finally:
        await other_db.dispose()


async def test_claims_are_forgotten_after_a_day(db: Database) -> None:
    from core.models import ChatUpdate
    from core.platform import updates
    from core.platform.clock import utcnow

    assert await updates.claim(db, "telegram", "1:42")
    assert not await updates.claim(db, "telegram", "1:42")
    assert await updates.claim(db, "discord", "1:42")  # ids are per platform
    assert await updates.sweep(db, now=utcnow() + timedelta(hours=23)) == 0
    assert await updates.sweep(db, now=utcnow() + timedelta(hours=25)) == 2
    assert await _count(db, ChatUpdate) == 0
