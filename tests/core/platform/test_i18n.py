"""Message catalogs: English and Spanish complete, same placeholders, valid Telegram HTML, money and amounts."""

from __future__ import annotations

import string

import pytest

from core.platform.i18n import LANGUAGES, Html, catalog, escape, money, parse_dollars, t
from tests.fakes.telegram_api import parse_html


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_language_has_every_key_with_the_same_placeholders() -> None:
    english = catalog("en")
    for language in LANGUAGES:
        texts = catalog(language)
        assert set(texts) == set(english), f"{language}: missing {set(english) - set(texts)}, extra {set(texts) - set(english)}"
        for key, template in texts.items():
            assert _fields(template) == _fields(english[key]), f"{language}:{key}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_text_is_valid_telegram_html_with_hostile_arguments(language: str) -> None:
    hostile = "<b>&amp; 5 < 6 & 🙃</i>"
    for key, template in catalog(language).items():
        rendered = t(language, key, **{name: hostile for name in _fields(template)})
        parse_html(rendered)  # raises like Telegram's "can't parse entities"
        if _fields(template):
            assert "<b>&amp; 5" not in rendered or "&lt;b&gt;" in rendered, key


def test_money_and_dollar_amounts() -> None:
    assert money(123456) == "$1,234.56"
    assert money(-250) == "-$2.50"
    assert money(5) == "$0.05"
    assert parse_dollars("5") == 500
    assert parse_dollars("2.50") == 250
    assert parse_dollars("-1") == -100
    assert parse_dollars("$3.5") == 350
    for bad in ("", "abc", "1.234", "1.2.3", "--1", "5$"):
        with pytest.raises(ValueError):
            parse_dollars(bad)


def test_escape_and_html_marker() -> None:
    assert escape("<a&b>") == "&lt;a&amp;b&gt;"
    assert t("en", "unknown_command", command=Html("<b>x</b>")).count("<b>x</b>") == 1
    assert "&lt;b&gt;" in t("en", "unknown_command", command="<b>x</b>")
