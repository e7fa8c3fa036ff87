"""Who an admin command acts on: one account or a clear "which one?", and /user cards whose buttons act once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core.models import KeyValue, User
from core.money import accounts
from core.money.accounts import AccountError, Contact
from core.platform.clock import utcnow
from core.platform.db import Database


async def _account(db: Database, contact: Contact) -> User:
    async with db.transaction() as session:
        return (await accounts.get_or_create(session, contact)).user


async def test_a_name_or_id_of_two_people_is_ambiguous_and_lists_them(db: Database) -> None:
    telegram = await _account(db, Contact("telegram", "501", chat_id="501", username="alice"))
    discord = await _account(db, Contact("discord", "880000000000000501", chat_id="9", username="ALICE"))
    async with db.read() as session:
        for _ in range(5):  # before, limit(1) without an order could pick either
            with pytest.raises(AccountError) as asked:
                await accounts.resolve_user(session, "@alice")
            error = asked.value
            assert error.reason == "user_ambiguous"
            assert error.details["matches"] == (
                f"• telegram 501 → #{telegram.id}\n• discord 880000000000000501 → #{discord.id}"
            )
            assert error.details["example"] == f"#{telegram.id}"
        assert (await accounts.resolve_user(session, f"#{discord.id}")).id == discord.id  # type: ignore[union-attr]


async def test_one_person_on_two_platforms_with_one_name_is_not_ambiguous(db: Database) -> None:
    telegram = await _account(db, Contact("telegram", "502", chat_id="502", username="bea"))
    discord = await _account(db, Contact("discord", "880000000000000502", chat_id="9", username="bea"))
    async with db.transaction() as session:
        code, _ = await accounts.create_link_code(session, telegram.id)
    async with db.transaction() as session:
        current = await session.get(User, discord.id)
        assert current is not None
        joined = await accounts.redeem_link_code(session, code, current)
    async with db.read() as session:
        assert (await accounts.resolve_user(session, "@bea")).id == joined.id  # type: ignore[union-attr]


async def test_account_ids_are_ascii_digits_within_the_column(db: Database) -> None:
    user = await _account(db, Contact("telegram", "503", chat_id="503"))
    async with db.read() as session:
        assert await accounts.resolve_user(session, "#99999999999999999999999") is None
        assert await accounts.resolve_user(session, "99999999999999999999999") is None
        assert await accounts.resolve_user(session, f"#{2**63}") is None
        assert await accounts.resolve_user(session, f"#{2**31}") is None  # users.id is INTEGER
        assert user.id == 1
        assert await accounts.resolve_user(session, "#١") is None  # int("١") is 1, but nobody typed account 1
        assert (await accounts.resolve_user(session, "#1")).id == user.id  # type: ignore[union-attr]


async def test_a_card_button_is_claimed_once_even_by_presses_at_the_same_moment(db: Database) -> None:
    admin = await _account(db, Contact("telegram", "504", chat_id="504"))
    target = await _account(db, Contact("telegram", "505", chat_id="505"))
    async with db.transaction() as session:
        nonce = await accounts.open_admin_card(session, admin.id, target.id)

    async def claim(button: str, user_id: int = target.id) -> bool | None:
        async with db.transaction() as session:
            return await accounts.claim_admin_card(session, nonce, user_id, button)

    results = await asyncio.gather(*(claim("grant") for _ in range(6)))
    assert sorted(results, key=str) == [False] * 5 + [True]
    assert await claim("ban") is True and await claim("ban") is False
    assert await claim("grant", user_id=admin.id) is None  # another account's card
    assert await claim("grant", user_id=target.id) is False

    # A claim in a transaction that fails is given back with it.
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            assert await accounts.claim_admin_card(session, nonce, target.id, "tier:pro") is True
            raise RuntimeError("the action failed")
    assert await claim("tier:pro") is True

    async with db.transaction() as session:
        await session.execute(
            update(KeyValue).where(KeyValue.key == f"admcard:{nonce}").values(expires_at=utcnow() - timedelta(1))
        )
    assert await claim("unban") is None
    async with db.transaction() as session:  # opening a card drops the expired ones
        await accounts.open_admin_card(session, admin.id, target.id)
    async with db.read() as session:
        keys = (await session.scalars(select(KeyValue.key).where(KeyValue.key.like("admcard:%")))).all()
    assert len(keys) == 1 and keys[0] != f"admcard:{nonce}"
