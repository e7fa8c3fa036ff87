"""`DISCORD_API_BASE_URL`: discord.py's REST routes and default gateway pointed at another server, and back.

discord.py builds every REST URL, bot and interaction webhook alike, from one class attribute,
`discord.http.Route.BASE` (its own `_set_api_version` changes it the same way), and a plain `Client` connects to
the class default gateway `DiscordWebSocket.DEFAULT_GATEWAY`. With a base URL set, the front end sets `Route.BASE`
before logging in, asks that server's `GET /gateway/bot` for the gateway address and sets it as the default
gateway; stopping puts both back. They are process-wide, as is a process's one Discord bot.
"""

from __future__ import annotations

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route


class ApiBase:
    """The process-wide REST base and default gateway, as they were before `use` changed them."""

    def __init__(self) -> None:
        self._saved: tuple[str, yarl.URL] | None = None

    def use(self, base: str) -> None:
        self._saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
        Route.BASE = base

    async def use_gateway_of(self, client: discord.Client) -> None:
        _, url, _ = await client.http.get_bot_gateway()
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)

    def restore(self) -> None:
        if self._saved is not None:
            Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved
            self._saved = None
