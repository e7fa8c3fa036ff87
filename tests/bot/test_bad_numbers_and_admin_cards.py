"""Numbers from buttons and arguments are range-checked; /user card buttons act once; ambiguous @names are refused.

Driven through the real python-telegram-bot against the fake Bot API (tests/harness.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import func, select

from bot.handlers import router
from bot.handlers.args import MAX_BIG_ID, MAX_ID, arg_id, arg_offset, parse_id, parse_int
from core.models import AuditLog, LedgerEntry, User
from core.money import accounts
from core.money.accounts import Contact
from core.platform.db import Database
from tests.harness import ADMIN_ID, TelegramHarness, buttons, telegram_app

HUGE = "99999999999999999999999"
STALE = "This button has expired"


def test_numbers_are_ascii_digits_in_range() -> None:
    assert parse_int("0") == 0 and parse_int("42") == 42 and parse_int(str(MAX_BIG_ID)) == MAX_BIG_ID
    for bad in ("", "-1", "+5", " 5", "5 ", "1_000", "٣", "²", "５", "0x10", "1e3", str(MAX_BIG_ID + 1), HUGE, None, 7):
        assert parse_int(bad) is None, bad
    assert arg_id(["0"], 0) is None and arg_id(["7"], 0) == 7 and arg_id([], 0) is None
    # INTEGER keys end at 2**31-1 (PostgreSQL refuses more for the column), BIGINT keys at 2**63-1.
    assert parse_id(str(MAX_ID)) == MAX_ID and parse_id(str(MAX_ID + 1)) is None
    assert parse_id(str(MAX_ID + 1), big=True) == MAX_ID + 1 and parse_id(str(MAX_BIG_ID + 1), big=True) is None
    assert arg_offset([], 0, default=0) == 0 and arg_offset(["100001"], 0) is None and arg_offset(["16"], 0) == 16


async def _balance(db: Database, platform_user_id: str) -> int:
    async with db.read() as session:
        user = await accounts.resolve_user(session, platform_user_id)
        assert user is not None
        return user.balance_cents


async def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def test_huge_and_non_ascii_numbers_get_the_stale_answer_not_an_error(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    async with telegram_app(db) as h:
        dave = h.user(301, username="dave")
        start = await h.command(dave, "/start")
        for data in (
            f"inbox:{HUGE}", "inbox:٣", "inbox:-8", f"conv:{HUGE}:0", f"conv:1:{HUGE}", f"hist:{HUGE}",
            f"sms_block:{HUGE}", f"sms_reply:{HUGE}", f"tpl:open:u.{HUGE}", f"tpl:del:{HUGE}",
            f"tpl:use:b.appt:{HUGE}", f"ai:an:{HUGE}", f"ai:conv:{HUGE}", f"conv:{2**31}:0", f"tpl:ren:{2**31}",
        ):
            call = await h.press(dave, start, data, strict=False)
            assert STALE in call.params.get("text", ""), data

        admin = h.user(ADMIN_ID)
        menu = await h.command(admin, "/start")
        for data in (f"adm:grant:{HUGE}:nonce", f"audp:0:{HUGE}", f"audp:{HUGE}:0", f"bc:go:{HUGE}"):
            call = await h.press(admin, menu, data, strict=False)
            assert STALE in call.params.get("text", ""), data

        too_much = await h.command(admin, f"/grant @dave {HUGE}")
        assert "At most $1,000,000.00" in too_much["text"]
        just_over = await h.command(admin, "/grant @dave 1000000.01")
        assert "At most $1,000,000.00" in just_over["text"]
        arabic_three = await h.command(admin, "/grant @dave ٣")
        assert "Amount must be dollars" in arabic_three["text"]
        comma_decimal = await h.command(admin, "/grant @dave 2,50")
        assert "Amount must be dollars" in comma_decimal["text"]
        for reference in (HUGE, f"#{2**31}"):
            nobody = await h.command(admin, f"/grant {reference} 5")
            assert f"No user matches {reference}" in nobody["text"]
        assert "No user matches" in (await h.command(admin, "/user #٣"))["text"]
        assert "Usage" in (await h.command(admin, f"/refund {HUGE}"))["text"]
        assert "Usage" in (await h.command(admin, f"/refund #{2**31}"))["text"]
        assert await _balance(db, "301") == 500  # the sign-up bonus, nothing more

        granted = await h.command(admin, "/grant @dave 1,000.50")
        assert "$1,000.50 credited" in granted["text"]
        assert all("Error id" not in text for text in h.texts(ADMIN_ID) + h.texts(301))
    await _no_errors_logged(caplog)


async def _card(h: TelegramHarness, admin_id: int, reference: str) -> dict:  # type: ignore[type-arg]
    return await h.command(h.user(admin_id), f"/user {reference}")


def _now(h: TelegramHarness, message: dict) -> dict:  # type: ignore[type-arg]
    """The message as it looks now, after the edits its buttons made."""
    return h.fake.messages_by_id(message["chat"]["id"])[message["message_id"]]


async def _tap(h: TelegramHarness, message: dict, data: str) -> str:  # type: ignore[type-arg]
    """Press a card button as the admin, wait for the card to be redrawn, and return the toast."""
    since = len(h.fake.calls)
    call = await h.press(h.user(ADMIN_ID), message, data)
    await h.fake.wait_for(lambda c: c.method == "editMessageText" and c.chat_id == ADMIN_ID, since=since)
    return str(call.params.get("text", ""))


async def test_each_user_card_button_acts_once_per_card(db: Database) -> None:
    async with telegram_app(db) as h:
        erin = h.user(302, username="erin")
        await h.command(erin, "/start")
        admin = h.user(ADMIN_ID)
        card = await _card(h, ADMIN_ID, "@erin")
        grant = buttons(card)["➕ Grant $5"]
        assert "$5.00 credited" in await _tap(h, card, grant)
        for _ in range(2):
            assert "Already done from this card" in await _tap(h, card, grant)
        assert await _balance(db, "302") == 500 + 500

        assert "banned" in await _tap(h, card, buttons(_now(h, card))["⛔ Ban"])
        assert "active again" in await _tap(h, card, buttons(_now(h, card))["✅ Unban"])
        # The card shows Ban again, but its Ban already acted: this card cannot ban a second time.
        assert "Already done" in await _tap(h, card, buttons(_now(h, card))["⛔ Ban"])

        tier = next(data for data in buttons(_now(h, card)).values() if data.startswith("adm:tier:"))
        assert "pro tier" in await _tap(h, card, tier)

        # A fresh card acts again; a forged or unknown card does nothing.
        fresh = await _card(h, ADMIN_ID, "@erin")
        assert "$5.00 credited" in await _tap(h, fresh, buttons(fresh)["➕ Grant $5"])
        user_id = grant.split(":")[2]
        forged = await h.press(admin, fresh, f"adm:grant:{user_id}:forgedNonce1", strict=False)
        assert "expired" in forged.params["text"]
        old_style = await h.press(admin, fresh, f"adm:grant:{user_id}", strict=False)
        assert STALE in old_style.params["text"]
        assert await _balance(db, "302") == 500 + 500 + 500
        async with db.read() as session:
            grants = await session.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "grant"))
            bans = await session.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "ban"))
        assert (grants, bans) == (2, 1)


async def test_presses_of_one_card_at_the_same_moment_grant_once(db: Database) -> None:
    """Three presses racing (a double tap and a redelivery) go through the router together: one credit."""
    async with telegram_app(db) as h:
        fay = h.user(303, username="fay")
        await h.command(fay, "/start")
        card = await _card(h, ADMIN_ID, "@fay")
        grant = buttons(card)["➕ Grant $5"]
        admin = Contact("telegram", str(ADMIN_ID), chat_id=str(ADMIN_ID), username="admin")
        answers = await asyncio.gather(*(router.handle_action(h.services, admin, grant) for _ in range(3)))
        toasts = sorted(screens[0].toast or "" for screens in answers)
        assert sum("credited" in text for text in toasts) == 1
        assert sum("Already done" in text for text in toasts) == 2
        assert await _balance(db, "303") == 1000
        async with db.read() as session:
            grants = await session.scalar(
                select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "grant")
            )
        assert grants == 1


async def test_a_name_shared_across_platforms_asks_which_account_and_acts_on_neither(db: Database) -> None:
    async with telegram_app(db) as h:
        alice = h.user(304, username="alice")
        await h.command(alice, "/start")
        async with db.transaction() as session:
            other = await accounts.get_or_create(
                session, Contact("discord", "880000000000000004", chat_id="77", username="Alice"),
                signup_bonus_cents=500,
            )
            discord_id = other.user.id
        async with db.read() as session:
            telegram_user = await accounts.resolve_user(session, "304")
            assert telegram_user is not None
        admin = h.user(ADMIN_ID)
        for command in ("/grant @alice 5", "/ban @alice", "/tier @alice pro", "/user @alice"):
            answer = await h.command(admin, command)
            assert "matches more than one account" in answer["text"], command
            assert f"telegram 304 → #{telegram_user.id}" in answer["text"]
            assert f"discord 880000000000000004 → #{discord_id}" in answer["text"]
        async with db.read() as session:
            users = (await session.scalars(select(User).where(User.id.in_([telegram_user.id, discord_id])))).all()
            assert {(u.balance_cents, u.status, u.tier) for u in users} == {(500, "active", "free")}
            assert await session.scalar(select(func.count()).select_from(AuditLog)) == 0
        chosen = await h.command(admin, f"/grant #{discord_id} 5")
        assert f"credited to account #{discord_id}" in chosen["text"]
