"""The Discord front end as a component of the app: discord.py's client and command tree, started and stopped.

It wires the parts together (renderer, interaction handler, slash commands, DM sender) and owns their life: login,
command sync, the gateway connection in production, and a shutdown that lets answers in progress finish.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
from discord import app_commands

from bot.discord.commands import CatalogTranslator, SlashCommands
from bot.discord.components import ActionButton, ActionSelect, WriteButton
from bot.discord.interactions import InteractionHandler
from bot.discord.limits import SLOW_SECONDS, TOKEN_LIFETIME, VIEW_TIMEOUT
from bot.discord.rendering import ScreenRenderer
from bot.discord.rest import ApiBase
from bot.discord.sender import DiscordSender, pace_requests
from bot.discord.tracking import InFlight, ShownMessages
from bot.handlers.registry import load_flows
from core.platform.pacing import BotBudget
from core.services import Services

log = logging.getLogger(__name__)


class _Client(discord.Client):
    """discord.py's client, knowing the interaction handler so that components and modals can reach it."""

    def __init__(self, interactions: InteractionHandler, **options: Any) -> None:
        super().__init__(**options)
        self.interactions = interactions


class _Tree(app_commands.CommandTree[_Client]):
    async def on_error(self, interaction: discord.Interaction[_Client], error: app_commands.AppCommandError, /) -> None:
        handler = interaction.client.interactions
        if isinstance(error, app_commands.CommandNotFound | app_commands.CommandSignatureMismatch
                      | app_commands.TransformerError):
            # A command Discord still shows from an older sync: the router answers it by name.
            await handler.on_stale_command(interaction)
            return
        await handler.report_error(interaction, getattr(error, "original", error))


class DiscordFrontEnd:
    """discord.py's client and command tree over the router; `sender` delivers the outbox's messages by DM."""

    name = "discord"

    def __init__(
        self, services: Services, *, gateway: bool = True, view_timeout: float = VIEW_TIMEOUT,
        slow_seconds: float = SLOW_SECONDS,
    ) -> None:
        if not 0 < view_timeout <= TOKEN_LIFETIME:
            raise ValueError("view_timeout must end while the interaction token can still edit the message")
        load_flows()
        self.services = services
        settings = services.settings
        assert settings.discord_bot_token is not None
        self.gateway = gateway
        self.shown = ShownMessages()
        self.tasks = InFlight()
        self.renderer = ScreenRenderer(services, self.shown, self.tasks, view_timeout=view_timeout)
        self.interactions = InteractionHandler(services, self.renderer, self.shown, self.tasks,
                                               slow_seconds=slow_seconds)
        # No voice here: discord.py's start-up warnings about voice libraries would only be noise in our logs.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        # Interactions need no intent; guilds keeps discord.py's guild cache (and its warnings) sane.
        self.client = _Client(
            self.interactions, intents=discord.Intents(guilds=True), allowed_mentions=discord.AllowedMentions.none(),
            max_ratelimit_timeout=30.0, chunk_guilds_at_startup=False, max_messages=None,
        )
        # The bot's one flood budget: every REST request (DMs from the outbox and broadcasts, command sync) takes a slot.
        self.budget = BotBudget.discord()
        pace_requests(self.client.http, self.budget)
        self.tree = _Tree(self.client)
        self.commands = SlashCommands(self.tree, services, self.interactions.on_command)
        self.sender = DiscordSender(self.client, self.renderer, self.shown, self.budget)
        self._gateway_task: asyncio.Task[None] | None = None
        self._api_base = ApiBase()

    async def start(self) -> None:
        settings = self.services.settings
        assert settings.discord_bot_token is not None
        base = settings.discord_api_base_url
        if base:
            self._api_base.use(base)
        try:
            await self.client.login(settings.discord_bot_token.get_secret_value())
            self.client.add_dynamic_items(ActionButton, ActionSelect, WriteButton)
            self.commands.register()
            await self.tree.set_translator(CatalogTranslator())
            await self.commands.sync()
            if self.gateway:
                if base:
                    await self._api_base.use_gateway_of(self.client)
                self._gateway_task = asyncio.create_task(self._run_gateway(), name="discord-gateway")
        except BaseException:
            await self.stop()
            raise

    async def _run_gateway(self) -> None:
        try:
            await self.client.connect(reconnect=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Discord unreachable for good (or a token revoked): loud, but not a defect of ours.
            log.warning("the Discord gateway connection ended; Discord commands stop working", exc_info=True)

    async def stop(self) -> None:
        self.shown.stop_all()
        await self.idle(5.0)
        self.tasks.cancel_all()
        if not self.client.is_closed():
            await self.client.close()
        # discord.py leaves its "wait for guilds, then dispatch ready" task running after close().
        ready = getattr(self.client._connection, "_ready_task", None)
        if ready is not None and not ready.done():
            ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
        if self._gateway_task is not None:
            try:
                await asyncio.wait_for(self._gateway_task, timeout=5.0)
            except (TimeoutError, asyncio.CancelledError):
                pass
            self._gateway_task = None
        self._api_base.restore()

    async def idle(self, seconds: float = 5.0) -> None:
        """Waits (at most `seconds`) until every interaction being handled now has been answered."""
        await self.tasks.idle(seconds)
