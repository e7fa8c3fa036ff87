"""Journeys through the real discord.py client, command tree and components against the fake Discord API.

Interactions are real `discord.Interaction` objects made from INTERACTION_CREATE payloads, handed to discord.py
the way its gateway reader does; every REST call (login, command sync, interaction responses, follow-ups, DMs)
goes to the local fake, which records it.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route
from sqlalchemy import func, select

from bot.discord import DiscordFrontEnd
from bot.handlers import router
from bot.handlers.registry import load_flows
from bot.handlers.screens import Button, Screen, SentRef, toast
from bot.render import plain_text
from core.models import AuditLog, ChatIdentity, OutboxDelivery, User
from core.money import ledger
from core.platform import outbox
from core.platform.db import Database
from core.platform.i18n import escape, t
from core.platform.outbox import DeliveryError, OutboxDispatcher, OutButton, OutgoingMessage
from core.services import Services, build_services
from tests.conftest import make_settings
from tests.fakes.discord_api import FakeDiscordServer, FakeUser, Interaction, buttons, disabled, text_of
from tests.harness import ADMIN_ID as TELEGRAM_ADMIN_ID
from tests.harness import buttons as telegram_buttons
from tests.harness import telegram_app

ADMIN_ID = 880000000000000001
GUILD_ID = 770000000000000001
JSONDict = dict[str, Any]


@dataclass
class DiscordHarness:
    fake: FakeDiscordServer
    services: Services
    front: DiscordFrontEnd
    dispatcher: OutboxDispatcher

    def user(self, user_id: int, username: str | None = None, **kwargs: Any) -> FakeUser:
        return self.fake.user(user_id, username, **kwargs)

    async def run(self, interaction: Interaction, *, timeout: float = 5.0) -> Interaction:
        """Hands the interaction to discord.py and waits until the bot has answered it completely."""
        self.fake.dispatch(self.front.client, interaction)
        await self.fake.answered(interaction, timeout)
        await self.front.idle(timeout)
        return interaction

    async def invoke(self, who: FakeUser, name: str, /, *, guild_id: int | None = None, **options: Any) -> Interaction:
        return await self.run(self.fake.command(who, name, options, guild_id=guild_id))

    async def command(self, who: FakeUser, name: str, /, *, guild_id: int | None = None, **options: Any) -> JSONDict:
        """A slash command with its options by name; returns the last message its answer produced."""
        interaction = await self.invoke(who, name, guild_id=guild_id, **options)
        return self.fake.produced(interaction)[-1]

    async def press(self, user: FakeUser, message: JSONDict, custom_id: str, *, values: list[str] | None = None
                    ) -> Interaction:
        return await self.run(self.fake.component(user, message, custom_id, values=values))

    async def tap(self, user: FakeUser, message: JSONDict, custom_id: str) -> JSONDict:
        """Presses a button; returns the message it edited or produced, as it looks now."""
        return self.fake.produced(await self.press(user, message, custom_id))[-1]

    async def write(self, user: FakeUser, opened_by: Interaction, text: str) -> Interaction:
        """Fills in and submits the text box `opened_by` was answered with."""
        return await self.run(self.fake.modal_submit(user, opened_by, text))


@asynccontextmanager
async def discord_app(db: Database, *, gateway: bool = False, view_timeout: float = 600.0,
                      **overrides: Any) -> AsyncIterator[DiscordHarness]:
    """The Discord front end and an outbox dispatcher, with every Discord call going to the local fake."""
    async with FakeDiscordServer() as fake:
        values: dict[str, Any] = {
            "discord_bot_token": fake.token, "discord_api_base_url": fake.base_url,
            "admin_discord_ids": str(ADMIN_ID), "signup_bonus_cents": 500,
        }
        values.update(overrides)
        services = build_services(make_settings(db.url, **values), db=db)
        front = DiscordFrontEnd(services, gateway=gateway, view_timeout=view_timeout)
        dispatcher = OutboxDispatcher(db, {"discord": front.sender}, metrics=services.metrics, base_backoff=0.05)
        services.outbox = dispatcher
        await front.start()
        await dispatcher.start()
        try:
            yield DiscordHarness(fake, services, front, dispatcher)
        finally:
            await dispatcher.stop()
            await front.stop()


async def _account(db: Database, platform: str, platform_user_id: str) -> User:
    async with db.read() as session:
        identity = await session.scalar(
            select(ChatIdentity).where(ChatIdentity.platform == platform, ChatIdentity.platform_user_id == platform_user_id)
        )
        assert identity is not None
        user = await session.get(User, identity.user_id)
        assert user is not None
        return user


def _available(text: str) -> str:
    match = re.search(r"Available: (\$[\d,]+\.\d\d)", text)
    assert match is not None, text
    return match.group(1)


# --- menus, balance, history, settings -----------------------------------------------------------------------------


async def test_start_menu_balance_and_history_with_csv(db: Database) -> None:
    async with discord_app(db) as h:
        ann = h.user(101, "ann", global_name="Ann <&>")
        start = await h.command(ann, "start")
        assert "Welcome to CumApp, Ann <&>!" in text_of(start) and "$5.00" in text_of(start)
        assert buttons(start)["💰 Balance"] == "cmd:balance"
        assert not start["flags"] & 64  # /start holds nothing private: a normal message in the user's DM

        press = await h.press(ann, start, "cmd:balance")
        assert press.callback_type == 6  # acknowledged before the flow ran; then the menu message becomes the balance
        balance = h.fake.messages[int(start["id"])]
        assert "Available: $5.00" in text_of(balance) and "Tier: free" in text_of(balance)
        assert "Verifications: 0/5" in text_of(balance)

        history = await h.command(ann, "history")
        assert history["flags"] & 64  # private data: ephemeral even in the DM
        assert "sign-up bonus" in text_of(history) and "$5.00" in text_of(history)
        await h.press(ann, history, "histcsv")
        upload = [r for r in h.fake.requests if r.files][-1]
        rows = list(csv.reader(io.StringIO(upload.files[0].content.decode())))
        assert upload.files[0].filename.endswith(".csv")
        assert rows[0][:4] == ["id", "time_utc", "kind", "amount_usd"] and rows[1][2] == "signup_bonus"

        in_guild = await h.command(ann, "balance", guild_id=GUILD_ID)
        assert in_guild["flags"] & 64 and "Available: $5.00" in text_of(in_guild)
        menu_in_guild = await h.command(ann, "start", guild_id=GUILD_ID)
        assert menu_in_guild["flags"] & 64  # in a guild every answer is for the user's eyes only
    user = await _account(db, "discord", "101")
    assert user.balance_cents == 500


async def test_history_pages_back_and_forth(db: Database) -> None:
    async with discord_app(db) as h:
        bo = h.user(102)
        await h.command(bo, "start")
        user = await _account(db, "discord", "102")
        async with db.transaction() as session:
            for n in range(15):
                await ledger.post(session, user.id, 100 + n, kind="grant", idempotency_key=f"t:{n}", note=f"gift {n}")
        first = await h.command(bo, "history")
        assert "(1–10 of 16)" in text_of(first)
        second = await h.tap(bo, first, buttons(first)["Next ➡️"])
        assert second["id"] == first["id"] and "(11–16 of 16)" in text_of(second)
        assert set(buttons(second)) == {"⬅️ Prev", "⬇️ CSV"}
        again = await h.tap(bo, second, buttons(second)["⬅️ Prev"])
        assert "(1–10 of 16)" in text_of(again)


async def test_settings_toggles_language_and_ai(db: Database) -> None:
    async with discord_app(db) as h:
        ana = h.user(103, locale="es-ES")
        start = await h.command(ana, "start")
        assert "Bienvenido" in text_of(start)
        settings = await h.command(ana, "settings")
        assert buttons(settings)["Asistencia de IA: no"] == "set:ai"
        edited = await h.tap(ana, settings, "set:ai")
        assert "Asistencia de IA: sí" in buttons(edited)
        english = await h.tap(ana, edited, buttons(edited)["🌐 Idioma: Español"])
        assert "AI assistance: on" in buttons(english)
    user = await _account(db, "discord", "103")
    assert user.ai_opt_in is True and user.locale == "en"


async def test_markup_in_names_and_texts_is_shown_literally(db: Database) -> None:
    async with discord_app(db) as h:
        zoe = h.user(104, global_name="*Zoë* _x_ `y` <@&1> # h")
        start = await h.command(zoe, "start")
        assert "\\*Zoë\\* \\_x\\_ \\`y\\` <@&1> # h" in text_of(start)
        # Names and SMS texts may hold mentions: nobody is ever pinged by what the bot shows.
        [answer] = h.fake.calls("POST", r"^/webhooks/")  # the follow-up after the acknowledgement
        assert answer.json["allowed_mentions"]["parse"] == []


# --- linking with Telegram: one account, same figures on both apps -------------------------------------------------


async def test_link_from_discord_to_telegram_and_the_same_account_on_both(db: Database) -> None:
    async with telegram_app(db) as tg, discord_app(db) as h:
        # Every command of the Telegram menu (the admin's menu lists them all) is a Discord slash command too.
        telegram_menu = {c["command"] for c in tg.fake.commands_for({"type": "chat", "chat_id": TELEGRAM_ADMIN_ID})}
        assert telegram_menu == set(router.COMMANDS) == h.fake.command_names()

        ann_d = h.user(201, "ann")
        await h.command(ann_d, "start")
        link = await h.command(ann_d, "link")
        match = re.search(r"`/link ([A-Z0-9]{8})`", link["content"])
        assert match is not None, link["content"]
        code = match.group(1)
        assert link["content"].count(code) == 1  # shown once, ready to copy: no second copy block

        ann_t = tg.user(301)
        done = await tg.command(ann_t, f"/link {code}")
        assert "Linked" in done["text"]
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(User).where(User.merged_into_id.is_(None))) == 1

        admin = h.user(ADMIN_ID, "boss")
        granted = await h.command(admin, "grant", user="@ann", amount=2.5, reason="welcome gift")
        assert "$2.50 credited to account" in text_of(granted)

        on_telegram = await tg.command(ann_t, "/balance")
        on_discord = await h.command(ann_d, "balance")
        assert _available(on_telegram["text"]) == _available(text_of(on_discord)) == "$7.50"
        assert (await _account(db, "telegram", "301")).id == (await _account(db, "discord", "201")).id


async def test_link_from_telegram_to_discord(db: Database) -> None:
    async with telegram_app(db) as tg, discord_app(db) as h:
        bo_t = tg.user(302)
        await tg.command(bo_t, "/start")
        shown = await tg.command(bo_t, "/link")
        code = telegram_buttons(shown)["📋 Copy code"].split()[1]
        bo_d = h.user(202)
        wrong = await h.command(bo_d, "link", code="ZZZZZZZZ")
        assert "wrong, expired or already used" in text_of(wrong)
        done = await h.command(bo_d, "link", code=code)
        assert "Linked" in text_of(done)
        assert (await _account(db, "telegram", "302")).id == (await _account(db, "discord", "202")).id
        assert _available(text_of(await h.command(bo_d, "balance"))) == _available((await tg.command(bo_t, "/balance"))["text"])


# --- the command set: typed options, descriptions, permissions, sync -------------------------------------------------


async def test_every_command_is_a_typed_slash_command_and_admin_ones_need_administrator(db: Database) -> None:
    async with discord_app(db) as h:
        assert h.fake.command_names() == set(router.COMMANDS)
        assert [g for g, _ in h.fake.sync_payloads] == [None]
        for spec in router.COMMANDS.values():
            command = h.fake.synced_command(spec.name)
            assert command["description"] == " ".join(plain_text(t("en", spec.help_key)).split())[:100]
            assert command["description_localizations"]["es-ES"].startswith(plain_text(t("es", spec.help_key))[:20])
            assert command["default_member_permissions"] == ("8" if spec.admin else None), spec.name
        grant = {o["name"]: o for o in h.fake.synced_command("grant")["options"]}
        assert [(o["type"], o["required"]) for o in grant.values()] == [(3, True), (10, True), (3, False)]
        assert grant["user"]["description"] == t("en", "dc_opt_user")
        tier = {o["name"]: o for o in h.fake.synced_command("tier")["options"]}
        assert [c["value"] for c in tier["tier"]["choices"]] == ["free", "pro", "business"]
        assert h.fake.synced_command("refund")["options"][0]["type"] == 4
        assert h.fake.synced_command("link")["options"][0] == {
            "type": 3, "name": "code", "description": t("en", "dc_opt_code"), "required": False,
            "description_localizations": {"es-ES": t("es", "dc_opt_code"), "es-419": t("es", "dc_opt_code")},
        }
        assert "options" not in h.fake.synced_command("balance") or not h.fake.synced_command("balance")["options"]


async def test_commands_sync_to_each_guild_when_guild_ids_are_set(db: Database) -> None:
    async with discord_app(db, discord_guild_ids="111,222") as h:
        assert [g for g, _ in h.fake.sync_payloads] == [111, 222]
        assert h.fake.command_names(111) == h.fake.command_names(222) == set(router.COMMANDS)
        assert not h.fake.calls("PUT", r"^/applications/\d+/commands$")
        # A command of a guild sync is found by the tree through the guild's copy.
        cy = h.user(203)
        answer = await h.command(cy, "balance", guild_id=111)
        assert "Available: $5.00" in text_of(answer)


async def test_non_admin_is_refused_every_admin_command(db: Database) -> None:
    arguments: dict[str, dict[str, Any]] = {
        "grant": {"user": "1", "amount": 5.0}, "ban": {"user": "1"}, "unban": {"user": "1"},
        "tier": {"user": "1", "tier": "pro"}, "user": {"user": "1"}, "audit": {}, "refund": {"payment": 1},
    }
    async with discord_app(db) as h:
        eve = h.user(204)
        for spec in router.admin_commands():
            for guild_id in (None, GUILD_ID):
                answer = await h.command(eve, spec.name, guild_id=guild_id, **arguments.get(spec.name, {}))
                assert text_of(answer) == "That command is for admins only.", spec.name
                assert answer["flags"] & 64
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(AuditLog)) == 0
            assert await session.scalar(select(func.count()).select_from(User).where(User.status == "banned")) == 0

        admin = h.user(ADMIN_ID)
        # Typed options reach the router as the text a Telegram admin would type.
        assert "Amount must be dollars" in text_of(await h.command(admin, "grant", user="204", amount=2.555))
        assert "debited from" in text_of(await h.command(admin, "grant", user="204", amount=-1.0))
        assert "now on the pro tier" in text_of(await h.command(admin, "tier", user="204", tier="pro"))
        card = await h.command(admin, "user", user="204")
        assert "Account #" in text_of(card)
        banned = await h.tap(admin, card, buttons(card)["⛔ Ban"])
        assert "Status: banned" in text_of(banned)
        refused = await h.command(eve, "balance")
        assert "Your account is blocked" in text_of(refused)


async def test_a_command_discord_still_shows_after_it_was_removed_is_answered_by_the_router(db: Database) -> None:
    async with discord_app(db) as h:
        dee = h.user(205)
        answer = await h.command(dee, "frobnicate", text="x")
        assert "I don't know /frobnicate" in text_of(answer)


# --- slow flows, timeouts, errors ----------------------------------------------------------------------------------


async def test_an_interaction_is_acknowledged_before_its_flow_runs_and_answered_after_it(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def slow(req: router.Request) -> Screen:
        started.append("history")
        await release.wait()
        return Screen("done <b>slowly</b>", buttons=[[Button("Again", action="hist:0")]])

    async def slow_page(req: router.Request) -> Screen:
        started.append("page")
        await release.wait()
        return Screen("page <i>two</i>", edit=True)

    load_flows()  # /history registered even when this test runs alone
    monkeypatch.setitem(router.COMMANDS, "history", dataclasses.replace(router.COMMANDS["history"], flow=slow))
    monkeypatch.setitem(router.ACTIONS, "hist", (slow_page, False))
    async with discord_app(db) as h:
        eli = h.user(206)
        interaction = h.fake.command(eli, "history")
        h.fake.dispatch(h.front.client, interaction)
        await h.fake.answered(interaction)
        # "thinking…", privately, while the flow has not answered (it waits for `release`)
        assert interaction.callback_type == 5 and interaction.ephemeral_original
        assert not h.fake.calls("POST", r"^/webhooks/")
        release.set()
        await h.front.idle()
        [message] = h.fake.produced(interaction)
        assert message["content"] == "done **slowly**" and message["flags"] == 64  # "thinking…" replaced

        release.clear()
        press = h.fake.component(eli, message, "hist:0")
        h.fake.dispatch(h.front.client, press)
        await h.fake.answered(press)
        assert press.callback_type == 6  # acknowledged; the message is unchanged until the flow answers
        assert h.fake.messages[int(message["id"])]["content"] == "done **slowly**"
        release.set()
        await h.front.idle()
        assert started == ["history", "page"]
        assert h.fake.calls("PATCH", r"^/webhooks/\d+/[^/]+/messages/@original$")
        assert h.fake.messages[int(message["id"])]["content"] == "page *two*"
        assert not h.fake.messages[int(message["id"])]["components"]


async def test_menus_time_out_and_their_buttons_are_disabled(db: Database) -> None:
    async with discord_app(db, view_timeout=0.3) as h:
        fay = h.user(207)
        settings = await h.command(fay, "settings")
        assert not any(disabled(settings))
        message_id = int(settings["id"])
        await h.fake.wait_for(lambda: all(disabled(h.fake.messages[message_id])), timeout=3.0)
        assert len(disabled(h.fake.messages[message_id])) == 4
        assert h.fake.calls("PATCH", rf"^/webhooks/\d+/[^/]+/messages/{message_id}$")


async def test_an_exception_in_a_flow_gives_an_error_id_and_the_bot_goes_on(
    db: Database, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(req: router.Request) -> Screen:
        raise RuntimeError("boom")

    monkeypatch.setitem(router.COMMANDS, "history", dataclasses.replace(router.COMMANDS["history"], flow=explode))
    async with discord_app(db) as h:
        gus = h.user(208)
        answer = await h.command(gus, "history")
        match = re.search(r"Error id: `([0-9a-f]{8})`", text_of(answer))
        assert match is not None
        assert any(match.group(1) in record.getMessage() and record.exc_info for record in caplog.records)
        assert "Available" in text_of(await h.command(gus, "balance"))


# --- text boxes: a flow's question, and long lists ----------------------------------------------------------------


@pytest.fixture
def asking_flows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that asks for a name (a prompt) and a long list of like buttons; registered before start."""

    async def ask(req: router.Request) -> Screen:
        await router.set_prompt(req, "dcname")
        return Screen("What is your <b>name</b>?", prompt="Your name")

    async def ask_slowly(req: router.Request) -> Screen:
        await asyncio.sleep(1.3)
        return await ask(req)

    async def greet(req: router.Request) -> Screen:
        return Screen(f"Hello {escape(req.text)}") if req.prompt_data is not None else toast("")

    async def catalogue(req: router.Request) -> Screen:
        rows = [[Button(f"Service {n}", action=f"dcpick:{n}")] for n in range(12)]
        rows.append([Button("Next ➡️", action="noop"), Button("Also next", action="noop")])
        return Screen("Pick one:", buttons=rows)

    async def picked(req: router.Request) -> Screen:
        return Screen(f"You picked {escape(req.args[0])}", edit=True)

    async def chart(req: router.Request) -> list[Screen]:
        return [Screen("📊 <b>Stats</b>\nUsers: 3\nRevenue: $1,234.56"),
                Screen("Signups per day", photo=b"\x89PNG fake", photo_name="signups-7d.png")]

    async def long_text(req: router.Request) -> Screen:
        lines = [f"line {n:04d} <b>{'x' * 40}</b>" for n in range(int(req.text or "100"))]
        return Screen("\n".join(lines), buttons=[[Button("Done", action="noop")]])

    for name, flow in (("dcask", ask), ("dcslowask", ask_slowly), ("dclist", catalogue), ("dcchart", chart),
                       ("dclong", long_text)):
        monkeypatch.setitem(router.COMMANDS, name, router.CommandSpec(name, flow, False, "help_help", False))
    monkeypatch.setitem(router.ACTIONS, "dcname", (greet, False))
    monkeypatch.setitem(router.ACTIONS, "dcpick", (picked, False))


@pytest.mark.usefixtures("asking_flows")
async def test_a_question_opens_a_text_box_whose_answer_goes_to_the_flow(db: Database) -> None:
    async with discord_app(db) as h:
        hal = h.user(209)
        asked = await h.invoke(hal, "dcask")
        assert asked.callback_type == 9 and asked.modal is not None
        kinds = [c["type"] for c in asked.modal["components"]]
        assert kinds == [10, 18] and asked.modal["components"][0]["content"] == "What is your **name**?"
        assert asked.modal["components"][1]["component"]["placeholder"] == "Your name"
        answered = await h.write(hal, asked, "Hal *9000*")
        assert h.fake.produced(answered)[-1]["content"] == "Hello Hal \\*9000\\*"

        # Too slow to open a box at once: the question is a message with a button that opens it.
        slow = await h.invoke(hal, "dcslowask")
        assert slow.callback_type == 5
        question = h.fake.produced(slow)[-1]
        assert buttons(question) == {"✍️ Answer": "§write:answer"}
        opened = await h.press(hal, question, "§write:answer")
        assert opened.callback_type == 9
        answered = await h.write(hal, opened, "Hal")
        assert h.fake.produced(answered)[-1]["content"] == "Hello Hal"


@pytest.mark.usefixtures("asking_flows")
async def test_a_long_list_becomes_a_select_menu_and_a_choice_is_routed(db: Database) -> None:
    async with discord_app(db) as h:
        ida = h.user(210)
        listing = await h.command(ida, "dclist")
        rows = listing["components"]
        assert len(rows) == 2 and rows[0]["components"][0]["type"] == 3
        assert len(rows[0]["components"][0]["options"]) == 12
        # Two buttons with one action id: Discord wants unique custom ids, both still do the same.
        assert [b["custom_id"] for b in rows[1]["components"]] == ["noop", "noop§2"]
        noop = await h.press(ida, listing, "noop§2")
        assert noop.callback_type == 6  # a press with nothing to show is acknowledged, nothing changes
        select_id = rows[0]["components"][0]["custom_id"]
        press = await h.press(ida, listing, select_id, values=["dcpick:7"])
        assert press.callback_type == 6  # acknowledged first; the flow's answer then edits the message
        assert h.fake.messages[int(listing["id"])]["content"] == "You picked 7"


@pytest.mark.usefixtures("asking_flows")
async def test_several_screens_follow_one_another_and_photos_are_files(db: Database) -> None:
    async with discord_app(db) as h:
        ivy = h.user(220)
        interaction = await h.invoke(ivy, "dcchart")
        summary, photo = h.fake.produced(interaction)
        assert summary["embeds"][0]["title"] == "📊 Stats"  # a heading over lines reads best as an embed
        assert summary["embeds"][0]["description"] == "Users: 3\nRevenue: $1,234.56"
        assert photo["content"] == "Signups per day" and photo["attachments"][0]["filename"] == "signups-7d.png"
        upload = [r for r in h.fake.requests if r.files][-1]
        assert upload.files[0].content == b"\x89PNG fake" and upload.path.startswith("/webhooks/")


@pytest.mark.usefixtures("asking_flows")
async def test_a_long_text_is_an_embed_or_several_messages_never_refused(db: Database) -> None:
    async with discord_app(db) as h:
        jim = h.user(221)
        medium = h.fake.produced(await h.invoke(jim, "dclong", text="60"))
        assert len(medium) == 1 and 2000 < len(medium[0]["embeds"][0]["description"]) <= 4096
        long = h.fake.produced(await h.invoke(jim, "dclong", text="200"))
        assert len(long) > 1 and all(len(m["content"]) <= 2000 for m in long)
        shown = "\n".join(m["content"] for m in long)
        assert all(f"line {n:04d} **{'x' * 40}**" in shown for n in range(200))
        assert buttons(long[-1]) == {"Done": "noop"} and not any(buttons(m) for m in long[:-1])


async def test_the_fake_refuses_what_discord_refuses(db: Database) -> None:
    async with FakeDiscordServer() as fake, aiohttp.ClientSession() as client:
        channel = fake.dm_channel_id(5)
        url = f"{fake.base_url}/channels/{channel}/messages"
        auth = {"Authorization": f"Bot {fake.token}"}
        button = {"type": 2, "style": 2, "label": "x", "custom_id": "same"}
        cases = [
            {"content": "x" * 2001},
            {"content": ""},
            {"content": "x", "components": [{"type": 1, "components": [button, button]}]},
            {"content": "x", "components": [{"type": 1, "components": [{**button, "custom_id": f"{n}"}]} for n in range(6)]},
        ]
        for body in cases:
            async with client.post(url, json=body, headers=auth) as response:
                assert response.status == 400 and (await response.json())["code"] == 50035
        async with client.post(url, json={"content": "ok"}) as response:
            assert response.status == 401  # no bot token
        async with client.post(url, json={"content": "ok"}, headers=auth) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "application/json"
            assert response.headers["X-RateLimit-Remaining"]


async def test_services_autocomplete_from_the_verification_service(
    db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def verify(req: router.Request) -> Screen:
        seen.append(req.text)
        return Screen("ok")

    monkeypatch.setitem(router.COMMANDS, "verify", router.CommandSpec("verify", verify, False, "help_verify", True))

    @dataclass(frozen=True)
    class Info:
        code: str
        name: str

    class Verification:
        async def search_services(self, query: str) -> list[Info]:
            if query == "boom":
                raise RuntimeError("provider down")
            return [Info("wa", "WhatsApp"), Info("wb", "Webex")] if query.lower().startswith("w") else []

        async def popular_services(self) -> list[Info]:
            return [Info("tg", "Telegram")]

    async with discord_app(db) as h:
        jo = h.user(211)
        none_wired = await h.run(h.fake.autocomplete(jo, "verify", {"service": "wha"}, "service"))
        assert none_wired.choices == []  # no verification service: no suggestions, no error
        h.services.verification = Verification()
        typed = await h.run(h.fake.autocomplete(jo, "verify", {"service": "wh"}, "service"))
        assert typed.callback_type == 8
        assert typed.choices == [{"name": "WhatsApp", "value": "wa"}, {"name": "Webex", "value": "wb"}]
        empty = await h.run(h.fake.autocomplete(jo, "verify", {"service": ""}, "service"))
        assert empty.choices == [{"name": "Telegram", "value": "tg"}]
        failing = await h.run(h.fake.autocomplete(jo, "verify", {"service": "boom"}, "service"))
        assert failing.choices == [] and "autocomplete services failed" in caplog.text
        await h.command(jo, "verify", service="wa")
        assert seen == ["wa"]


# --- the outbox: DMs, replies, rate limits, blocked users ---------------------------------------------------------


async def _queue(db: Database, platform_user_id: str, message: OutgoingMessage) -> OutboxDelivery:
    user = await _account(db, "discord", platform_user_id)
    async with db.transaction() as session:
        [delivery] = await outbox.enqueue_for_user(session, user.id, kind="sms", message=message)
        return delivery


async def _delivery(db: Database, delivery_id: int) -> OutboxDelivery:
    async with db.read() as session:
        delivery = await session.get(OutboxDelivery, delivery_id)
        assert delivery is not None
        return delivery


async def _settled(db: Database, delivery_id: int, seconds: float = 5.0) -> OutboxDelivery:
    """The delivery once the dispatcher has recorded an outcome other than "try again"."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        delivery = await _delivery(db, delivery_id)
        if delivery.state in ("sent", "parked") or asyncio.get_running_loop().time() > deadline:
            return delivery
        await asyncio.sleep(0.05)


async def test_a_relayed_sms_arrives_by_dm_and_its_reply_button_opens_a_text_box_routed_as_a_reply(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies: list[tuple[str, SentRef | None, dict[str, Any] | None]] = []

    async def reply_flow(req: router.Request) -> Screen:
        replies.append((req.text, req.message, req.reply_context))
        return Screen("✅ Sent to <b>+1 555 0100</b>")

    monkeypatch.setitem(router.REPLY_KINDS, "dc_test", reply_flow)
    async with discord_app(db) as h:
        kim = h.user(212)
        await h.command(kim, "start")
        relay = OutgoingMessage(
            text="📩 SMS from <b>+1 555 0100</b>\n\nhi *there* see https://example.com/a_b",
            buttons=((OutButton("Analyze", action="ai:an:1"), OutButton("📋 Copy", copy_text="123456")),),
            reply_context={"kind": "dc_test", "conversation_id": 7},
        )
        delivery = await _queue(db, "212", relay)
        [dm] = await h.fake.wait_for(lambda: h.fake.dm_messages(212))
        assert "hi \\*there\\* see <https://example.com/a_b>" in dm["content"]
        assert "```\n123456\n```" in dm["content"]  # Discord has no copy button: the text is a code block
        assert buttons(dm) == {"Analyze": "ai:an:1", "↩️ Reply": "§write:reply"}
        assert (await _settled(db, delivery.id)).platform_message_id == dm["id"]

        opened = await h.press(kim, dm, "§write:reply")
        assert opened.callback_type == 9 and opened.modal is not None
        assert opened.modal["title"] == "Reply"
        answered = await h.write(kim, opened, "See you at 5")
        assert replies == [("See you at 5", SentRef("discord", "212", dm["id"]), {"kind": "dc_test", "conversation_id": 7})]
        assert answered.callback_type == 6 and answered.original_id == int(dm["id"])  # acknowledged, DM unchanged
        [confirmation] = [m for m in h.fake.produced(answered) if m["id"] != dm["id"]]
        assert confirmation["content"] == "✅ Sent to **+1 555 0100**" and not confirmation["flags"] & 64


async def test_a_flows_own_reply_button_becomes_the_reply_text_box(db: Database) -> None:
    async with discord_app(db) as h:
        lu = h.user(213)
        await h.command(lu, "start")
        relay = OutgoingMessage(
            text="📩 SMS", buttons=((OutButton("Reply", action="sms_reply:7"), OutButton("Block", action="sms_block:7")),),
            reply_context={"kind": "sms", "conversation_id": 7},
        )
        await _queue(db, "213", relay)
        [dm] = await h.fake.wait_for(lambda: h.fake.dm_messages(213))
        assert buttons(dm) == {"Reply": "§write:reply", "Block": "sms_block:7"}


async def test_a_dm_rate_limited_by_discord_waits_and_is_delivered(db: Database) -> None:
    async with discord_app(db) as h:
        mo = h.user(214)
        await h.command(mo, "start")
        h.fake.fail("POST", r"^/channels/\d+/messages$", status=429, retry_after=0.4)
        delivery = await _queue(db, "214", OutgoingMessage(text="Your code: <code>123456</code>"))
        [dm] = await h.fake.wait_for(lambda: h.fake.dm_messages(214), timeout=5.0)
        assert dm["content"] == "Your code: `123456`"
        posts = h.fake.calls("POST", r"^/channels/\d+/messages$")
        assert [p.status for p in posts] == [429, 200]
        assert posts[1].at - posts[0].at >= 0.35  # discord.py waited out retry_after before sending again
        sent = await _settled(db, delivery.id)
        assert sent.state == "sent" and sent.platform_message_id == dm["id"]


async def test_long_rate_limits_and_blocked_users_become_delivery_errors(db: Database) -> None:
    async with discord_app(db) as h:
        sender = h.front.sender
        h.fake.fail("POST", r"^/channels/\d+/messages$", status=429, retry_after=120.0)
        with pytest.raises(DeliveryError) as long_wait:
            await sender.send("215", OutgoingMessage(text="hi"))
        assert long_wait.value.retry_after == pytest.approx(120.0) and not long_wait.value.permanent

        h.fake.fail("POST", r"^/channels/\d+/messages$", status=429, retry_after=3.0, is_global=True, via=False)
        with pytest.raises(DeliveryError) as cloudflare:
            await sender.send("215", OutgoingMessage(text="hi"))
        assert cloudflare.value.retry_after == 3.0

        h.fake.fail("POST", r"^/channels/\d+/messages$", status=403)
        with pytest.raises(DeliveryError) as refused:
            await sender.send("215", OutgoingMessage(text="hi"))
        assert refused.value.blocked and refused.value.permanent

        with pytest.raises(DeliveryError) as not_a_user:
            await sender.send("telegram-chat", OutgoingMessage(text="hi"))
        assert not_a_user.value.permanent

        # Through the outbox: the user's Discord identity is marked unreachable and nothing is retried.
        ned = h.user(216)
        await h.command(ned, "start")
        h.fake.fail("POST", r"^/channels/\d+/messages$", status=403, times=5)
        delivery = await _queue(db, "216", OutgoingMessage(text="code"))
        assert (await _settled(db, delivery.id)).state == "parked"
        async with db.read() as session:
            identity = await session.scalar(select(ChatIdentity).where(ChatIdentity.platform_user_id == "216"))
            assert identity is not None and identity.unreachable_at is not None
        assert len(h.fake.calls("POST", r"^/channels/\d+/messages$")) == 4  # once each, no retry of a blocked user
        assert len(h.fake.calls("POST", r"^/users/@me/channels$")) == 2  # one DM channel per user, cached


async def test_the_outbox_edits_an_answer_in_place_even_an_ephemeral_one(db: Database, monkeypatch: pytest.MonkeyPatch
                                                                          ) -> None:
    refs: list[SentRef] = []

    async def status(req: router.Request) -> Screen:
        async def remember(ref: SentRef) -> None:
            refs.append(ref)

        return Screen("⏳ Waiting for the code…", buttons=[[Button("Cancel", action="noop")]], on_sent=remember)

    monkeypatch.setitem(router.COMMANDS, "history", dataclasses.replace(router.COMMANDS["history"], flow=status))

    @dataclasses.dataclass(frozen=True)
    class Edit(OutgoingMessage):
        edit_message_id: str | None = None

    async with discord_app(db) as h:
        oz = h.user(217)
        shown = await h.command(oz, "history", guild_id=GUILD_ID)
        assert shown["flags"] & 64 and refs == [SentRef("discord", "217", shown["id"])]
        message_id = await h.front.sender.send("217", Edit(text="✅ Code: <code>4242</code>", edit_message_id=refs[0].message_id))
        assert message_id == shown["id"]
        assert h.fake.messages[int(shown["id"])]["content"] == "✅ Code: `4242`"
        assert not h.fake.dm_messages(217)

        # An answer this process cannot edit any more (another process, an expired token): a new DM instead.
        h.front.shown._editors.clear()
        message_id = await h.front.sender.send("217", Edit(text="⌛ Expired", edit_message_id=refs[0].message_id))
        [dm] = h.fake.dm_messages(217)
        assert message_id == dm["id"] and dm["content"] == "⌛ Expired"


# --- DISCORD_API_BASE_URL and the gateway -------------------------------------------------------------------------


async def test_every_call_goes_to_the_configured_base_url_and_the_gateway_it_names(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls: list[str] = []
    original = aiohttp.ClientSession._request

    async def spy(self: aiohttp.ClientSession, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        urls.append(str(url))
        return await original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "_request", spy)
    default_base, default_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    async with discord_app(db, gateway=True) as h:
        fake = h.fake
        assert Route.BASE == fake.base_url
        identify = await fake.wait_for(lambda: fake.identifies, timeout=10.0)
        assert identify[0]["token"] == fake.token and fake.gateway_queries[0]["v"] == "10"
        assert fake.calls("GET", r"^/gateway/bot$")

        pat = h.user(218)
        interaction = fake.command(pat, "balance")
        await fake.send_event("INTERACTION_CREATE", interaction.payload)  # the real path: over the websocket
        await fake.answered(interaction)
        await h.front.idle()
        assert "Available: $5.00" in text_of(fake.produced(interaction)[-1])
        await h.front.sender.send("218", OutgoingMessage(text="a DM"))
        assert fake.dm_messages(218)
    assert not fake.gateway_connected  # stop() closed the websocket and left nothing running
    assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []
    assert (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY) == (default_base, default_gateway)
    local = (f"http://127.0.0.1:{fake.port}/", f"ws://127.0.0.1:{fake.port}/")
    assert urls and all(url.startswith(local) for url in urls), [u for u in urls if not u.startswith(local)]
    assert any(url.startswith(local[1]) for url in urls)
    assert all(r.status != 401 for r in fake.requests)


async def test_the_bot_token_is_never_logged(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with discord_app(db, gateway=True) as h:
        await h.fake.wait_for(lambda: h.fake.identifies, timeout=10.0)
        await h.command(h.user(219), "start")
        await h.front.sender.send("219", OutgoingMessage(text="a DM"))
        token = h.fake.token
    assert caplog.records and token not in caplog.text
