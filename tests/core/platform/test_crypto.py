"""Encryption at rest on both engines: what the database holds, reading back, old plain rows, rotation, wrong keys,
the sandbox key file and the start-up refusal without keys."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from core.ai.answers import ConversationRef
from core.ai.drafts import DraftSet, DraftStore
from core.messaging.storage import kv_get, kv_put
from core.models import Base
from core.platform.crypto import (
    DataKeyError,
    Keyring,
    keyring_for,
    looks_encrypted,
    read_or_create_key_file,
    sandbox_key_path,
)
from core.platform.db import Database
from core.platform.settings import SettingsError
from core.services import build_services
from tests.conftest import make_settings
from tests.core.messaging.test_service import OUTSIDE, give_number, inbound, new_user, twilio_service

ROOT = Path(__file__).resolve().parents[3]
KEY_A, KEY_B, KEY_C = (Fernet.generate_key().decode() for _ in range(3))
SECRET_IN = "The vault code is 4471, bring the tulip"
SECRET_OUT = "Meet me at the blue door at nine"


async def raw(db: Database, sql: str) -> list[str]:
    """Column values as the database holds them: a plain SQL query, no column types in between."""
    async with db.read() as session:
        return [str(value) for value in (await session.execute(text(sql))).scalars()]


async def history_bodies(db: Database, user_id: int, conversation_id: int) -> list[str]:
    async with twilio_service(db) as (service, _fake):
        _, messages, _ = await service.history(conversation_id, user_id=user_id)
    return [m.body for m in messages]


async def test_an_sms_round_trip_is_stored_encrypted_and_reads_back(db: Database) -> None:
    db.use_keyring(Keyring([KEY_A]))
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, fake):
        received = await service.receive_inbound(inbound(own.e164, body=SECRET_IN, sid="SMin"))
        await service.send_sms(user.id, OUTSIDE, SECRET_OUT, request_key="r1")
        (created,) = fake.messages.values()
        views, _ = await service.conversations(user.id)
        _, messages, _ = await service.history(received.conversation_id, user_id=user.id)
    assert created["body"] == SECRET_OUT  # the provider gets the text, the database does not
    assert [m.body for m in messages] == [SECRET_OUT, SECRET_IN] and views[0].last_body == SECRET_OUT

    bodies = await raw(db, "SELECT body FROM messages")
    assert len(bodies) == 2 and all(looks_encrypted(body) for body in bodies)
    stored = " ".join(
        bodies
        + await raw(db, "SELECT CAST(payload AS TEXT) FROM outbox_deliveries")
        + await raw(db, "SELECT CAST(value AS TEXT) FROM key_values")
    )
    for secret in (SECRET_IN, SECRET_OUT):
        assert secret not in stored
        # Words of five letters or more: a shorter one turns up in random base64 now and then.
        for word in (w for w in secret.split() if len(w) >= 5):
            assert word not in stored, word


async def test_ai_drafts_are_stored_encrypted(db: Database) -> None:
    db.use_keyring(Keyring([KEY_A]))
    store = DraftStore(db)
    draft = DraftSet(
        key="k1", user_id=7, conversation=ConversationRef(3, 4, OUTSIDE, "Anastasia"), message_id=9,
        drafts=[SECRET_OUT, "On my way", "Running late"], engine="rules", subject=SECRET_IN,
    )
    await store.save(draft)
    (value,) = await raw(db, "SELECT CAST(value AS TEXT) FROM key_values")
    assert "blue door" not in value and "tulip" not in value and "Anastasia" not in value
    loaded = await store.load(7, "k1")
    assert loaded is not None and loaded.drafts == draft.drafts and loaded.subject == SECRET_IN


async def test_rows_written_in_plain_text_before_the_upgrade_still_read(db: Database) -> None:
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):  # no keyring yet: the version before encryption
        old = await service.receive_inbound(inbound(own.e164, body="written in plain text", sid="SMold"))
    async with db.transaction() as session:
        await kv_put(session, "smsref:old", {"note": "plain note"}, None)
    assert await raw(db, "SELECT body FROM messages") == ["written in plain text"]

    db.use_keyring(Keyring([KEY_A]))
    async with twilio_service(db) as (service, _fake):
        await service.receive_inbound(inbound(own.e164, body="written encrypted", sid="SMnew"))
    assert await history_bodies(db, user.id, old.conversation_id) == ["written encrypted", "written in plain text"]
    async with db.read() as session:
        assert await kv_get(session, "smsref:old") == {"note": "plain note"}


async def test_rotation_old_keys_still_read_and_a_wrong_key_fails_clearly(db: Database) -> None:
    db.use_keyring(Keyring([KEY_A]))
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):
        first = await service.receive_inbound(inbound(own.e164, body="under key A", sid="SMa"))

    # Several databases with different keys in one process: each engine carries its own keyring.
    rotated = Database(db.url, keyring=Keyring([KEY_B, KEY_A]))
    wrong = Database(db.url, keyring=Keyring([KEY_C]))
    keyless = Database(db.url)
    try:
        async with twilio_service(rotated) as (service, _fake):
            await service.receive_inbound(inbound(own.e164, body="under key B", sid="SMb"))
        assert await history_bodies(rotated, user.id, first.conversation_id) == ["under key B", "under key A"]
        newest = (await raw(db, "SELECT body FROM messages ORDER BY id"))[-1]
        assert Keyring([KEY_B]).decrypt(newest) == "under key B"  # the first key is the one that encrypts
        with pytest.raises(DataKeyError):  # key A alone cannot read what key B wrote
            await history_bodies(db, user.id, first.conversation_id)
        with pytest.raises(DataKeyError, match="none of the 1 key.*DATA_ENCRYPTION_KEYS"):
            await history_bodies(wrong, user.id, first.conversation_id)
        with pytest.raises(DataKeyError, match="DATA_ENCRYPTION_KEYS is unset"):
            await history_bodies(keyless, user.id, first.conversation_id)
    finally:
        for other in (rotated, wrong, keyless):
            await other.dispose()


def test_plain_text_that_resembles_a_token_is_returned_as_is() -> None:
    keyring = Keyring([KEY_A])
    for plain in ("", "gAAAAA", "gAAAAA is what I typed", "hello", "gAAAAAB" + "x" * 90):
        assert keyring.decrypt(plain) == plain
    token = keyring.encrypt("ñandú 🦤")
    assert looks_encrypted(token) and keyring.decrypt(token) == "ñandú 🦤" and token != keyring.encrypt("ñandú 🦤")


async def test_sandbox_makes_a_private_key_file_beside_the_sqlite_database_and_reuses_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sandbox.db'}"
    first = build_services(make_settings(url))
    async with first.db.engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    async with first.db.transaction() as session:
        await kv_put(session, "smsref:1", {"text": SECRET_IN}, None)
    await first.close()

    key_file = tmp_path / "sandbox.db.key"
    assert sandbox_key_path(url) == key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    plain = Database(url)
    assert "tulip" not in " ".join(await raw(plain, "SELECT value FROM key_values"))
    await plain.dispose()

    second = build_services(make_settings(url))
    try:
        assert second.db.keyring is not None and second.db.keyring.encrypts
        async with second.db.read() as session:
            assert await kv_get(session, "smsref:1") == {"text": SECRET_IN}
    finally:
        await second.close()
    assert key_file.read_text() == key


def test_processes_starting_together_agree_on_one_key_file(tmp_path: Path) -> None:
    path = tmp_path / "race.db.key"
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: read_or_create_key_file(path), range(16)))
    assert len(keys) == 1 and list(tmp_path.iterdir()) == [path]


def test_a_damaged_key_file_is_one_readable_error(tmp_path: Path) -> None:
    (tmp_path / "sandbox.db.key").write_text("not a key\n")
    with pytest.raises(SettingsError) as error:
        keyring_for(make_settings(f"sqlite+aiosqlite:///{tmp_path / 'sandbox.db'}"), all_sandbox=True)
    (line,) = error.value.lines
    assert line.startswith("DATA_ENCRYPTION_KEYS: the sandbox key file") and "not a key" not in line


def test_keys_from_the_setting_win_and_no_key_file_is_made(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", data_encryption_keys=f"{KEY_B},{KEY_A}")
    keyring = keyring_for(settings, all_sandbox=True)
    assert keyring.decrypt(Keyring([KEY_A]).encrypt("old")) == "old"
    assert Keyring([KEY_B]).decrypt(keyring.encrypt("new")) == "new"
    assert list(tmp_path.iterdir()) == []


def test_without_keys_real_providers_refuse_strictly_and_warn_otherwise(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", sandbox="auto", twilio_account_sid="AC1",
                             twilio_auth_token="t")
    with pytest.raises(SettingsError) as error:
        keyring_for(settings, all_sandbox=False, strict=True)
    assert error.value.lines[0].startswith("DATA_ENCRYPTION_KEYS: unset")
    assert not keyring_for(settings, all_sandbox=False).encrypts
    with caplog.at_level(logging.WARNING):
        services = build_services(settings, db=Database(settings.database_url))
    assert services.db.keyring is not None and not services.db.keyring.encrypts
    assert any("DATA_ENCRYPTION_KEYS is unset" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    postgres_sandbox = make_settings("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    assert not keyring_for(postgres_sandbox, all_sandbox=True, strict=True).encrypts  # simulated data only
    assert list(tmp_path.iterdir()) == []


def test_cumapp_run_with_real_providers_and_no_keys_refuses_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM", "DISCORD", "TWILIO", "GROQ"))}
    env.update(PYTHONPATH=str(ROOT), TWILIO_ACCOUNT_SID="AC" + "1" * 32, TWILIO_AUTH_TOKEN="t" * 32, HTTP_PORT="0")
    env.pop("DATA_ENCRYPTION_KEYS", None)
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run", "--no-console"], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cumapp: DATA_ENCRYPTION_KEYS: unset") and "Fernet.generate_key()" in line
