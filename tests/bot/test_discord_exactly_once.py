"""Each Discord interaction acts once: the same interaction id handed to discord.py again changes nothing."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from sqlalchemy import func, select

from core.models import LinkCode
from core.platform import updates
from core.platform.db import Database
from tests.bot.test_discord import discord_app
from tests.fakes.discord_api import buttons, text_of


async def _link_codes(db: Database) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(LinkCode)) or 0)


async def test_a_repeated_interaction_id_runs_its_command_once(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    async with discord_app(db) as h:
        gus = h.user(401, "gus")
        interaction = h.fake.command(gus, "link")
        for _ in range(3):  # a gateway resume replaying INTERACTION_CREATE, and another instance getting it too
            h.fake.dispatch(h.front.client, interaction)
        await h.fake.answered(interaction)
        await h.front.idle(5)
        await asyncio.sleep(0.2)
        await h.front.idle(5)
        assert await _link_codes(db) == 1
        assert len(h.fake.calls("POST", rf"/interactions/{interaction.id}/")) == 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_repeated_button_interaction_is_answered_once(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    async with discord_app(db) as h:
        hal = h.user(402, "hal")
        start = await h.command(hal, "start")
        press = h.fake.component(hal, start, buttons(start)["💰 Balance"])
        h.fake.dispatch(h.front.client, press)
        h.fake.dispatch(h.front.client, press)
        await h.fake.answered(press)
        await h.front.idle(5)
        await asyncio.sleep(0.2)
        await h.front.idle(5)
        assert len(h.fake.calls("POST", rf"/interactions/{press.id}/")) == 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        again = await h.command(hal, "link")  # a new interaction id is of course handled
        assert "/link" in str(again) and await _link_codes(db) == 1


async def test_two_instances_with_one_interaction_answer_it_once(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    """Every instance's gateway gets each interaction: whichever claims it in the database answers it, whichever
    acknowledged it first; the other one stops quietly."""
    async with discord_app(db) as h:
        ivy = h.user(403, "ivy")
        # The other instance acknowledged it first ("thinking…"), then lost the claim: this one answers by follow-up.
        first = h.fake.command(ivy, "link")
        async with aiohttp.ClientSession() as http:
            url = f"{h.fake.base_url}/interactions/{first.id}/{first.token}/callback"
            async with http.post(url, json={"type": 5, "data": {"flags": 64}}) as response:
                assert response.status == 204
        placeholder = first.original_id
        assert placeholder is not None
        h.fake.dispatch(h.front.client, first)
        await h.fake.wait_for(lambda: text_of(h.fake.messages[placeholder]))
        await h.front.idle(5)
        [answer] = h.fake.produced(first)
        assert int(answer["id"]) == placeholder and "/link" in text_of(answer) and await _link_codes(db) == 1
        assert [r.status for r in h.fake.calls("POST", rf"^/interactions/{first.id}/")] == [204, 400]

        # The other instance claimed it: this one's acknowledgement stands and the other's answer replaces it.
        second = h.fake.command(ivy, "link")
        assert await updates.claim(db, "discord", second.id)
        await h.run(second)
        assert second.callback_type == 5 and not h.fake.calls("POST", rf"^/webhooks/\d+/{second.token}")
        assert await _link_codes(db) == 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
