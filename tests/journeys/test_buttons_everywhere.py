"""Every flow by buttons (Telegram in webhook mode, so each update arrives at once): the main menu and a number's screen lead to a new SMS, templates, link, analyze and suggest;
admins get an admin menu; a finished verification's number comes again (reuse or reactivate) after its price."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from bot.handlers import router
from core.models import ChatIdentity, Hold, Message, PhoneNumber, User, Verification
from core.money.accounts import Contact
from core.platform.clock import utcnow
from core.platform.db import Database
from tests.bot.test_discord import ADMIN_ID as DISCORD_ADMIN_ID
from tests.bot.test_discord import discord_app
from tests.core.messaging.test_service import give_number
from tests.fakes.discord_api import buttons as discord_buttons
from tests.fakes.discord_api import text_of
from tests.fakes.telegram_api import FakeUser
from tests.fakes.textverified_api import FakeTextVerifiedServer
from tests.harness import ADMIN_ID, TelegramHarness, buttons, telegram_app

JSONDict = dict[str, Any]


def _data(message: JSONDict, label: str) -> str:
    """The callback data of the button whose label contains `label`."""
    for text, data in buttons(message).items():
        if label in text:
            return data
    raise AssertionError(f"no button like {label!r} in {list(buttons(message))}")


async def _account_id(db: Database, platform: str, platform_user_id: int) -> int:
    async with db.read() as session:
        user_id = await session.scalar(
            select(ChatIdentity.user_id).where(
                ChatIdentity.platform == platform, ChatIdentity.platform_user_id == str(platform_user_id)
            )
        )
    assert user_id is not None
    return int(user_id)


async def _say(h: TelegramHarness, user: FakeUser, text: str, needle: str = "") -> JSONDict:
    """Types `text` and returns the bot's new message (containing `needle`): edits of earlier messages, such as an
    SMS's status moving on, may land in the chat meanwhile and are not the answer."""
    since = len(h.fake.calls)
    await h.fake.deliver_webhook(user.send(text))
    call = await h.fake.wait_for(
        lambda c: c.ok and c.method == "sendMessage" and c.chat_id == user.id and needle in c.params["text"],
        since=since,
    )
    return call.result


async def _tap(h: TelegramHarness, user: FakeUser, message: JSONDict, data: str, needle: str) -> JSONDict:
    """Presses a button and returns the message it produced or edited, known by `needle` (a code or a status may
    reach the chat meanwhile)."""
    since = len(h.fake.calls)
    await h.press(user, message, data)
    call = await h.fake.wait_for(
        lambda c: c.ok and c.chat_id == user.id and c.method in ("sendMessage", "editMessageText")
        and needle in (c.params.get("text") or ""),
        since=since,
    )
    if call.method == "editMessageText":
        return h.fake.messages_by_id(user.id)[int(call.params["message_id"])]
    return call.result


async def _menu(h: TelegramHarness, user: FakeUser) -> JSONDict:
    return await _say(h, user, "/start", "Available:")


async def test_the_menu_and_a_numbers_screen_lead_to_every_flow(db: Database) -> None:
    async with telegram_app(db, webhook=True, signup_bonus_cents=5000) as h:
        ann, cai = h.user(301), h.user(304)
        menus = await asyncio.gather(_menu(h, ann), _menu(h, cai))
        for menu in menus:
            labels = set(buttons(menu))
            assert {"✉️ New SMS", "📝 Templates", "💡 Suggest reply", "🔍 Analyze a text", "🔗 Link accounts"} <= labels
            assert "🛠 Admin" not in labels  # for admins only
        ann_id, cai_id = await _account_id(db, "telegram", ann.id), await _account_id(db, "telegram", cai.id)
        number = await give_number(db, ann_id, "+14155550100", provider="sandbox")
        await give_number(db, cai_id, "+14155550102", provider="sandbox")
        await h.services.messaging.send_sms(cai_id, "+14155550125", "Hi there", request_key="cai-first")

        async def new_sms_and_templates(menu: JSONDict) -> None:
            """New SMS: who to, then the text, sent through the normal path; then the number's own screen."""
            ask = await h.tap(ann, menu, buttons(menu)["✉️ New SMS"])
            assert "Who should the SMS go to?" in ask["text"]
            await _say(h, ann, "+1 415 555 0123", "What should the SMS to +1 415-555-0123 say?")
            await _say(h, ann, "Add me on WhatsApp", "+1 415-555-0123")
            async with db.read() as session:
                sent = await session.scalar(
                    select(Message).where(Message.direction == "outbound", Message.user_id == ann_id)
                )
            assert sent is not None and sent.body == "Add me on WhatsApp" and sent.to_e164 == "+14155550123"
            # The number's screen leads to the same flows; its templates are those of the services it is used with.
            listing = await _say(h, ann, "/numbers", "Your numbers")
            screen = await h.tap(ann, listing, _data(listing, "☎️ +1 415-555-0100"))
            assert {"✉️ New SMS", "📝 Templates", "💡 Suggest reply", "🔍 Analyze a text", "🔗 Link accounts"} <= set(
                buttons(screen)
            )
            assert _data(screen, "✉️ New SMS") == f"num_sms:{number.id}"
            assert _data(screen, "Release") == f"num_rel:{number.id}"
            tpl = await h.tap(ann, screen, buttons(screen)["📝 Templates"])
            assert "WhatsApp:" in tpl["text"] and "Uber" not in tpl["text"]
            assert "📌 Continue on WhatsApp" in buttons(tpl) and "📌 Appointment reminder" in buttons(tpl)

        async def link_analyze_and_suggest(menu: JSONDict) -> None:
            # The sandbox may answer Cai's SMS at any moment: each screen is known by its text, not by coming next.
            link = await _tap(h, cai, menu, buttons(menu)["🔗 Link accounts"], "To join this account")
            assert (buttons(link).get("📋 Copy code") or "").startswith("/link ")
            asked = await h.tap(cai, menu, buttons(menu)["🔍 Analyze a text"])
            assert asked["text"]
            analysis = await _say(h, cai, "URGENT: your bank account is locked, verify at http://bit.ly/x1", "Answer")
            assert "Answer from" in analysis["text"]
            drafts = await _tap(h, cai, menu, buttons(menu)["💡 Suggest reply"], "Reply drafts")
            assert "Reply drafts for +1 415-555-0125" in drafts["text"]

        # Two people at once: each chat is paced on its own (about one message a second), so this takes half as long.
        await asyncio.gather(new_sms_and_templates(menus[0]), link_analyze_and_suggest(menus[1]))


async def test_the_steps_behind_the_buttons_refuse_and_route_what_they_should(db: Database) -> None:
    """The same flows through the router alone (no chat pacing): a new SMS needs a number, a bad recipient is asked
    again, New SMS on a number's screen sends from it, templates by service, and the admin-only doors."""
    async with telegram_app(db, webhook=True, signup_bonus_cents=5000) as h:
        ann = Contact("telegram", "311", chat_id="311", display_name="Ann")
        (needs,) = await router.handle_action(h.services, ann, "num_sms")
        assert "need a number" in needs.text and needs.buttons[0][0].action == "num_buy"
        user_id = await _account_id(db, "telegram", 311)
        number = await give_number(db, user_id, "+14155550100", provider="sandbox")
        other = await give_number(db, user_id, "+14155550111", provider="sandbox")

        (asked,) = await router.handle_action(h.services, ann, f"num_sms:{other.id}")
        assert "New SMS from +1 415-555-0111" in asked.text and asked.prompt
        (wrong,) = await router.handle_text(h.services, ann, "12")
        assert "is not a phone number" in wrong.text
        (text_step,) = await router.handle_text(h.services, ann, "+1 415 555 0124")
        assert "+1 415-555-0124" in text_step.text
        await router.handle_text(h.services, ann, "From my other number")
        async with db.read() as session:
            sent = await session.scalar(select(Message).where(Message.direction == "outbound"))
        assert sent is not None and sent.from_e164 == other.e164 and sent.to_e164 == "+14155550124"
        stranger = Contact("telegram", "312", chat_id="312")
        (refused,) = await router.handle_action(h.services, stranger, f"num_sms:{number.id}")
        assert refused.toast and "someone else" in refused.toast

        # Templates by service: the list of services, then one service's set, whose template opens.
        (services,) = await router.handle_action(h.services, ann, "tpl:svc")
        labels = {b.label: b.action for row in services.buttons for b in row}
        assert {"WhatsApp", "Google", "Telegram", "Facebook", "Instagram", "Amazon", "Uber"} <= set(labels)
        (uber,) = await router.handle_action(h.services, ann, labels["Uber"] or "")
        assert "Uber:" in uber.text
        running_late = next(b.action for row in uber.buttons for b in row if b.label == "📌 Running late")
        (card,) = await router.handle_action(h.services, ann, running_late or "")
        assert "running a little late" in card.text

        # Admin doors stay shut for a user; the admin's ask:ban step bans, and nobody else's typing does.
        (refused,) = await router.handle_action(h.services, ann, "menu:admin")
        assert refused.alert and "admins" in (refused.toast or "")
        (refused,) = await router.handle_action(h.services, ann, "ask:ban")
        assert refused.alert
        admin = Contact("telegram", str(ADMIN_ID), chat_id=str(ADMIN_ID))
        (panel,) = await router.handle_action(h.services, admin, "menu:admin")
        ban = next(b.action for row in panel.buttons for b in row if b.label == "⛔ Ban")
        (ask,) = await router.handle_action(h.services, admin, ban or "")
        assert "/ban" in ask.text and ask.prompt
        (done,) = await router.handle_text(h.services, admin, str(user_id))
        assert "banned" in done.text.lower() or str(user_id) in done.text
        async with db.read() as session:
            assert (await session.get(User, user_id)).status == "banned"  # type: ignore[union-attr]


async def test_admins_get_an_admin_menu_whose_buttons_run_the_admin_commands(db: Database) -> None:
    async with telegram_app(db, webhook=True) as h:
        bob, admin = h.user(302), h.user(ADMIN_ID)
        await _menu(h, bob)
        bob_id = await _account_id(db, "telegram", bob.id)
        menu = await _menu(h, admin)
        panel = await h.tap(admin, menu, buttons(menu)["🛠 Admin"])
        assert {"📊 Stats", "🔎 Look up a user", "📣 Broadcast", "➕ Grant or debit", "⛔ Ban", "✅ Unban"} <= set(
            buttons(panel)
        )
        ask = await h.tap(admin, panel, buttons(panel)["➕ Grant or debit"])
        assert "/grant" in ask["text"]
        await _say(h, admin, f"{bob_id} 2.50 welcome")
        async with db.read() as session:
            assert (await session.get(User, bob_id)).balance_cents == 750  # type: ignore[union-attr]


async def test_discord_menu_opens_analyze_and_the_admin_menu(db: Database) -> None:
    async with discord_app(db) as h:
        cai = h.user(401, "cai")
        start = await h.command(cai, "start")
        menu = discord_buttons(start)
        assert menu["🔍 Analyze a text"] == "cmd:analyze" and menu["✉️ New SMS"] == "num_sms"
        assert "🛠 Admin" not in menu
        opened = await h.press(cai, start, "cmd:analyze")
        assert opened.modal is not None  # the question is a text box
        answered = await h.write(cai, opened, "Your package is held, pay the fee at http://bit.ly/x2 now")
        assert "Answer from" in text_of(h.fake.produced(answered)[-1])

        admin = h.user(DISCORD_ADMIN_ID, "root")
        start = await h.command(admin, "start")
        assert discord_buttons(start)["🛠 Admin"] == "menu:admin"
        panel = await h.tap(admin, start, "menu:admin")
        assert discord_buttons(panel)["➕ Grant or debit"] == "ask:grant"
        cai_id = await _account_id(db, "discord", 401)
        asked = await h.press(admin, panel, "ask:grant")
        assert asked.modal is not None
        await h.write(admin, asked, f"{cai_id} 1 thanks")
        async with db.read() as session:
            assert (await session.get(User, cai_id)).balance_cents == 600  # type: ignore[union-attr]


async def test_reactivate_a_finished_verification_after_its_price_and_confirm(db: Database) -> None:
    async with FakeTextVerifiedServer() as tv:
        async with telegram_app(
            db, webhook=True, sandbox="auto", textverified_api_key=tv.api_key, textverified_api_username=tv.username,
            textverified_base_url=tv.url,
        ) as h:
            dee = h.user(303)
            await h.command(dee, "/start")
            price = await h.command(dee, "/verify whatsapp")
            status = await h.tap(dee, price, buttons(price)["Confirm"])
            (rental,) = tv.verifications.values()
            tv.deliver_sms(rental.id, "Your WhatsApp code: 123-456", "123456")
            status = await _tap(h, dee, status, _data(status, "Refresh"), "123456")
            # Right after the code the provider lets the number be reused.
            assert _data(status, "Same number again").startswith("vfs:")

            # Later the reuse window is over: TextVerified offers reactivation instead, and the card says so.
            rental.reusable_until = utcnow() - timedelta(seconds=1)
            status = await _tap(h, dee, status, _data(status, "Done"), "done")
            assert "Same number again" not in " ".join(buttons(status))
            offer = await _tap(h, dee, status, _data(status, "Reactivate"), "Reactivate")
            assert "Reactivate" in offer["text"] and f"+1{rental.number}" in offer["text"]
            assert "$" in offer["text"] and set(buttons(offer)) == {"Confirm", "Cancel"}
            assert not tv.requests_to("/reactivate")  # nothing is bought before Confirm

            # The provider refuses this once: the hold placed for it is released, and the way stays open.
            tv.fail_next("/reactivate", 400, body={"errorCode": "ProcessingError",
                                                   "errorDescription": "Not eligible for reactivation."})
            refused = await h.press(dee, offer, buttons(offer)["Confirm"])
            assert "no longer possible" in (refused.params.get("text") or "")
            async with db.read() as session:
                failed = await session.scalar(select(Verification).where(Verification.state == "failed"))
                assert failed is not None
                assert (await session.get(Hold, failed.hold_id)).state == "released"  # type: ignore[union-attr]
            offer = await _tap(h, dee, status, _data(status, "Reactivate"), "Reactivate")
            again = await _tap(h, dee, offer, buttons(offer)["Confirm"], "WhatsApp")
            assert len(tv.requests_to("/reactivate", "POST")) == 2
            async with db.read() as session:
                rows = (await session.scalars(select(Verification).order_by(Verification.id))).all()
                assert len(rows) == 3
                first, second = rows[0], rows[2]
                assert second.state == "active" and second.phone_number == first.phone_number
                hold = await session.get(Hold, second.hold_id)
                assert hold is not None and hold.state == "held" and hold.amount_cents == second.price_cents
            assert second.phone_number and second.phone_number[-4:] in again["text"]
            # Confirm again (a double tap): nothing more is bought.
            await h.press(dee, offer, buttons(offer).get("Confirm", "vfsok:x"), strict=False)
            assert len(tv.requests_to("/reactivate", "POST")) == 2

            # Neither reuse nor reactivation possible: the card offers neither (and a stale button says why).
            tv.reactivate_after_reuse = False
            new_rental = tv.verifications[second.provider_verification_id or ""]
            tv.deliver_sms(new_rental.id, "Your WhatsApp code: 654-321", "654321")
            new_rental.reusable_until = utcnow() - timedelta(seconds=1)
            card = await _tap(h, dee, again, _data(again, "Refresh"), "654321")
            assert not any("Same number" in label or "Reactivate" in label for label in buttons(card))
            gone = await h.press(dee, card, f"vfs:{second.id}", strict=False)
            assert "can no longer" in (gone.params.get("text") or "")
            async with db.read() as session:
                assert await session.scalar(select(func.count()).select_from(Verification)) == 3
                assert await session.scalar(select(func.count()).select_from(PhoneNumber)) == 0


async def test_same_number_again_in_the_sandbox_asks_for_confirm_and_reuses_the_number(db: Database) -> None:
    """The sandbox twin offers reuse right after the code: the button shows the price, and only Confirm buys."""
    async with telegram_app(db, webhook=True) as h:
        eve = Contact("telegram", "305", chat_id="305")
        (price,) = await router.handle_command(h.services, eve, "verify", "whatsapp")
        confirm = price.buttons[0][0].action or ""
        (status,) = await router.handle_action(h.services, eve, confirm)
        async with db.read() as session:
            first = await session.scalar(select(Verification))
        assert first is not None
        for _ in range(100):
            first = await h.services.verification.get(first.user_id, first.id)
            if first.state == "code_received":
                break
            await asyncio.sleep(0.02)
        (card,) = await router.handle_action(h.services, eve, f"vfv:{first.id}")
        same = next(b.action for row in card.buttons for b in row if "Same number again" in b.label)
        (offer,) = await router.handle_action(h.services, eve, same or "")
        assert "again on" in offer.text and [b.label for b in offer.buttons[0]] == ["Confirm", "Cancel"]
        assert await _count(db) == 1  # nothing bought before Confirm
        # An old card's direct "Same number again" (vfu) now shows the price too, and buys nothing.
        (old_offer,) = await router.handle_action(h.services, eve, f"vfu:{first.id}")
        assert [b.label for b in old_offer.buttons[0]] == ["Confirm", "Cancel"] and await _count(db) == 1
        (again,) = await router.handle_action(h.services, eve, offer.buttons[0][0].action or "")
        async with db.read() as session:
            second = await session.scalar(select(Verification).where(Verification.id != first.id))
        assert second is not None and second.state == "active" and second.phone_number == first.phone_number
        assert await _count(db) == 2
        # The other offer's Confirm is the same purchase (one reuse per verification), not a second rental.
        await router.handle_action(h.services, eve, old_offer.buttons[0][0].action or "")
        assert await _count(db) == 2


async def _count(db: Database) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(Verification)) or 0)
