"""Slash commands: one per command of the router's registry, with typed options, choices and autocomplete.

The router gets a command's option values joined with spaces, in order, exactly as Telegram's text after the
command; descriptions come from the catalog in each language Discord knows.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import discord
from discord import app_commands
from discord.app_commands import Choice, locale_str

from bot.discord.limits import AUTOCOMPLETE_SECONDS, MAX_DESCRIPTION, MAX_OPTIONS, short
from bot.handlers import router
from core.admin.stats import PERIODS as STATS_PERIODS
from core.platform.i18n import DEFAULT_LANGUAGE, t
from core.platform.settings import TIER_NAMES
from core.services import Services

log = logging.getLogger(__name__)

_DISCORD_LANGUAGES = {discord.Locale.spain_spanish: "es", discord.Locale.latin_american_spanish: "es"}

Source = Callable[[discord.Interaction[Any], str], Awaitable[list[Choice[str]]]]


class OnCommand(Protocol):
    async def __call__(self, interaction: discord.Interaction[Any], name: str, text: str, *, private: bool,
                       asks: bool = False) -> None:
        ...


@dataclass(frozen=True)
class Option:
    """One typed option of a slash command; the router gets the options' values joined with spaces, in order."""

    name: str
    help_key: str
    kind: type = str
    required: bool = True
    choices: tuple[str, ...] = ()
    autocomplete: str | None = None  # a source in SlashCommands._sources


_USER = Option("user", "dc_opt_user")
# The arguments each command takes (CONTRACT.md, and the flows for the rest); a command not listed here (a flow
# added later) gets FREE_TEXT, so nothing it could take is lost.
OPTIONS: dict[str, tuple[Option, ...]] = {
    **{name: () for name in (
        "start", "help", "numbers", "inbox", "balance", "topup", "history", "settings", "cancel", "suggest",
        "templates", "health", "subscribe",
    )},
    "stats": (Option("period", "dc_opt_period", required=False, choices=tuple(STATS_PERIODS)),),
    "verify": (Option("service", "dc_opt_service", required=False, autocomplete="services"),),
    # Slash options hold one line: given only the number, the flow asks for the text in a text box.
    "sms": (Option("to", "dc_opt_to"), Option("text", "dc_opt_text", required=False)),
    "link": (Option("code", "dc_opt_code", required=False),),
    "analyze": (Option("text", "dc_opt_text", required=False),),  # without it: a text box keeps a paste's lines
    "broadcast": (Option("text", "dc_opt_text", required=False),),
    "grant": (_USER, Option("amount", "dc_opt_amount", kind=float), Option("reason", "dc_opt_reason", required=False)),
    "ban": (_USER,),
    "unban": (_USER,),
    "tier": (_USER, Option("tier", "dc_opt_tier", choices=TIER_NAMES)),
    "user": (_USER,),
    "audit": (Option("user", "dc_opt_user", required=False),),
    "refund": (Option("payment", "dc_opt_payment", kind=int),),
}
FREE_TEXT = (Option("text", "dc_opt_text", required=False),)


def may_ask(name: str, values: dict[str, Any] | None = None) -> bool:
    """Whether the command's flow may answer with a question (which opens a text box): it takes free text, and
    none was given. Such a command runs before its first response; every other one is acknowledged first."""
    options = OPTIONS.get(name, FREE_TEXT)
    return any(option.name == "text" for option in options) and not (values or {}).get("text")


def command_text(options: tuple[Option, ...], values: dict[str, Any]) -> str:
    """The argument text the router parses, e.g. `@bob 2.50 welcome gift` for /grant."""
    words = []
    for option in options:
        value = values.get(option.name)
        if value is None:
            continue
        if isinstance(value, float):
            # 2.5 → "2.50"; an amount with more than cents stays as typed, for the router to refuse.
            value = f"{value:.2f}" if abs(value * 100 - round(value * 100)) < 1e-6 else repr(value)
        words.append(str(value).strip())
    return " ".join(word for word in words if word)


def _english(key: str) -> locale_str:
    """A catalog text as discord.py's translatable string; the translator reads the key back."""
    return locale_str(short(t(DEFAULT_LANGUAGE, key), MAX_DESCRIPTION), key=key)


class CatalogTranslator(app_commands.Translator):
    """Command and option descriptions in each catalog language, so Discord shows them in the user's own."""

    async def translate(
        self, string: locale_str, locale: discord.Locale, context: app_commands.TranslationContextTypes
    ) -> str | None:
        key = string.extras.get("key")
        language = _DISCORD_LANGUAGES.get(locale)
        if key is None or language is None:
            return None
        return short(t(language, key), MAX_DESCRIPTION)


class SlashCommands:
    """The router's commands on discord.py's command tree; each one hands its interaction to `on_command`."""

    def __init__(self, tree: app_commands.CommandTree[Any], services: Services, on_command: OnCommand) -> None:
        self.tree = tree
        self.services = services
        self.on_command = on_command
        self._sources: dict[str, Source] = {"services": self._services_choices}

    def register(self) -> None:
        """One slash command per command of the router's registry, so the two platforms cannot drift apart."""
        self.tree.clear_commands(guild=None)
        for spec in router.COMMANDS.values():
            self.tree.add_command(self._slash_command(spec))

    def _slash_command(self, spec: router.CommandSpec) -> app_commands.Command[Any, ..., None]:
        options = OPTIONS.get(spec.name, FREE_TEXT)

        async def run(interaction: discord.Interaction[Any], **values: Any) -> None:
            text = command_text(options, values)
            await self.on_command(interaction, spec.name, text, private=spec.private or spec.admin,
                                  asks=may_ask(spec.name, values))

        parameters = [inspect.Parameter("interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        annotation=discord.Interaction)]
        for option in options:
            parameters.append(inspect.Parameter(
                option.name, inspect.Parameter.KEYWORD_ONLY,
                annotation=option.kind if option.required else Optional[option.kind],  # noqa: UP045 - discord.py reads it
                default=inspect.Parameter.empty if option.required else None,
            ))
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        callback: Any = run
        if options:
            callback = app_commands.describe(**{o.name: _english(o.help_key) for o in options})(callback)
        choices = {o.name: [Choice(name=c, value=c) for c in o.choices] for o in options if o.choices}
        if choices:
            callback = app_commands.choices(**choices)(callback)
        completes = {o.name: self._completer(o.autocomplete) for o in options if o.autocomplete}
        if completes:
            callback = app_commands.autocomplete(**completes)(callback)
        command = app_commands.Command(name=spec.name, description=_english(spec.help_key), callback=callback)
        if spec.admin:
            # Hidden from members without Administrator; the router refuses non-admins all the same.
            command.default_permissions = discord.Permissions(administrator=True)
        return command

    async def sync(self) -> None:
        guild_ids = self.services.settings.discord_guild_ids
        targets = [discord.Object(id=guild_id) for guild_id in guild_ids] or [None]
        for guild in targets:
            try:
                if guild is not None:
                    self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("discord: %d slash commands synced %s", len(synced),
                         f"to guild {guild.id}" if guild is not None else "globally")
            except discord.HTTPException as error:
                log.warning("discord: syncing the slash commands %s failed: %s",
                            f"to guild {guild.id}" if guild is not None else "globally", error)

    def _completer(self, source: str) -> Source:
        fetch = self._sources[source]

        async def complete(interaction: discord.Interaction[Any], current: str) -> list[Choice[str]]:
            try:
                async with asyncio.timeout(AUTOCOMPLETE_SECONDS):
                    return (await fetch(interaction, current))[:MAX_OPTIONS]
            except Exception as error:
                log.warning("discord: autocomplete %s failed: %r", source, error)
                return []

        return complete

    async def _services_choices(self, interaction: discord.Interaction[Any], current: str) -> list[Choice[str]]:
        """Services as the user types (the verification service's own search), popular ones before that."""
        verification = self.services.verification
        search = getattr(verification, "search_services", None)
        popular = getattr(verification, "popular_services", None)
        if current.strip() and search is not None:
            found = await search(current.strip())
        elif popular is not None:
            found = await popular()
        else:
            return []
        return [Choice(name=short(info.name, 100) or info.code, value=str(info.code)[:100]) for info in found
                if len(str(info.code)) <= 100]
