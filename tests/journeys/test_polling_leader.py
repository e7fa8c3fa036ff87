"""Two instances in polling mode on one PostgreSQL: one calls getUpdates, the other takes over when it stops.

Telegram answers 409 Conflict to a second getUpdates of the same bot; the fake Bot API does the same (a newer long
poll ends the older one with 409), so a fight shows up as 409s. The leader is whoever holds the bot's PostgreSQL
advisory lock (core/platform/leader.py); the other instance still sends (outbox, answers) and serves webhooks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack

import pytest

from core.platform.db import Database
from tests.fakes.telegram_api import FakeTelegramServer
from tests.harness import TelegramHarness, telegram_app


def _pollers(*apps: TelegramHarness) -> list[TelegramHarness]:
    return [h for h in apps if h.front.application.updater is not None and h.front.application.updater.running]


def _conflicts(fake: FakeTelegramServer) -> int:
    return sum(1 for c in fake.calls if c.method == "getUpdates" and c.status == 409)


async def _until(check: object, within: float) -> float:
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - started < within, f"not within {within} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.postgres_only
async def test_one_instance_polls_and_the_other_takes_over_when_it_stops(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="telegram.ext")
    fake = FakeTelegramServer()
    await fake.start()
    first_stack, second_stack = AsyncExitStack(), AsyncExitStack()
    try:
        first = await first_stack.enter_async_context(telegram_app(db, fake=fake))
        second = await second_stack.enter_async_context(telegram_app(db, fake=fake))
        await _until(lambda: len(_pollers(first, second)) == 1, 5.0)
        await asyncio.sleep(2.5)  # the other instance has tried for the lock at least once meanwhile
        assert _pollers(first, second) == [first]
        for n in range(6):
            answer = await first.command(fake.user(5001 + n), "/help")
            assert "/balance" in answer["text"]
        # The follower still sends: its outbox delivers what it claims, answers go out through its own bot.
        assert second.front.polling is not None and not second.front.polling.leading
        assert _conflicts(fake) == 0

        await first_stack.aclose()  # the leader stops: its polling ends before its lock goes
        took = await _until(lambda: _pollers(second) == [second], 6.0)
        answer = await second.command(fake.user(5101), "/help")
        assert "/balance" in answer["text"]
        assert second.front.polling.leading and second.front.polling.elections == 1
        assert took < 5.0
        # The stopped leader's last long poll was cancelled on its side; the fake still ends it with a 409 when the
        # new leader polls, which nobody receives. A conflict that reached a poller is logged by python-telegram-bot.
        assert _conflicts(fake) <= 1
        assert not [r for r in caplog.records if "polling for updates" in r.getMessage()]
    finally:
        await second_stack.aclose()
        await first_stack.aclose()
        await fake.stop()
