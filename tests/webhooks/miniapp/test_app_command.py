"""/app in the Telegram chat: over https a web_app button and the chat's menu button open the Mini App; over plain
http (Telegram refuses web apps there) a sign-in link that works once."""

from __future__ import annotations

import json

from core.platform.db import Database
from tests.harness import telegram_app


async def test_app_over_https_is_a_web_app_button_and_the_menu_button(db: Database) -> None:
    async with telegram_app(db, public_base_url="https://cumapp.example") as h:
        answer = await h.command(h.user(301), "/app")
        button = answer["reply_markup"]["inline_keyboard"][0][0]
        assert button["text"] == "Open app" and button["web_app"] == {"url": "https://cumapp.example/app"}
        assert h.fake.menu_buttons[None] == {"type": "web_app", "text": "App",
                                             "web_app": {"url": "https://cumapp.example/app"}}


async def test_app_over_http_is_a_one_time_link(db: Database) -> None:
    async with telegram_app(db) as h:
        answer = await h.command(h.user(302), "/app")
        assert "/app?login=" in answer["text"] and "web_app" not in json.dumps(answer.get("reply_markup") or {})
        assert None not in h.fake.menu_buttons  # the menu keeps Telegram's default
