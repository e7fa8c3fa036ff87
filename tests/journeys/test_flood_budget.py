"""A broadcast at full speed while SMS are relayed and people type commands: one flood budget for the whole bot.

The app is `bot.app.Application`, wired as `cumapp run` wires it, against the fake Bot API enforcing Telegram's
limits (30 messages a second per bot, about one a second per chat, a 429 above that) and the fake Twilio; the
SMS arrive as signed Twilio webhooks. Sizes keep it near 12 s per database.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
from cryptography.fernet import Fernet

from bot.app import Application
from core.broadcast import service as bc
from core.messaging.gateway import TWILIO_SMS_PATH
from core.models import PhoneNumber
from core.money.accounts import Contact, get_or_create
from core.platform.clock import utcnow
from core.platform.db import Database
from tests.conftest import make_settings
from tests.core.broadcast.test_broadcast import make_broadcast, seed_users, wait_state
from tests.fakes.telegram_api import Call, FakeTelegramServer, _is_send_method
from tests.fakes.twilio_api import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    FakeTwilioServer,
    build_inbound_webhook,
)

PUBLIC_BASE_URL = "https://cumapp.test"
LIMIT = 30.0
BROADCAST_TEXT = "📣 Flood budget <b>news</b>"
RELAY_CHATS = [3_000_001 + i for i in range(10)]
COMMAND_USERS = [4_000_001 + i for i in range(8)]


@dataclass
class Mix:
    telegram: FakeTelegramServer
    app: Application
    http: aiohttp.ClientSession
    numbers: dict[int, str]  # chat -> the Twilio number its owner rents
    posted: dict[str, float] = field(default_factory=dict)  # SMS tag -> when its webhook was posted
    asked: dict[int, float] = field(default_factory=dict)  # command user -> when the command was sent

    async def relay(self, index: int) -> None:
        chat = RELAY_CHATS[index % len(RELAY_CHATS)]
        tag = f"relay-{index:04d}"
        hook = build_inbound_webhook(
            DEFAULT_AUTH_TOKEN, f"{PUBLIC_BASE_URL}{TWILIO_SMS_PATH}", from_="+14155550111", to=self.numbers[chat],
            body=f"hello {tag}", message_sid=f"SMflood{index:028d}",
        )
        assert self.app.web is not None
        self.posted[tag] = time.monotonic()
        url = f"http://127.0.0.1:{self.app.web.port}{TWILIO_SMS_PATH}"
        async with self.http.post(url, data=hook.params, headers=hook.headers) as response:
            assert response.status == 200

    def command(self, user_id: int) -> None:
        self.asked[user_id] = time.monotonic()
        self.telegram.user(user_id).send("/help")

    def accepted(self) -> list[Call]:
        return [c for c in self.telegram.calls if c.ok and _is_send_method(c.method)]

    def relay_delays(self) -> dict[str, float]:
        delays: dict[str, float] = {}
        for call in self.accepted():
            text = str(call.params.get("text", ""))
            for tag, posted in self.posted.items():
                if tag in text and tag not in delays:
                    delays[tag] = call.at - posted
        return delays

    def answer_delays(self) -> dict[int, float]:
        delays: dict[int, float] = {}
        for call in self.accepted():
            if call.chat_id in self.asked and call.chat_id not in delays:
                delays[call.chat_id] = call.at - self.asked[call.chat_id]
        return delays


async def _give_numbers(db: Database) -> dict[int, str]:
    numbers: dict[int, str] = {}
    async with db.transaction() as session:
        for index, chat in enumerate(RELAY_CHATS):
            account = await get_or_create(session, Contact("telegram", str(chat), chat_id=str(chat)))
            e164 = f"+1415555{2000 + index:04d}"
            session.add(PhoneNumber(user_id=account.user.id, provider="twilio", provider_sid=f"PNflood{index:026d}",
                                    e164=e164, country="US", monthly_price_cents=115, purchased_at=utcnow()))
            numbers[chat] = e164
    return numbers


async def test_a_broadcast_at_full_rate_with_relays_and_commands_draws_no_429(db: Database) -> None:
    broadcast_chats = await seed_users(db, 300)
    numbers = await _give_numbers(db)
    telegram = FakeTelegramServer(enforce_limits=True)
    await telegram.start()
    async with FakeTwilioServer() as twilio, aiohttp.ClientSession() as http:
        settings = make_settings(
            db.url, sandbox="auto", public_base_url=PUBLIC_BASE_URL, http_host="127.0.0.1",
            telegram_bot_token=telegram.token, telegram_api_base_url=telegram.base_url,
            twilio_account_sid=DEFAULT_ACCOUNT_SID, twilio_auth_token=DEFAULT_AUTH_TOKEN,
            twilio_api_base_url=twilio.base_url, data_encryption_keys=Fernet.generate_key().decode(),
        )
        app = Application(settings, console=False, migrate=False)
        await app.start()
        mix = Mix(telegram, app, http, numbers)
        try:
            broadcast_id = await make_broadcast(db, BROADCAST_TEXT)
            await bc.start(db, broadcast_id)
            deadline = time.monotonic() + 10
            while sum(1 for c in mix.accepted() if c.params.get("text") == BROADCAST_TEXT) < 30:
                assert time.monotonic() < deadline, "the broadcast did not start"
                await asyncio.sleep(0.05)
            # Relays and commands while the broadcast runs at the limit: ~3 relays and ~2 commands a second.
            for index in range(20):
                await mix.relay(index)
                if index % 2 == 0 and index // 2 < len(COMMAND_USERS):
                    mix.command(COMMAND_USERS[index // 2])
                await asyncio.sleep(0.3)
            done = await wait_state(db, broadcast_id, ("finished",), within=60)
            await asyncio.sleep(0.5)
        finally:
            await app.stop()
            await telegram.stop()

    assert telegram.too_many_requests == 0
    assert done.sent == 310 and done.failed == 0
    relays = mix.relay_delays()
    assert len(relays) == 20, sorted(set(mix.posted) - set(relays))
    # "About a second" at most; the median shows relays do not queue behind the broadcast (310 sends = 10 s of it).
    assert max(relays.values()) < 1.5 and sorted(relays.values())[len(relays) // 2] < 0.5, relays
    answers = mix.answer_delays()
    assert len(answers) == len(COMMAND_USERS) and max(answers.values()) < 2.0, answers
    # Measured at the fake: every message the bot sent while the broadcast ran, as a share of Telegram's limit.
    bulk = [c.at for c in mix.accepted() if c.params.get("text") == BROADCAST_TEXT]
    assert len(bulk) == 310 and {c.chat_id for c in mix.accepted() if c.params.get("text") == BROADCAST_TEXT} >= set(
        broadcast_chats)
    first, last = min(bulk), max(bulk)
    during = [c for c in mix.accepted() if first <= c.at <= last]
    rate = (len(during) - 1) / (last - first)
    # The ≥ 0.97 figure is the bench's to show (bench/broadcast_throughput.py --mix-users, docs/PERFORMANCE.md);
    # on a loaded CI machine a timed floor flakes, so the test only rules out a budget that throttles far too hard.
    assert rate >= 0.8 * LIMIT, f"{rate:.2f} messages/s ({len(during)} in {last - first:.1f} s)"
    assert len(during) > len(bulk), "relays and answers went out while the broadcast ran"
