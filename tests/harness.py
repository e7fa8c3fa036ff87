"""Runs the real Telegram front end (python-telegram-bot) against the fake Bot API, in polling or webhook mode."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from bot.telegram import TelegramFrontEnd
from core.messaging.service import build_messaging_service
from core.models import OutboxDelivery
from core.platform.db import Database
from core.platform.outbox import OutboxDispatcher
from core.services import Services, build_services
from core.verification.service import build_verification_service
from tests.conftest import make_settings
from tests.fakes.telegram_api import Call, FakeTelegramServer, FakeUser
from webhooks.server import WebServer, create_app

# python-telegram-bot 22 warns on every RetryAfter unless timedeltas are opted in.
os.environ.setdefault("PTB_TIMEDELTA", "true")

ADMIN_ID = 999


@dataclass
class TelegramHarness:
    fake: FakeTelegramServer
    services: Services
    front: TelegramFrontEnd
    dispatcher: OutboxDispatcher
    web: WebServer | None

    def user(self, user_id: int, **kwargs: Any) -> FakeUser:
        return self.fake.user(user_id, **kwargs)

    async def command(self, user: FakeUser, text: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """Send `text` and return the bot's first answer to that chat (a message dict as Telegram returns it)."""
        since = len(self.fake.calls)
        await self._deliver(user.send(text))
        call = await self.fake.wait_for(lambda c: _answers(c, user.id), timeout=timeout, since=since)
        return call.result

    async def press(
        self, user: FakeUser, message: dict[str, Any], data: str, *, timeout: float = 5.0, strict: bool = True
    ) -> Call:
        """Press a button and wait until the query was answered; returns the answerCallbackQuery call.

        strict=False sends callback data the message never offered (a forged or outdated client)."""
        since = len(self.fake.calls)
        update = user.press(message, data, strict=strict)
        query_id = update["callback_query"]["id"]
        await self._deliver(update)
        return await self.fake.wait_for(
            lambda c: c.method == "answerCallbackQuery" and c.params.get("callback_query_id") == query_id,
            timeout=timeout, since=since,
        )

    async def tap(self, user: FakeUser, message: dict[str, Any], data: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """Press a button and return the message it produced or edited (as it looks now)."""
        since = len(self.fake.calls)
        await self.press(user, message, data, timeout=timeout)
        call = await self.fake.wait_for(lambda c: _answers(c, user.id), timeout=timeout, since=since)
        if call.method == "editMessageText":
            return self.fake.messages_by_id(user.id)[int(call.params["message_id"])]
        return call.result

    async def reply(self, user: FakeUser, message: dict[str, Any], text: str, *, timeout: float = 5.0) -> None:
        await self._deliver(user.reply(message, text))

    async def _deliver(self, update: dict[str, Any]) -> None:
        if self.web is not None:
            await self.fake.deliver_webhook(update)

    def screen(self, chat_id: int) -> dict[str, Any]:
        """The newest bot message in a chat, as it looks now (after edits)."""
        return self.fake.last_message(chat_id)

    def texts(self, chat_id: int) -> list[str]:
        return [m.get("text") or m.get("caption") or "" for m in self.fake.sent_messages(chat_id)]

    async def answer_after(self, since: int, chat_id: int, timeout: float = 5.0) -> Call:
        return await self.fake.wait_for(lambda c: _answers(c, chat_id), timeout=timeout, since=since)


async def deliveries_recorded(db: Database, timeout: float = 5.0) -> None:
    """Until every chat message is recorded as sent. Replying to a relayed message needs its recorded message
    id, which the dispatcher writes just after the chat API answered: a person is never that quick, a test is."""
    async with asyncio.timeout(timeout):
        while True:
            async with db.read() as session:
                if await session.scalar(
                    select(OutboxDelivery.id).where(OutboxDelivery.platform_message_id.is_(None)).limit(1)
                ) is None:
                    return
            await asyncio.sleep(0.01)


def _answers(call: Call, chat_id: int) -> bool:
    return (
        call.ok
        and call.method in {"sendMessage", "editMessageText", "sendDocument", "sendPhoto", "sendInvoice"}
        and call.chat_id == chat_id
    )


def buttons(message: dict[str, Any]) -> dict[str, str]:
    """Label → callback data (or url/copy text) of a message's inline keyboard."""
    markup = message.get("reply_markup") or {}
    found: dict[str, str] = {}
    for row in markup.get("inline_keyboard", []):
        for button in row:
            value = button.get("callback_data") or button.get("url") or (button.get("copy_text") or {}).get("text")
            found[button["text"]] = value
    return found


@asynccontextmanager
async def telegram_app(
    db: Database, *, webhook: bool = False, fake: FakeTelegramServer | None = None, **overrides: Any
) -> AsyncIterator[TelegramHarness]:
    """The Telegram front end, an outbox dispatcher and (in webhook mode) our aiohttp server, all on loopback."""
    own_fake = fake is None
    fake = fake or FakeTelegramServer()
    if own_fake:
        await fake.start()
    values: dict[str, Any] = {
        "telegram_bot_token": fake.token, "telegram_api_base_url": fake.base_url,
        "admin_telegram_ids": str(ADMIN_ID), "signup_bonus_cents": 500, "sandbox_code_delay_seconds": 0.2,
        "sandbox_sms_success_rate": 1.0,
    }
    if webhook:
        values.update(telegram_mode="webhook", telegram_webhook_secret="s3cret-token")
    values.update(overrides)
    settings = make_settings(db.url, **values)
    services = build_services(settings, db=db)
    services.verification = build_verification_service(settings, db, services.metrics, services.plan)
    services.messaging = build_messaging_service(settings, db, services.metrics, services.plan)
    front = TelegramFrontEnd(services)
    dispatcher = OutboxDispatcher(db, {"telegram": front.sender}, metrics=services.metrics, base_backoff=0.05)
    services.outbox = dispatcher
    web: WebServer | None = None
    if webhook:
        web = WebServer(create_app(services, [front.add_routes]), "127.0.0.1", 0)
        await web.start()
        settings.public_base_url = f"http://127.0.0.1:{web.port}"
    await front.start()
    await dispatcher.start()
    try:
        yield TelegramHarness(fake, services, front, dispatcher, web)
    finally:
        await dispatcher.stop()
        await front.stop()
        await services.verification.close()
        await services.messaging.close()
        if web is not None:
            await web.stop()
        if own_fake:
            await fake.stop()
