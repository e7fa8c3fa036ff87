"""docs/DEPLOY.md's backup and restore, done for real: pg_dump of a live schema, pg_restore into a new database, and
cumapp reads back the same accounts, ledger and encrypted SMS (with the same DATA_ENCRYPTION_KEYS)."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text

from core.models import Message
from core.money import accounts, history, ledger
from core.platform.migrate import upgrade_to_head_async
from core.platform.settings import Settings
from core.services import Services, build_services
from tests.conftest import PG_MISSING, TEST_DATABASE_URL, _admin, _with_database

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "DEPLOY.md"
# The flags DEPLOY.md tells operators to use; the test runs exactly these.
DUMP_FLAGS = ["--format=custom", "--no-owner", "--no-privileges"]
RESTORE_FLAGS = ["--no-owner", "--no-privileges", "--exit-on-error"]
BODY = "Backup canary: the code is 424242"


def _pg_tool(name: str) -> str | None:
    """The PATH's tool, else the newest one PostgreSQL's Debian packages put under /usr/lib/postgresql."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return versions[-1] if versions else None


PG_DUMP, PG_RESTORE = _pg_tool("pg_dump"), _pg_tool("pg_restore")


def _libpq(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, timeout=60)


def _settings(url: str, key: str) -> Settings:
    return Settings(_env_file=None, database_url=url, sandbox="true", data_encryption_keys=key)  # type: ignore[call-arg]


def _cumapp_migrate(url: str, key: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM", "DISCORD", "TWILIO", "GROQ"))}
    env.update(DATABASE_URL=url, DATA_ENCRYPTION_KEYS=key, SANDBOX="true")
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "migrate"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _write(services: Services) -> tuple[int, bytes]:
    async with services.db.transaction() as session:
        account = await accounts.get_or_create(
            session, accounts.Contact("telegram", "7001", chat_id="7001"), signup_bonus_cents=500
        )
        user_id = account.user.id
        await ledger.post(session, user_id, 1234, kind="grant", idempotency_key="backup-test", note="backup test")
        session.add(Message(
            user_id=user_id, direction="inbound", provider="sandbox", provider_message_id="backup-1",
            from_e164="+15550100001", to_e164="+15550100002", body=BODY, status="received",
        ))
    async with services.db.transaction() as session:
        return user_id, await history.export_csv(session, user_id)


async def _read(services: Services, user_id: int) -> tuple[int, int, bytes, str]:
    async with services.db.transaction() as session:
        cached = await ledger.balance(session, user_id)
        sums = await ledger.ledger_sums(session, user_id)
        assert cached == sums  # the restored cache agrees with the restored ledger
        body = (await session.scalars(select(Message.body).where(Message.provider_message_id == "backup-1"))).one()
        return cached.balance_cents, cached.held_cents, await history.export_csv(session, user_id), body


async def _raw_body(url: str) -> str:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(text("SELECT body FROM messages"))).scalar_one()
    finally:
        await engine.dispose()


@pytest.mark.skipif(not TEST_DATABASE_URL, reason=PG_MISSING)
@pytest.mark.skipif(not (PG_DUMP and PG_RESTORE), reason="pg_dump or pg_restore not found (postgresql-client)")
async def test_pg_dump_then_restore_into_a_new_database_keeps_what_cumapp_reads(tmp_path: Path) -> None:
    assert TEST_DATABASE_URL and PG_DUMP and PG_RESTORE
    guide = DEPLOY.read_text(encoding="utf-8")
    assert f"pg_dump {' '.join(DUMP_FLAGS)}" in guide and f"pg_restore {' '.join(RESTORE_FLAGS)}" in guide
    key = Fernet.generate_key().decode()
    tag = uuid.uuid4().hex[:8]
    source, restored = f"cumapp_backup_src_{tag}", f"cumapp_backup_dst_{tag}"
    source_url, restored_url = _with_database(TEST_DATABASE_URL, source), _with_database(TEST_DATABASE_URL, restored)
    await _admin(TEST_DATABASE_URL, f'CREATE DATABASE "{source}"')
    try:
        await upgrade_to_head_async(source_url)  # what `cumapp migrate` does
        original = build_services(_settings(source_url, key))
        try:
            user_id, exported = await _write(original)
        finally:
            await original.db.dispose()

        dump = tmp_path / "cumapp.dump"
        await asyncio.to_thread(_run, [PG_DUMP, *DUMP_FLAGS, f"--file={dump}", _libpq(source_url)])
        await _admin(TEST_DATABASE_URL, f'CREATE DATABASE "{restored}"')
        await asyncio.to_thread(_run, [PG_RESTORE, *RESTORE_FLAGS, f"--dbname={_libpq(restored_url)}", str(dump)])

        # Restored at the same revision: the upgrade step after a restore has nothing to do and succeeds.
        assert "up to date" in await asyncio.to_thread(_cumapp_migrate, restored_url, key)
        services = build_services(_settings(restored_url, key))
        try:
            balance, held, restored_export, body = await _read(services, user_id)
        finally:
            await services.db.dispose()
        assert (balance, held) == (500 + 1234, 0)
        assert restored_export == exported and b"backup test" in exported
        assert body == BODY
        # The dump holds the SMS encrypted: without DATA_ENCRYPTION_KEYS a backup cannot be read.
        assert BODY not in await _raw_body(restored_url)
    finally:
        for name in (source, restored):
            await _admin(TEST_DATABASE_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
