"""Who sent an interaction and where: the account's contact, whether others read along, and refs to messages."""

from __future__ import annotations

from typing import Any

import discord

from bot.discord.limits import PLATFORM
from bot.handlers.screens import SentRef
from core.money.accounts import Contact


def contact_of(interaction: discord.Interaction[Any]) -> Contact:
    user = interaction.user
    return Contact(
        platform=PLATFORM,
        platform_user_id=str(user.id),
        chat_id=str(user.id),
        username=user.name,
        display_name=user.display_name,
        language_code=str(interaction.locale),
    )


def in_bot_dm(interaction: discord.Interaction[Any]) -> bool:
    """In the user's own DM with the bot, where nobody else reads along (not a guild, not a DM between people)."""
    channel = interaction.channel
    in_dm = channel is not None and getattr(channel, "type", None) == discord.ChannelType.private
    return interaction.guild_id is None and in_dm and not interaction.context.private_channel


def ephemeral_source(interaction: discord.Interaction[Any]) -> bool:
    message = interaction.message
    return message is not None and message.flags.ephemeral


def sent_ref(user_id: str, message_id: int | str) -> SentRef:
    return SentRef(PLATFORM, user_id, str(message_id))
