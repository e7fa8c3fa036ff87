"""User-facing texts: one catalog per language in core/locales/, HTML templates with every argument escaped."""

from __future__ import annotations

import html
import importlib
import pkgutil
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


def parse_dollars(text: str) -> int:
    """`5`, `2.50`, `-1`, `$3` → cents; ValueError for anything else (more than two decimals, words)."""
    raw = text.strip().replace(",", "")
    negative = raw.startswith("-")
    raw = raw[1:] if raw[:1] in "+-" and raw else raw
    raw = raw[1:] if raw.startswith("$") else raw
    if not raw or raw.count(".") > 1:
        raise ValueError(text)
    whole, _, fraction = raw.partition(".")
    if not (whole or fraction) or (whole and not whole.isdigit()) or (fraction and not fraction.isdigit()):
        raise ValueError(text)
    if len(fraction) > 2:
        raise ValueError(text)
    cents = int(whole or "0") * 100 + int((fraction + "00")[:2])
    return -cents if negative else cents
