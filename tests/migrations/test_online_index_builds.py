"""Migrations 0011 and 0012 on PostgreSQL build their outbox indexes while the running instances keep writing and
claiming outbox rows (docs/DEPLOY.md, Upgrades: the old instances serve while `cumapp migrate` runs), and a build
that failed half way is redone when the migration runs again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from alembic import command

from core.platform.migrate import alembic_config
from tests.conftest import PG_MISSING, TEST_DATABASE_URL, _admin, _with_database
from tests.migrations.test_migrations import _check

NOW = "2026-12-01 10:00:00+00:00"
DELIVERY = (
    "INSERT INTO outbox_deliveries (platform, chat_id, kind, payload, state, priority, attempts, next_attempt_at, "
    f"created_at) VALUES ('telegram', $1, 'sms', '{{}}', 'pending', 0, 0, '{NOW}', '{NOW}')"
)
# What a running instance does on each webhook and each dispatcher cycle.
CLAIM = ("SELECT id FROM outbox_deliveries WHERE state = 'pending' ORDER BY priority DESC, id LIMIT 15 "
         "FOR UPDATE SKIP LOCKED")


@pytest.fixture
def database() -> Iterator[str]:
    if not TEST_DATABASE_URL:
        pytest.skip(PG_MISSING)
    name = f"cumapp_migrate_online_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(TEST_DATABASE_URL, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(TEST_DATABASE_URL, name)
    finally:
        asyncio.run(_admin(TEST_DATABASE_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _indexes(connection: asyncpg.Connection) -> dict[str, tuple[bool, str]]:
    rows = await connection.fetch(
        "SELECT c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'outbox_deliveries'::regclass")
    return {row[0]: (row[1], row[2]) for row in rows}


async def _migrate_while_serving(url: str) -> tuple[list[str], dict[str, tuple[bool, str]]]:
    """Runs the upgrades to 0012 while a transaction that wrote an outbox row stays open, as a running instance's
    may; in the meantime another connection stores a delivery and claims, with a 2 s lock timeout. Returns what
    failed of those, and the indexes afterwards."""
    holder = await asyncpg.connect(_dsn(url))
    serving = await asyncpg.connect(_dsn(url))
    try:
        await serving.execute("SET lock_timeout = '2s'")
        held = holder.transaction()
        await held.start()
        await holder.execute(DELIVERY, "held")
        migration = asyncio.create_task(asyncio.to_thread(command.upgrade, alembic_config(url), "0012"))
        # Until the migration waits on the held transaction, which every way of building an index must.
        deadline = time.monotonic() + 30
        while not await serving.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> $1 "
                "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'", holder.get_server_pid()):
            assert time.monotonic() < deadline and not migration.done(), "the migration never waited"
            await asyncio.sleep(0.05)
        failed = []
        for what, statement, args in (("store a delivery", DELIVERY, ("during",)), ("claim", CLAIM, ())):
            try:
                async with serving.transaction():
                    await serving.execute(statement, *args)
            except asyncpg.LockNotAvailableError:
                failed.append(what)
        await held.commit()
        await asyncio.wait_for(migration, 60)
        return failed, await _indexes(serving)
    finally:
        await holder.close()
        await serving.close()


async def _indexes_of(url: str) -> dict[str, tuple[bool, str]]:
    connection = await asyncpg.connect(_dsn(url))
    try:
        return await _indexes(connection)
    finally:
        await connection.close()


async def _leave_an_invalid_build(url: str) -> None:
    """What a CREATE INDEX CONCURRENTLY that failed half way leaves: the index, marked invalid."""
    connection = await asyncpg.connect(_dsn(url))
    try:
        await connection.execute("CREATE INDEX ix_outbox_deliveries_pending_order ON outbox_deliveries (id)")
        await connection.execute(
            "UPDATE pg_index SET indisvalid = false "
            "WHERE indexrelid = 'ix_outbox_deliveries_pending_order'::regclass")
    finally:
        await connection.close()


def test_outbox_indexes_are_built_while_instances_keep_storing_and_claiming(database: str) -> None:
    command.upgrade(alembic_config(database), "0010")
    asyncio.run(_leave_an_invalid_build(database))

    failed, indexes = asyncio.run(_migrate_while_serving(database))

    assert failed == [], f"blocked while the migration ran: {failed}"
    valid, active_chat = indexes["ix_outbox_deliveries_active_chat"]
    assert valid and "(platform, chat_id, id) WHERE" in active_chat, active_chat
    valid, pending_order = indexes["ix_outbox_deliveries_pending_order"]
    assert valid and "(priority DESC, id) WHERE" in pending_order, pending_order  # the invalid leftover rebuilt
    assert "ix_outbox_deliveries_active_chat_by_id" not in indexes
    # Run again, as after a failure once the indexes were done (0012 not yet recorded): it takes up where it
    # stopped, with nothing left to build or rename.
    command.stamp(alembic_config(database), "0011")
    command.upgrade(alembic_config(database), "0012")
    assert asyncio.run(_indexes_of(database)) == indexes
    command.upgrade(alembic_config(database), "head")
    _check(database)  # at head, the schema is the models' own
