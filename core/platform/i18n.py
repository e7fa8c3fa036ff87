"""User-facing texts: one catalog per language in core/locales/, HTML templates with every argument escaped."""

from __future__ import annotations

import html
import importlib
import pkgutil
import re
from functools import cache
from typing import Any

import core.locales

LANGUAGES = ("en", "es")
DEFAULT_LANGUAGE = "en"


class Html(str):
    """Text that is already safe HTML (built by us); `t()` does not escape it again."""

    __slots__ = ()


def escape(text: object) -> Html:
    return Html(html.escape(str(text), quote=False))


@cache
def catalog(language: str) -> dict[str, str]:
    """Merge every `core/locales/<area>.py` module's `TEXTS[language]` into one dictionary."""
    merged: dict[str, str] = {}
    for module_info in pkgutil.iter_modules(core.locales.__path__):
        module = importlib.import_module(f"core.locales.{module_info.name}")
        texts: dict[str, dict[str, str]] = getattr(module, "TEXTS", {})
        for key in texts.get(language, {}):
            if key in merged:
                raise KeyError(f"text {key!r} defined twice for {language}")
        merged.update(texts.get(language, {}))
    return merged


def t(language: str, key: str, /, **kwargs: Any) -> Html:
    """The text `key` in `language` (English when missing), arguments escaped unless they are `Html`."""
    template = catalog(language if language in LANGUAGES else DEFAULT_LANGUAGE).get(key)
    if template is None:
        template = catalog(DEFAULT_LANGUAGE)[key]
    safe = {name: value if isinstance(value, Html) else escape(value) for name, value in kwargs.items()}
    return Html(template.format(**safe))


def money(cents: int) -> Html:
    """Money as users read it: `$1,234.56`, `-$2.50`."""
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return Html(f"{sign}${cents // 100:,}.{cents % 100:02d}")


MAX_DOLLAR_CENTS = 100_000_000  # $1,000,000.00: more in one go is a typo, not a grant
_DOLLARS = re.compile(r"(?P<sign>[+-]?)\$?(?P<whole>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]*)(?:\.(?P<fraction>[0-9]{0,2}))?")


class AmountOutOfRange(ValueError):
    """A well-formed amount beyond the limit; `limit_cents` is what is allowed either way."""

    def __init__(self, text: str, limit_cents: int) -> None:
        super().__init__(text)
        self.limit_cents = limit_cents


def parse_dollars(text: str, *, max_cents: int = MAX_DOLLAR_CENTS) -> int:
    """`5`, `2.50`, `-1`, `$3`, `1,000` → cents; ValueError for anything else.

    Only ASCII digits ("٣".isdigit() is True, and int() reads it as 3), commas only between thousands ("2,50" is
    refused rather than read as $250), at most two decimals; AmountOutOfRange beyond ±`max_cents`."""
    match = _DOLLARS.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    whole, fraction = match["whole"].replace(",", ""), match["fraction"] or ""
    if not whole and not fraction:
        raise ValueError(text)
    if len(whole) > len(str(max_cents)):
        raise AmountOutOfRange(text, max_cents)
    cents = int(whole or "0") * 100 + int((fraction + "00")[:2])
    if cents > max_cents:
        raise AmountOutOfRange(text, max_cents)
    return -cents if match["sign"] == "-" else cents
