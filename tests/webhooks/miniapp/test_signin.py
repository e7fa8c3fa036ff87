"""Mini App sign-in without a browser: initData checked as Telegram documents it (a reference signature written
out here), and sign-in links that work once, sessions that end, banned accounts refused."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import update

from core.api import sessions
from core.models import KeyValue, User
from core.platform.db import Database
from webhooks.miniapp import initdata

TOKEN = "123456:TEST-TOKEN"
NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


def signed(fields: dict[str, str], token: str = TOKEN) -> str:
    check = "\n".join(f"{key}={fields[key]}" for key in sorted(fields))
    secret = hmac.new(b"WebAppData", token.encode(), hashlib.sha256).digest()
    return urlencode({**fields, "hash": hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()})


def fields(age: timedelta = timedelta(0), user_id: int = 42) -> dict[str, str]:
    return {"auth_date": str(int((NOW - age).timestamp())), "query_id": "AAQ",
            "user": json.dumps({"id": user_id, "first_name": "Ann", "last_name": "Lee", "username": "ann"}),
            "signature": "c2lnbmF0dXJl"}


def test_init_data_is_checked_as_telegram_documents_it() -> None:
    user = initdata.check(signed(fields()), TOKEN, now=NOW)
    assert user is not None and (user.id, user.username, user.display_name) == (42, "ann", "Ann Lee")
    assert initdata.check(signed(fields(timedelta(hours=23, minutes=59))), TOKEN, now=NOW) is not None
    refused = {
        "25 hours old": signed(fields(timedelta(hours=25))),
        "just over a day": signed(fields(timedelta(hours=24, seconds=1))),
        "from the future": signed(fields(-timedelta(hours=1))),
        "another bot's token": signed(fields(), "654321:OTHER"),
        "a field changed": signed(fields()).replace("first_name%22%3A+%22Ann", "first_name%22%3A+%22Bob"),
        "no hash": urlencode(fields()),
        "a field twice": signed(fields()) + "&user=%7B%22id%22%3A1%7D",
        "no user": signed({"auth_date": fields()["auth_date"]}),
        "not a query string": "%%%",
        "empty": "",
    }
    for why, data in refused.items():
        assert initdata.check(data, TOKEN, now=NOW) is None, why


async def test_links_work_once_and_sessions_end(db: Database) -> None:
    async with db.transaction() as session:
        user = User(locale="en")
        session.add(user)
        await session.flush()
        user_id = user.id
    link = await sessions.create_signin_link(db, user_id)
    assert await sessions.redeem_signin_link(db, link) == user_id
    assert await sessions.redeem_signin_link(db, link) is None
    assert await sessions.redeem_signin_link(db, "made-up") is None

    token = await sessions.create_session(db, user_id)
    assert await sessions.session_owner(db, token) == user_id
    assert await sessions.session_owner(db, token + "x") is None
    async with db.transaction() as session:
        await session.execute(update(User).where(User.id == user_id).values(status="banned"))
    assert await sessions.session_owner(db, token) is None

    async with db.transaction() as session:
        await session.execute(update(User).where(User.id == user_id).values(status="active"))
        await session.execute(update(KeyValue).where(KeyValue.key.like("miniapp:%"))
                              .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert await sessions.session_owner(db, token) is None
    expired = await sessions.create_signin_link(db, user_id)
    async with db.transaction() as session:
        await session.execute(update(KeyValue).where(KeyValue.key.like("miniapp:link:%"))
                              .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert await sessions.redeem_signin_link(db, expired) is None
