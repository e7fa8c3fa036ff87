"""Statements run by asyncpg itself give what SQLAlchemy gives: the same rows, values through the same processors."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Integer, bindparam, select, update

from core.messaging.inbound.store import inbound_row
from core.models import Message
from core.platform import bulk
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.db import Database
from core.platform.driver_sql import driver_statement, in_array
from core.providers.sms import InboundSms

pytestmark = pytest.mark.postgres_only("statements run by asyncpg are the PostgreSQL path; SQLite keeps SQLAlchemy")

_MESSAGES = select(Message.id, Message.provider_message_id, Message.body, Message.media_urls, Message.received_at,
                   Message.direction).where(in_array(Message.provider_message_id, "b_ids", True),
                                            Message.direction == "inbound").order_by(Message.id)
_SEGMENTS = update(Message).where(Message.id == bindparam("b_id")).values(
    segments=Message.segments + bindparam("b_more", type_=Integer), updated_at=bindparam("b_at"))


async def _store(db: Database, *sids: str) -> None:
    rows = []
    for n, sid in enumerate(sids):
        sms = InboundSms("twilio", sid, "+12025550100", "+14155551000", f"code {n} <b>", ("https://m.example/a.jpg",))
        rows.append(inbound_row(sms, None, None, utcnow() - timedelta(seconds=n), utcnow()))
    async with db.transaction() as session:
        await session.execute(Message.__table__.insert(), rows)


async def test_rows_come_back_as_sqlalchemy_gives_them(db: Database) -> None:
    db.use_keyring(Keyring([Fernet.generate_key().decode()]))
    await _store(db, "SMDRV1", "SMDRV2", "SMDRV3")
    params = {"b_ids": ["SMDRV3", "SMDRV1", "SMNONE"]}
    async with db.transaction() as session:
        driver = await bulk.driver_connection(session)
        ours = await driver_statement(_MESSAGES, db.engine.sync_engine.dialect).fetch(driver, params)
    async with db.read() as session:
        theirs = (await session.execute(_MESSAGES, params)).all()
    assert [tuple(row) for row in ours] == [tuple(row) for row in theirs]
    assert [row.provider_message_id for row in ours] == ["SMDRV1", "SMDRV3"]
    first = ours[0]
    assert first.body == "code 0 <b>"  # decrypted by the column's own processor
    assert first.media_urls == ["https://m.example/a.jpg"]  # JSON decoded
    assert first.received_at.tzinfo is not None  # UTCDateTime's processor


async def test_executemany_updates_every_row_in_the_callers_transaction(db: Database) -> None:
    await _store(db, "SMDRV4", "SMDRV5")
    async with db.read() as session:
        ids = {sid: id_ for sid, id_ in (await session.execute(select(Message.provider_message_id, Message.id)))}
    statement = driver_statement(_SEGMENTS, db.engine.sync_engine.dialect)
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await statement.executemany(await bulk.driver_connection(session),
                                        [{"b_id": ids["SMDRV4"], "b_more": 5, "b_at": utcnow()}])
            raise RuntimeError("rolled back with the session's transaction")
    now = utcnow()
    async with db.transaction() as session:
        await statement.executemany(await bulk.driver_connection(session), [
            {"b_id": ids["SMDRV4"], "b_more": 2, "b_at": now}, {"b_id": ids["SMDRV5"], "b_more": 3, "b_at": now}])
    async with db.read() as session:
        stored = {sid: (segments, at) for sid, segments, at in
                  await session.execute(select(Message.provider_message_id, Message.segments, Message.updated_at))}
    assert stored == {"SMDRV4": (3, now), "SMDRV5": (4, now)}


def test_an_expanding_in_is_refused(db: Database) -> None:
    """Its SQL would change with each list's length: a new prepared statement for each."""
    statement = select(Message.id).where(Message.provider_message_id.in_(bindparam("b_ids", expanding=True)))
    with pytest.raises(ValueError, match="in_array"):
        driver_statement(statement, db.engine.sync_engine.dialect)


def test_a_python_side_default_left_out_is_refused(db: Database) -> None:
    """messages.updated_at has onupdate=utcnow, which SQLAlchemy computes per execution: asyncpg alone would
    store NULL."""
    statement = update(Message).where(Message.id == bindparam("b_id")).values(segments=1)
    with pytest.raises(ValueError, match="updated_at"):
        driver_statement(statement, db.engine.sync_engine.dialect)
