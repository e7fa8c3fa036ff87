"""Groups see nothing private (every command there only points to the private chat); over-size webhooks get 413."""

from __future__ import annotations

import aiohttp

from bot.handlers import router
from bot.handlers.registry import load_flows
from core.platform.db import Database
from tests.harness import ADMIN_ID, TelegramHarness, buttons, telegram_app

GROUP = -1001234500
POINTER = "For your privacy I answer that only in a private chat."


async def _group_answer(h: TelegramHarness, user_id: int, text: str, group: int = GROUP) -> dict[str, object]:
    since = len(h.fake.calls)
    h.fake.user(user_id).send_in_group(text, group)
    call = await h.fake.wait_for(lambda c: c.ok and c.method == "sendMessage" and c.chat_id == group, since=since)
    return call.result  # type: ignore[no-any-return]


async def test_start_in_a_group_shows_no_balance_only_the_way_to_the_private_chat(db: Database) -> None:
    async with telegram_app(db) as h:
        fay = h.user(3001, first_name="Fay")
        private = await h.command(fay, "/start")
        assert "Available" in private["text"]  # in her own chat, /start shows the balance
        answer = await _group_answer(h, fay.id, "/start")
        assert answer["text"] == POINTER
        assert "$" not in answer["text"] and "Fay" not in answer["text"]
        assert buttons(answer) == {"Open a private chat": f"https://t.me/{h.fake.bot_username}"}
        assert answer["reply_to_message"]["from"]["id"] == fay.id
        # Addressed to the bot by name, as groups do, it is the same.
        named = await _group_answer(h, fay.id, f"/start@{h.fake.bot_username}")
        assert named["text"] == POINTER


async def test_every_command_in_a_group_only_points_to_the_private_chat(db: Database) -> None:
    load_flows()
    async with telegram_app(db) as h:
        names = sorted(router.COMMANDS)
        assert {"start", "help", "cancel", "balance", "link", "grant"} <= set(names)
        for index, name in enumerate([*names, "nosuchcommand"]):
            # The admin: every admin command exists for them, and no command limit cuts the list short. Telegram
            # takes 20 messages a minute in one group, so the answers are spread over several groups.
            answer = await _group_answer(h, ADMIN_ID, f"/{name} 1 2", GROUP - index // 20)
            assert answer["text"] == POINTER, name


async def test_a_webhook_body_over_the_limit_gets_413(db: Database) -> None:
    async with telegram_app(db, webhook=True) as h:
        assert h.web is not None
        url = f"http://127.0.0.1:{h.web.port}/webhooks/telegram"
        secret = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-token", "Content-Type": "application/json"}
        body = b'{"update_id": 1, "message": {"text": "' + b"x" * (2 * 1024 * 1024) + b'"}}'

        async def chunked() -> object:
            for start in range(0, len(body), 65536):
                yield body[start:start + 65536]

        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body, headers=secret) as response:
                assert response.status == 413
            async with session.post(url, data=chunked(), headers=secret) as response:  # no Content-Length
                assert response.status == 413
            async with session.post(url, data=b"{not json", headers=secret) as response:
                assert response.status == 400  # malformed but small: still 400
            async with session.post(url, data=b"{}", headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"}) as response:
                assert response.status == 403
