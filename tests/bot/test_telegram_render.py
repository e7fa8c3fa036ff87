"""Rendering for Telegram: long HTML split into valid messages, keyboards within Telegram's limits."""

from __future__ import annotations

import html

from bot.handlers.screens import Button
from bot.telegram import MAX_TEXT, keyboard, split_html
from tests.fakes.telegram_api import parse_html


def test_long_html_is_split_into_valid_parts_that_keep_the_text() -> None:
    body = html.escape("Tom & Jerry <3 🐱 " * 600)  # ~10,000 characters of entities and emoji
    text = f"📨 <b>From +1 415-555-0100</b>\n<blockquote>{body}</blockquote>\n<i>end</i>"
    parts = split_html(text)
    assert len(parts) >= 3
    plain = ""
    for part in parts:
        assert len(part) <= MAX_TEXT
        part_plain, _ = parse_html(part)
        plain += part_plain
    whole_plain, _ = parse_html(text)
    assert plain.replace("\n", "") == whole_plain.replace("\n", "")


def test_short_text_is_one_part() -> None:
    assert split_html("<b>hi</b>") == ["<b>hi</b>"]


def test_keyboard_kinds() -> None:
    markup = keyboard(
        [[Button("Go", action="vf:c:1"), Button("Site", url="https://example.com")], [Button("Copy", copy_text="123")]]
    )
    assert markup is not None
    data = markup.to_dict()["inline_keyboard"]
    assert data[0][0]["callback_data"] == "vf:c:1"
    assert data[0][1]["url"] == "https://example.com"
    assert data[1][0]["copy_text"] == {"text": "123"}
    assert keyboard([]) is None
