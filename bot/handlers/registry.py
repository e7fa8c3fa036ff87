"""Imports every flow module once so their commands and buttons are registered with the router."""

from __future__ import annotations

import importlib

FLOW_MODULES = (
    "bot.handlers.menu",
    "bot.handlers.account",
    "bot.handlers.topup",
    "bot.handlers.subscribe",
    "bot.handlers.admin",
    "bot.handlers.verify",
    "bot.handlers.same_number",
    "bot.handlers.numbers",
    "bot.handlers.calls",
    "bot.handlers.sms",
    "bot.handlers.mms",
    "bot.handlers.ai",
    "bot.handlers.templates",
    "bot.handlers.broadcast",
    "bot.handlers.stats",
    "bot.handlers.health",
    "bot.handlers.apikey",
    "bot.handlers.miniapp",
)


def load_flows() -> None:
    for name in FLOW_MODULES:
        importlib.import_module(name)
