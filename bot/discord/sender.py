"""The outbox's way into Discord: relayed SMS, codes and alerts as DMs, edited in place where Discord allows."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import aiohttp
import discord
from discord.http import HTTPClient, Route

from bot.discord.limits import PLATFORM
from bot.discord.rendering import Rendered, ScreenRenderer
from bot.discord.tracking import ShownMessages
from bot.handlers.screens import screen_from_outgoing
from core.platform.outbox import DeliveryError, OutgoingMessage
from core.platform.pacing import BotBudget


def pace_requests(http: HTTPClient, budget: BotBudget) -> None:
    """Every REST request of discord.py's client takes a slot of the bot's budget (Discord allows a bot 50
    requests a second), by the rank of the traffic it belongs to: answers, then the outbox, then broadcasts.

    discord.py has no hook for this; its client's methods all call `self.request`, so the instance's `request` is
    wrapped. Answers to interactions do not pass here (discord.py sends them through its webhook adapter), and
    Discord does not count interaction endpoints in the bot's global limit either. Per-channel limits come back
    in every answer's headers, and discord.py keeps to them itself. A 429 does not hold this budget: discord.py
    waits out a global one for every request already, and a long per-route one concerns that route alone (it comes
    back to the sender as `DeliveryError(retry_after=…)`)."""
    request = http.request
    shared = budget.shared

    async def paced_request(route: Route, **kwargs: Any) -> Any:
        ticket = await shared.acquire()
        try:
            return await request(route, **kwargs)
        finally:
            shared.finished(ticket)

    http.request = paced_request  # type: ignore[method-assign]


class DiscordSender:
    """Relayed SMS, codes and alerts as DMs; discord.py waits out short rate limits itself, longer ones come back
    as `DeliveryError(retry_after=…)`, a user who cannot be messaged as `blocked`. It paces itself: each of its
    requests takes a slot of `budget` (see `pace_requests`)."""

    platform = PLATFORM

    def __init__(
        self, client: discord.Client, renderer: ScreenRenderer, shown: ShownMessages, budget: BotBudget
    ) -> None:
        self.client = client
        self.budget = budget
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
        # Files (a voicemail, pictures) go as attachments of the message; a new message, never an edit.
        rendered.files.extend(discord.File(io.BytesIO(item.data), filename=item.filename) for item in message.attachments)
        edit_id = None if message.attachments else getattr(message, "edit_message_id", None)
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
