"""unnest() inserts store what the ORM would: values through the columns' own processors, duplicates left out."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text

from core.messaging.inbound.store import inbound_row
from core.models import Message
from core.platform import bulk
from core.platform.clock import utcnow
from core.platform.crypto import Keyring, looks_encrypted
from core.platform.db import Database
from core.providers.sms import InboundSms

pytestmark = pytest.mark.postgres_only("unnest() inserts are the PostgreSQL path; SQLite keeps the executemany")


def _row(sid: str, body: str) -> dict[str, object]:
    sms = InboundSms("twilio", sid, "+12025550100", "+14155551000", body, ("https://media.example/a.jpg",))
    return inbound_row(sms, None, None, utcnow() - timedelta(seconds=3), utcnow())


async def test_rows_are_stored_as_the_orm_stores_them_and_a_duplicate_is_left_out(db: Database) -> None:
    db.use_keyring(Keyring([Fernet.generate_key().decode()]))
    rows = [_row("SMBULK1", "code 123-456 <b>"), _row("SMBULK2", "ünïcödé ✓")]
    statement = bulk.unnest_insert(
        Message.__table__, tuple(rows[0]), ("provider", "provider_message_id"), ("id", "provider_message_id"),
        db.engine.sync_engine.dialect,
    )
    async with db.transaction() as session:
        driver = await bulk.driver_connection(session)
        assert driver is not None
        first = await statement.fetch(driver, rows)
    assert [record[1] for record in first] == ["SMBULK1", "SMBULK2"]
    async with db.transaction() as session:  # a provider's retry, and one new message
        again = await statement.fetch(await bulk.driver_connection(session), [rows[1], _row("SMBULK3", "three")])
    assert [record[1] for record in again] == ["SMBULK3"]

    async with db.read() as session:
        stored = (await session.scalars(select(Message).order_by(Message.id))).all()
        raw_bodies = (await session.scalars(text("SELECT body FROM messages ORDER BY id"))).all()
        assert await session.scalar(select(func.count()).select_from(Message)) == 3
    assert [m.body for m in stored] == ["code 123-456 <b>", "ünïcödé ✓", "three"]
    assert all(looks_encrypted(body) and "code" not in body for body in raw_bodies)  # encrypted as the ORM does
    assert stored[0].media_urls == ["https://media.example/a.jpg"]
    assert stored[0].received_at == rows[0]["received_at"] and stored[0].received_at.tzinfo is not None
    assert (stored[0].segments, stored[0].encoding) == (rows[0]["segments"], rows[0]["encoding"])


async def test_a_column_with_a_python_default_must_be_given(db: Database) -> None:
    """Core fills Python-side defaults in, unnest() cannot: leaving such a column out is an error, not a NULL."""
    columns = tuple(name for name in _row("SMBULK9", "x") if name != "media_urls")
    with pytest.raises(ValueError, match="media_urls"):
        bulk.unnest_insert(Message.__table__, columns, ("provider", "provider_message_id"), ("id",),
                           db.engine.sync_engine.dialect)


async def test_sqlite_has_no_driver_connection(tmp_path: object) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/bulk.db")
    try:
        async with database.read() as session:
            assert await bulk.driver_connection(session) is None
    finally:
        await database.dispose()


def test_rows_of_one_insert_must_share_their_columns() -> None:
    """A row with a column the others lack would be misaligned in the arrays: refused before anything is sent."""
    assert bulk.columns_of([{"a": 1, "b": 2}, {"b": 3, "a": 4}]) == ("a", "b")
    with pytest.raises(ValueError, match="same columns"):
        bulk.columns_of([{"a": 1, "b": 2}, {"a": 3, "c": 4}])
