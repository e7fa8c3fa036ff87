"""The Discord front end: slash commands, buttons and modals into handler calls, Screens rendered as messages.

Parse and render only: every rule lives in bot/handlers (the router) and core, exactly as for Telegram.

How it runs. `start()` logs in over HTTP (`GET /users/@me`, `GET /oauth2/applications/@me`), builds one slash
command per command of the router's registry (commands.py), syncs them (to each of `DISCORD_GUILD_IDS` at once,
otherwise globally) and, in production, opens the gateway websocket in a background task (`Client.connect`);
interactions then arrive as gateway events and discord.py hands them to the command tree, to the persistent
components (components.py: `discord.ui.DynamicItem`, so buttons keep working after a restart) and to open modals,
which all end in interactions.py. Tests pass `gateway=False` and feed interaction payloads straight into the
client's connection state. `DISCORD_API_BASE_URL` points discord.py at another server (rest.py).

Chat ids. A Discord user's chat id is their user id: the only id an interaction always carries (guild
interactions do not name the DM channel), and what `DiscordSender` opens (and caches) a DM channel for.

Inside this package `import discord` is discord.py itself: imports are absolute, never relative to the package.
"""

from bot.discord.front import DiscordFrontEnd
from bot.discord.sender import DiscordSender

__all__ = ["DiscordFrontEnd", "DiscordSender"]
