"""A rented number's months on Telegram against the fake Bot API and the fake Twilio: bought with buttons, Renew now
pressed twice (charged once), told three days ahead that the balance falls short (once), renewed from the balance,
Auto-renew off, then released at Twilio 7 days after the month ran out; /history shows each renewal.

The renewal job is run by the test with the time it should see (`run(now)`), as the scheduler runs it with now."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from core.messaging.numbers import NUMBER_PERIOD
from core.messaging.renewals import GRACE, NOTICE_AHEAD
from core.models import ChatIdentity, LedgerEntry, PhoneNumber, User
from core.money import ledger
from core.platform.db import Database
from tests.fakes.telegram_api import FakeUser
from tests.fakes.twilio_api import FakeTwilioServer
from tests.harness import TelegramHarness, buttons
from tests.journeys.test_telegram_exactly_once import sms_app

NUMBER_LABEL = re.compile(r"^\+1 \d{3}-\d{3}-\d{4}$")
LOW = "does not cover it"
RELEASED = "was released"


async def _buy(h: TelegramHarness, ann: FakeUser) -> dict[str, Any]:
    """/numbers → Buy → United States → Any → a number → Confirm; returns the number's screen."""
    screen = await h.command(ann, "/numbers")
    for label in ("Buy", "United States", "Any"):
        screen = await h.tap(ann, screen, buttons(screen)[label])
    number = next(label for label in buttons(screen) if NUMBER_LABEL.match(label))
    screen = await h.tap(ann, screen, buttons(screen)[number])
    assert "Monthly price" in screen["text"]
    screen = await h.tap(ann, screen, buttons(screen)["Confirm"])
    assert "is yours" in screen["text"]
    screen = await h.tap(ann, screen, buttons(screen)["☎️ My numbers"])
    return await h.tap(ann, screen, buttons(screen)[f"☎️ {number}"])


async def _state(db: Database, user_id: int) -> tuple[PhoneNumber, int, int]:
    """The number, the account's available cents and how many renewal entries the ledger holds."""
    async with db.read() as session:
        number = await session.scalar(select(PhoneNumber).where(PhoneNumber.user_id == user_id))
        user = await session.get(User, user_id)
        entries = await session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "renewal")
        )
        assert number is not None and user is not None
        assert await ledger.ledger_sums(session, user_id) == await ledger.balance(session, user_id)
        return number, user.available_cents, int(entries or 0)


async def _adjust(db: Database, user_id: int, cents: int, key: str) -> None:
    async with db.transaction() as session:
        await ledger.post(session, user_id, cents, kind="grant", idempotency_key=key)


def _said(h: TelegramHarness, chat_id: int, words: str) -> int:
    return sum(words in text for text in h.texts(chat_id))


async def _until_said(h: TelegramHarness, chat_id: int, words: str, times: int = 1) -> None:
    await h.fake.wait_for(lambda c: c.method == "sendMessage" and c.chat_id == chat_id and words in c.params["text"])
    for _ in range(20):  # a second copy, if there were one, is given the time to come
        await asyncio.sleep(0.01)
    assert _said(h, chat_id, words) == times


async def test_a_number_renews_once_per_month_and_goes_when_unpaid(db: Database) -> None:
    async with FakeTwilioServer() as twilio, sms_app(db, twilio) as h:
        ann = h.user(3101)
        screen = await _buy(h, ann)
        async with db.read() as session:
            user_id = await session.scalar(
                select(ChatIdentity.user_id).where(ChatIdentity.platform_user_id == str(ann.id))
            )
        assert user_id is not None
        number, available, entries = await _state(db, user_id)
        price, first = number.monthly_price_cents, number.renews_at
        assert first is not None and entries == 0
        shown = buttons(screen)
        assert f"renews {first:%Y-%m-%d}" in screen["text"] and "Auto-renew is on" in screen["text"]
        assert shown["Auto-renew: on"] == f"num_auto:{number.id}:0"
        assert "Renew now" in shown and any(label.startswith("Release +1 ") for label in shown)

        # Renew now, pressed twice before the first answer: one month is paid.
        await asyncio.gather(*(h.press(ann, screen, shown["Renew now"]) for _ in range(2)))
        number, after, entries = await _state(db, user_id)
        assert entries == 1 and after == available - price
        second = first + NUMBER_PERIOD
        assert number.renews_at == second
        screen = h.fake.messages_by_id(ann.id)[screen["message_id"]]
        assert "renewed for" in screen["text"] and f"{second:%Y-%m-%d}" in screen["text"]

        # Three days ahead, a balance that covers the renewal says nothing; one that does not is told once.
        renewals = h.services.messaging.renewals
        ahead = second - NOTICE_AHEAD + timedelta(hours=1)
        assert (await renewals.run(ahead)).told == 0
        await _adjust(db, user_id, -(after - price + 1), "test:drain")
        for moment in (ahead, ahead + timedelta(hours=1), second - timedelta(hours=1)):
            await renewals.run(moment)
        await _until_said(h, ann.id, LOW)

        # Due and still short: not renewed, kept. Topped up within the grace: renewed by the next run.
        late = await renewals.run(second + timedelta(minutes=1))
        assert (late.renewed, late.unpaid, late.released) == (0, 1, 0)
        await _adjust(db, user_id, 1000, "test:topup")
        assert (await renewals.run(second + timedelta(days=2))).renewed == 1
        number, _, entries = await _state(db, user_id)
        third = second + NUMBER_PERIOD
        assert entries == 2 and number.renews_at == third

        # Auto-renew off: the month runs out unrenewed, the number is kept the grace, then released at Twilio.
        screen = await h.tap(ann, screen, buttons(screen)["Auto-renew: on"])
        assert "Auto-renew is off" in screen["text"] and "Auto-renew: off" in buttons(screen)
        kept = await renewals.run(third + timedelta(minutes=1))
        assert (kept.renewed, kept.released) == (0, 0)
        assert (await renewals.run(third + GRACE - timedelta(minutes=1))).released == 0
        assert (await renewals.run(third + GRACE + timedelta(minutes=1))).released == 1
        released = twilio.requests_to(f"IncomingPhoneNumbers/{number.provider_sid}.json", "DELETE")
        assert len(released) == 1 and released[0].authorized
        assert twilio.released_numbers == [number.provider_sid]
        assert (await renewals.run(third + GRACE + timedelta(hours=1))).released == 0
        number, _, entries = await _state(db, user_id)
        assert number.state == "released" and entries == 2
        await _until_said(h, ann.id, RELEASED)

        # /history: each renewal on a line of its own, naming the number.
        history = await h.command(ann, "/history")
        lines = [line for line in history["text"].splitlines() if "renewal of +1 " in line]
        assert len(lines) == 2 and all(f"-${price // 100}.{price % 100:02d}" in line for line in lines)
