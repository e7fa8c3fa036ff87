"""The outbox's way into Discord: relayed SMS, codes and alerts as DMs, edited in place where Discord allows."""

from __future__ import annotations

import contextlib

import aiohttp
import discord

from bot.discord.limits import PLATFORM
from bot.discord.rendering import Rendered, ScreenRenderer
from bot.discord.tracking import ShownMessages
from bot.handlers.screens import screen_from_outgoing
from core.platform.outbox import DeliveryError, OutgoingMessage


class DiscordSender:
    """Relayed SMS, codes and alerts as DMs; discord.py waits out short rate limits itself, longer ones come back
    as `DeliveryError(retry_after=…)`, a user who cannot be messaged as `blocked`."""

    platform = PLATFORM

    def __init__(self, client: discord.Client, renderer: ScreenRenderer, shown: ShownMessages) -> None:
        self.client = client
        self.renderer = renderer
        self.shown = shown
        self._dm_channels: dict[str, int] = {}

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        try:
            return await self._send(chat_id, message)
        except discord.RateLimited as error:
            wait = error.retry_after
            raise DeliveryError(f"rate limited: retry after {wait:.1f}s", retry_after=wait) from None
        except discord.Forbidden as error:
            raise DeliveryError(f"forbidden: {error.text or error.status}", blocked=True) from None
        except discord.NotFound as error:
            raise DeliveryError(f"not found: {error.text or error.status}", blocked=True) from None
        except discord.HTTPException as error:
            if error.status == 429:
                raise DeliveryError("rate limited", retry_after=_retry_after(error)) from None
            if error.status >= 500:
                raise DeliveryError(f"discord server error {error.status}") from None
            raise DeliveryError(f"refused: {error.status} {error.code} {error.text}", permanent=True) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise DeliveryError(f"network: {error!r}") from None
        except discord.ClientException as error:
            raise DeliveryError(f"not connected: {error}") from None

    async def _send(self, chat_id: str, message: OutgoingMessage) -> str:
        if not chat_id.isdigit():
            raise DeliveryError(f"not a Discord user id: {chat_id!r}", permanent=True)
        rendered = await self.renderer.render(
            screen_from_outgoing(message), chat_id, interactive=False, previews=not message.disable_preview,
            photo_url=message.photo_url,
        )
        edit_id = getattr(message, "edit_message_id", None)
        if edit_id and await self._edit(chat_id, str(edit_id), rendered):
            return str(edit_id)
        channel = await self._channel(chat_id)
        for piece in rendered.before:
            await channel.send(content=piece)
        sent = await channel.send(**rendered.send_kwargs())
        return str(sent.id)

    async def _edit(self, chat_id: str, message_id: str, rendered: Rendered) -> bool:
        """Edits in place where Discord still allows it; False sends the update as a new DM instead."""
        if rendered.before or not message_id.isdigit():
            return False
        self.shown.forget_view_of(int(message_id))
        editor = self.shown.editor_of(int(message_id))
        if editor is not None:
            # An answer to an interaction (ephemeral ones above all) is edited with that interaction's token.
            try:
                await editor(**rendered.edit_kwargs())
                return True
            except discord.HTTPException as error:
                if error.status not in (401, 403, 404):
                    raise
        channel = await self._channel(chat_id)
        try:
            await channel.get_partial_message(int(message_id)).edit(**rendered.edit_kwargs())
        except discord.NotFound:
            return False
        except discord.HTTPException as error:
            if error.status in (400, 403) and error.code in (50005, 50001, 50021, 50083):
                return False  # not ours to edit (any more): the news goes out as a new message
            raise
        return True

    async def _channel(self, user_id: str) -> discord.PartialMessageable:
        client = self.client
        channel_id = self._dm_channels.get(user_id)
        if channel_id is None:
            data = await client.http.start_private_message(int(user_id))
            channel_id = self._dm_channels[user_id] = int(data["id"])
        return client.get_partial_messageable(channel_id, type=discord.ChannelType.private)


def _retry_after(error: discord.HTTPException) -> float:
    headers = getattr(error.response, "headers", {}) or {}
    for value in (headers.get("Retry-After"), headers.get("X-RateLimit-Reset-After")):
        with contextlib.suppress(TypeError, ValueError):
            return max(0.0, float(value))  # type: ignore[arg-type]
    return 5.0
