"""Discord's REST calls go through the bot's flood budget: DMs from the outbox and broadcasts take slots by rank,
answers to interactions (which Discord does not count in the bot's limit) never wait for them."""

from __future__ import annotations

import asyncio
import time

from core.platform.db import Database
from core.platform.outbox import OutgoingMessage
from core.platform.pacing import Rank, traffic
from tests.bot.test_discord import discord_app


def _bot_requests(at_or_after: float, requests: list) -> list[float]:  # type: ignore[type-arg]
    """When the bot's own REST requests reached the fake (interaction callbacks and webhooks left out)."""
    return sorted(r.at for r in requests if r.at >= at_or_after
                  and not r.path.startswith(("/interactions", "/webhooks")))  # the fake records paths below /api/v10


async def test_dms_take_slots_by_rank_and_interaction_answers_do_not_wait(db: Database) -> None:
    async with discord_app(db) as h:
        h.front.budget.share(10)  # 5 requests a second, so that the pacing shows in a short test
        began = time.monotonic()

        async def dm(user_id: int, rank: Rank) -> float:
            with traffic(rank):
                await h.front.sender.send(str(user_id), OutgoingMessage(text=f"hello {user_id}"))
            return time.monotonic()

        bulk = [asyncio.create_task(dm(660000000000000100 + n, Rank.BULK)) for n in range(6)]
        await asyncio.sleep(0.3)
        relay = asyncio.create_task(dm(660000000000000200, Rank.PERSONAL))
        answered = time.monotonic()
        await h.command(h.user(660000000000000300), "balance")
        answered = time.monotonic() - answered
        relay_done = await relay
        bulk_done = await asyncio.gather(*bulk)

        times = _bot_requests(began, h.fake.requests)
        assert len(times) >= 14  # each new DM: open the channel, then send
        busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
        assert busiest <= 5, times
        # The relay (two requests) went ahead of the broadcast DMs queued before it.
        assert relay_done - began < 1.6 and sum(1 for t in bulk_done if t > relay_done) >= 3
        assert answered < 0.5
