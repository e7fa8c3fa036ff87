"""Journeys through the real python-telegram-bot Application against the fake Bot API (polling and webhook)."""

from __future__ import annotations

import asyncio
import csv
import io

import pytest
from sqlalchemy import func, select

from bot.handlers import router
from bot.handlers.screens import Screen
from core.models import AuditLog, ChatIdentity, LedgerEntry, Payment, User
from core.platform.db import Database
from tests.harness import ADMIN_ID, buttons, telegram_app

ADMIN_COMMANDS = ["stats", "broadcast", "grant", "ban", "unban", "tier", "user", "health", "audit", "refund"]


async def _user_row(db: Database, platform_user_id: str) -> User:
    async with db.read() as session:
        identity = await session.scalar(
            select(ChatIdentity).where(ChatIdentity.platform == "telegram", ChatIdentity.platform_user_id == platform_user_id)
        )
        assert identity is not None
        user = await session.get(User, identity.user_id)
        assert user is not None
        return user


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_start_balance_history_and_menu(db: Database, mode: str) -> None:
    async with telegram_app(db, webhook=mode == "webhook") as h:
        ann = h.user(101, first_name="Ann <&>", language_code="en")
        start = await h.command(ann, "/start")
        assert "Welcome to CumApp, Ann <&>!" in start["text"]
        assert "$5.00" in start["text"]
        menu = buttons(start)
        assert menu["💰 Balance"] == "cmd:balance"

        balance = await h.tap(ann, start, "cmd:balance")
        text = balance["text"]
        assert "Available: $5.00" in text and "Tier: free" in text and "Verifications: 0/5" in text

        history = await h.command(ann, "/history")
        assert "sign-up bonus" in history["text"] and "$5.00" in history["text"]
        since = len(h.fake.calls)
        await h.press(ann, history, "histcsv")
        document = await h.fake.wait_for("sendDocument", since=since)
        rows = list(csv.reader(io.StringIO(document.files["document"].content.decode())))
        assert rows[0][:4] == ["id", "time_utc", "kind", "amount_usd"] and rows[1][2] == "signup_bonus"

        user = await _user_row(db, "101")
        assert user.balance_cents == 500
    # The command menu was set for everyone and for the admin's chat.
    assert any(c.method == "setMyCommands" for c in h.fake.calls)
    admin_menu = h.fake.commands_for({"type": "chat", "chat_id": ADMIN_ID})
    assert {"grant", "ban"} <= {c["command"] for c in admin_menu}
    default_menu = h.fake.commands_for()
    assert "grant" not in {c["command"] for c in default_menu} and "balance" in {c["command"] for c in default_menu}


async def test_webhook_route_refuses_a_wrong_secret(db: Database) -> None:
    import aiohttp

    async with telegram_app(db, webhook=True) as h:
        assert h.web is not None
        url = f"http://127.0.0.1:{h.web.port}/webhooks/telegram"
        update = h.user(5).send("/start")
        async with aiohttp.ClientSession() as client:
            forged = await client.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"})
            missing = await client.post(url, json=update)
            malformed = await client.post(url, data=b"{not json",
                                          headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"})
        assert (forged.status, missing.status, malformed.status) == (403, 403, 400)
        await asyncio.sleep(0.2)
        assert not h.fake.sent_messages(5)
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(User)) == 0
        assert h.fake.webhook and h.fake.webhook["secret_token"] == "s3cret-token"


async def test_settings_language_and_ai_opt_in(db: Database) -> None:
    async with telegram_app(db) as h:
        ann = h.user(102, language_code="es")
        start = await h.command(ann, "/start")
        assert "Bienvenido" in start["text"]
        settings = await h.command(ann, "/settings")
        labels = buttons(settings)
        assert labels["Asistencia de IA: no"] == "set:ai"
        edited = await h.tap(ann, settings, "set:ai")
        assert "Asistencia de IA: sí" in buttons(edited)
        english = await h.tap(ann, edited, buttons(edited)["🌐 Idioma: Español"])
        assert "AI assistance: on" in buttons(english)
        user = await _user_row(db, "102")
        assert user.ai_opt_in is True and user.locale == "en"


async def test_link_shows_a_copyable_code(db: Database) -> None:
    async with telegram_app(db) as h:
        ann = h.user(103)
        answer = await h.command(ann, "/link")
        call = h.fake.calls_of("sendMessage")[-1]
        assert "<code>/link " in call.params["text"]
        code = answer["text"].split("/link ", 1)[1].split()[0]
        assert len(code) == 8
        assert buttons(answer)["📋 Copy code"] == f"/link {code}"
        wrong = await h.command(ann, "/link ZZZZZZZZ")
        assert "wrong, expired or already used" in wrong["text"]


# Real providers (never called here): Telegram Stars are taken only while nothing sold is simulated.
LIVE_PROVIDERS = {
    "sandbox": "false", "textverified_api_key": "tv-test-key-0123456789", "textverified_api_username": "tv-user",
    "textverified_base_url": "http://127.0.0.1:9", "twilio_account_sid": "AC" + "0" * 32,
    "twilio_auth_token": "twilio-test-token", "twilio_api_base_url": "http://127.0.0.1:9",
    "groq_api_key": "gsk_live_test_key", "groq_base_url": "http://127.0.0.1:9",
}


async def test_topup_with_stars_credits_once(db: Database) -> None:
    async with telegram_app(db, stars_cents_per_star=2, **LIVE_PROVIDERS) as h:
        ann = h.user(104)
        offers = await h.command(ann, "/topup")
        data = buttons(offers)["⭐ 250 → $5.00"]
        since = len(h.fake.calls)
        await h.press(ann, offers, data)
        invoice_call = await h.fake.wait_for("sendInvoice", since=since)
        assert invoice_call.params["currency"] == "XTR"
        payload = invoice_call.params["payload"]

        # A forged amount is refused at pre-checkout and nothing is credited.
        _, refused = await ann.pay(payload, 1000)
        assert refused is None
        answer = h.fake.calls_of("answerPreCheckoutQuery")[-1]
        assert answer.params["ok"] is False and "amount" in answer.params["error_message"]

        _, paid = await ann.pay(payload, 250, charge_id="charge-1")
        assert paid is not None
        await h.fake.wait_for(lambda c: c.method == "sendMessage" and "Payment received" in c.params.get("text", ""))
        # Telegram delivers the same successful_payment again: no second credit, and nothing said the second time.
        ann.successful_payment(payload, 250, charge_id="charge-1")
        for _ in range(250):  # until the bot fetched every queued update
            if not h.fake.pending_updates:
                break
            await asyncio.sleep(0.02)
        await h.command(ann, "/balance")
        await asyncio.sleep(0.3)  # updates run concurrently: give the repeated payment time to answer, if it would
        said = [c for c in h.fake.calls_of("sendMessage") if "Payment received" in c.params.get("text", "")]
        assert len(said) == 1
        user = await _user_row(db, "104")
        assert user.balance_cents == 500 + 500
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(Payment)) == 1
            assert await session.scalar(
                select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "topup")
            ) == 1

        admin = h.user(ADMIN_ID)
        async with db.read() as session:
            payment_id = await session.scalar(select(Payment.id))
        refunded = await h.command(admin, f"/refund {payment_id}")
        assert "refunded" in refunded["text"]
        assert h.fake.charges["charge-1"]["refunded"] is True
        again = await h.command(admin, f"/refund {payment_id}")
        assert "already refunded" in again["text"]
        user = await _user_row(db, "104")
        assert user.balance_cents == 500


async def test_non_admin_is_refused_every_admin_command(db: Database) -> None:
    async with telegram_app(db) as h:
        eve = h.user(105)
        for name in ADMIN_COMMANDS:
            answer = await h.command(eve, f"/{name} 1 5")
            assert answer["text"] == "That command is for admins only.", name
        call = await h.press(eve, answer, "adm:ban:1", strict=False)
        assert call.params.get("text") == "That command is for admins only."
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(AuditLog)) == 0
            assert await session.scalar(select(func.count()).select_from(User).where(User.status == "banned")) == 0


async def test_admin_grant_ban_and_user_card(db: Database) -> None:
    async with telegram_app(db) as h:
        bob = h.user(106, username="bob")
        await h.command(bob, "/start")
        admin = h.user(ADMIN_ID)
        granted = await h.command(admin, "/grant @bob 2.50 welcome gift")
        assert "$2.50 credited to account" in granted["text"]
        bad = await h.command(admin, "/grant @bob lots")
        assert "Amount must be dollars" in bad["text"]
        nobody = await h.command(admin, "/grant @nobody 1")
        assert "No user matches @nobody" in nobody["text"]
        card = await h.command(admin, "/user 106")
        assert "Balance: $7.50" in card["text"]
        banned_card = await h.tap(admin, card, buttons(card)["⛔ Ban"])
        assert "Status: banned" in banned_card["text"] and "✅ Unban" in buttons(banned_card)
        refusal = await h.command(bob, "/balance")
        assert "Your account is blocked" in refusal["text"]
        await h.command(admin, "/unban @bob")
        ok = await h.command(bob, "/balance")
        assert "Available: $7.50" in ok["text"]
        audit = await h.command(admin, "/audit @bob")
        assert "grant" in audit["text"] and "ban" in audit["text"] and "unban" in audit["text"]


async def test_unknown_command_stale_button_and_group_privacy(db: Database) -> None:
    async with telegram_app(db) as h:
        cid = h.user(107)
        unknown = await h.command(cid, "/frobnicate")
        assert "/help" in unknown["text"]
        start = await h.command(cid, "/start")
        call = await h.press(cid, start, "gone:1", strict=False)
        assert "expired" in call.params.get("text", "")
        since = len(h.fake.calls)
        cid.send_in_group("/balance", -100123)
        group_answer = await h.fake.wait_for(
            lambda c: c.method == "sendMessage" and c.chat_id == -100123, since=since
        )
        assert "private chat" in group_answer.params["text"]
        assert "Available" not in group_answer.params["text"]


async def test_an_exception_in_a_flow_gives_an_error_id_and_the_bot_goes_on(
    db: Database, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    async def explode(req: router.Request) -> Screen:
        raise RuntimeError("boom")

    monkeypatch.setitem(router.COMMANDS, "history", dataclasses.replace(router.COMMANDS["history"], flow=explode))
    async with telegram_app(db) as h:
        dan = h.user(108)
        answer = await h.command(dan, "/history")
        assert "Error id:" in answer["text"]
        error_id = answer["text"].split("Error id: ")[1].strip(".")
        assert any(error_id in record.getMessage() and record.exc_info for record in caplog.records)
        after = await h.command(dan, "/balance")
        assert "Available" in after["text"]


async def test_sms_like_text_full_of_markup_is_escaped(db: Database) -> None:
    """Names and arguments with <, & and emoji never break Telegram's HTML parsing."""
    async with telegram_app(db) as h:
        tricky = h.user(109, first_name="<b>Zoë & 🤖</b> <script>")
        answer = await h.command(tricky, "/start")
        assert "<b>Zoë & 🤖</b> <script>" in answer["text"]
        nasty = await h.command(tricky, "/grant <a href='x'>&amp; 🙃")
        assert nasty["text"] == "That command is for admins only."
        assert all(c.status == 200 for c in h.fake.calls if c.method == "sendMessage")


async def test_per_user_command_limit(db: Database) -> None:
    async with telegram_app(db, command_rate_limit=3, command_rate_window_seconds=30) as h:
        fay = h.user(110)
        for _ in range(3):
            await h.command(fay, "/help")
        limited = await h.command(fay, "/help")
        assert "Slow down" in limited["text"]


async def test_a_slow_command_gets_a_placeholder_edited_in_place(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import bot.telegram

    async def slow(req: router.Request) -> Screen:
        await asyncio.sleep(0.4)
        return Screen("Done <b>slowly</b>")

    monkeypatch.setattr(bot.telegram, "PLACEHOLDER_SECONDS", 0.1)
    monkeypatch.setitem(router.COMMANDS, "history", dataclasses.replace(router.COMMANDS["history"], flow=slow))
    async with telegram_app(db) as h:
        gus = h.user(111)
        first = await h.command(gus, "/history")
        assert first["text"] == "⏳ Working on it…"
        edit = await h.fake.wait_for(lambda c: c.method == "editMessageText" and c.chat_id == gus.id)
        assert int(edit.params["message_id"]) == first["message_id"]
        assert h.fake.messages_by_id(gus.id)[first["message_id"]]["text"] == "Done slowly"


async def test_a_button_of_another_flow_abandons_a_pending_question(db: Database) -> None:
    async with telegram_app(db) as h:
        hal = h.user(112)
        start = await h.command(hal, "/start")
        prompt = await h.command(hal, "/sms")
        assert prompt is not None
        await h.tap(hal, start, "cmd:balance")
        since = len(h.fake.calls)
        hal.send("+14155550100 this must not become an SMS")
        answer = await h.answer_after(since, hal.id)
        assert "/help" in answer.params["text"]


async def test_the_aiohttp_transport_carries_every_kind_of_call(db: Database) -> None:
    """The bot talks through aiohttp (with paid broadcasts on, too): texts, edits, files and errors all work."""
    from bot.telegram_transport import AiohttpRequest

    async with telegram_app(db, telegram_allow_paid_broadcast=True) as h:
        assert isinstance(h.front.application.bot.request, AiohttpRequest)
        ivy = h.user(113, first_name="Ivy <&>")
        start = await h.command(ivy, "/start")
        assert "Ivy <&>" in start["text"]
        balance = await h.tap(ivy, start, "cmd:balance")
        assert "Available: $5.00" in balance["text"]
        since = len(h.fake.calls)
        await h.press(ivy, await h.command(ivy, "/history"), "histcsv")
        document = await h.fake.wait_for("sendDocument", since=since)
        assert document.files["document"].content.startswith(b"id,time_utc")
        # The file's other parameters travel as form fields beside it (they were left out once: a 400).
        assert document.ok and str(document.params["chat_id"]) == str(ivy.id), document
        h.fake.fail_next("sendMessage", status=429, retry_after=1)
        limited = await h.command(ivy, "/help", timeout=8)
        assert "What I can do" in limited["text"]
