"""Migration 0008: rows written in plain text before encryption are encrypted with the key the application uses
(DATA_ENCRYPTION_KEYS, else the sandbox key file), and the application reads them afterwards."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from alembic import command
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from core.models import ApiWebhookEndpoint, KeyValue, Message, OutboxDelivery, Verification, VerificationSms
from core.platform.crypto import Keyring, looks_encrypted, sandbox_key_path
from core.platform.db import Database
from core.platform.migrate import alembic_config, upgrade_to_head
from tests.conftest import PG_MISSING, TEST_DATABASE_URL, _admin, _with_database

NOW = "2026-12-01 10:00:00+00:00"
BODY = "Meet me under the walnut tree at seven"
CODE_SMS = "Your Quokka code is 482913"
SECRET = "whsec_plain_before_the_upgrade"

PLAIN_ROWS = [
    "INSERT INTO users (id, role, status, tier, locale, balance_cents, held_cents, ai_opt_in, auto_analyze, "
    f"announcements, created_at, last_seen_at) VALUES (1, 'user', 'active', 'free', 'en', 0, 0, false, false, true, "
    f"'{NOW}', '{NOW}')",
    "INSERT INTO messages (id, direction, provider, from_e164, to_e164, body, media_urls, status, segments, encoding, "
    f"cost_cents, price_cents, created_at, updated_at) VALUES (1, 'inbound', 'twilio', '+14155550199', '+12125550100', "
    f"'{BODY}', '[]', 'received', 1, 'GSM-7', 0, 0, '{NOW}', '{NOW}')",
    "INSERT INTO outbox_deliveries (id, platform, chat_id, kind, payload, state, priority, attempts, next_attempt_at, "
    f"created_at) VALUES (1, 'telegram', '1', 'sms', '{{\"v\": 1, \"text\": \"{BODY}\"}}', 'sent', 0, 1, '{NOW}', "
    f"'{NOW}')",
    "INSERT INTO key_values (key, value) VALUES ('smsref:1', '{\"note\": \"a plain note\"}')",
    "INSERT INTO verifications (id, user_id, provider, service, service_name, state, price_cents, "
    "provider_cost_cents, idempotency_key, code, sms_text, created_at, updated_at) VALUES (1, 1, 'sandbox', 'qk', "
    f"'Quokka', 'code_received', 10, 5, 'mig-1', '482913', '{CODE_SMS}', '{NOW}', '{NOW}')",
    "INSERT INTO verification_sms (id, verification_id, provider_sms_id, text, code, received_at) VALUES "
    f"(1, 1, 's1', '{CODE_SMS}', '482913', '{NOW}')",
    f"INSERT INTO api_webhook_endpoints (id, user_id, url, secret, created_at) VALUES (1, 1, 'https://h.example/x', "
    f"'{SECRET}', '{NOW}')",
]


async def _execute(url: str, statements: list[str]) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))
    await engine.dispose()


async def _raw(url: str) -> list[str]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        rows = (await connection.execute(text(
            "SELECT m.body, CAST(o.payload AS TEXT), CAST(k.value AS TEXT), v.code, v.sms_text, s.text, s.code, "
            "w.secret FROM messages m, outbox_deliveries o, key_values k, verifications v, verification_sms s, "
            "api_webhook_endpoints w"
        ))).one()
    await engine.dispose()
    return [str(value) for value in rows]


async def _app_reads(url: str, keyring: Keyring) -> None:
    db = Database(url, keyring=keyring)
    try:
        async with db.read() as session:
            assert await session.scalar(select(Message.body)) == BODY
            assert (await session.scalar(select(OutboxDelivery.payload)))["text"] == BODY
            assert await session.scalar(select(KeyValue.value)) == {"note": "a plain note"}
            verification = (await session.scalars(select(Verification))).one()
            sms = (await session.scalars(select(VerificationSms))).one()
            assert (verification.code, verification.sms_text, sms.text, sms.code) == ("482913", CODE_SMS, CODE_SMS,
                                                                                        "482913")
            assert sms.text_hash == keyring.fingerprint(VerificationSms.dedupe_text(1, CODE_SMS))
            assert await session.scalar(select(ApiWebhookEndpoint.secret)) == SECRET
    finally:
        await db.dispose()


def _migrate_with_plain_rows(url: str) -> None:
    command.upgrade(alembic_config(url), "0007")
    asyncio.run(_execute(url, PLAIN_ROWS))
    upgrade_to_head(url)


def _all_encrypted(values: list[str], keyring: Keyring) -> None:
    for value in values:
        token = value.strip('"')  # a JSON column holds the token as a JSON string
        assert looks_encrypted(token) and keyring.is_current(token), value[:40]
    joined = " ".join(values)
    for plain in ("walnut", "Quokka", "482913", "plain_before", "a plain note"):
        assert plain not in joined


def test_sqlite_sandbox_rows_are_encrypted_with_the_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATA_ENCRYPTION_KEYS", raising=False)
    monkeypatch.setenv("SANDBOX", "true")
    url = f"sqlite+aiosqlite:///{tmp_path / 'sandbox.db'}"
    key_file = sandbox_key_path(url)
    assert key_file is not None
    key = Fernet.generate_key().decode()
    key_file.write_text(key + "\n")  # as `cumapp run` makes it before migrating
    _migrate_with_plain_rows(url)
    _all_encrypted(asyncio.run(_raw(url)), Keyring([key]))
    asyncio.run(_app_reads(url, Keyring([key])))


def test_without_any_key_rows_stay_plain_and_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATA_ENCRYPTION_KEYS", raising=False)
    monkeypatch.setenv("SANDBOX", "true")
    url = f"sqlite+aiosqlite:///{tmp_path / 'nokey.db'}"
    _migrate_with_plain_rows(url)  # no key file: an `alembic upgrade` never makes one
    assert BODY in asyncio.run(_raw(url))
    asyncio.run(_app_reads(url, Keyring()))
    assert list(tmp_path.iterdir()) == [tmp_path / "nokey.db"]


def test_postgresql_plain_rows_are_encrypted_with_data_encryption_keys_and_a_downgrade_restores_codes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not TEST_DATABASE_URL:
        pytest.skip(PG_MISSING)
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("DATA_ENCRYPTION_KEYS", key)
    name = f"cumapp_migrate_enc_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(TEST_DATABASE_URL, f'CREATE DATABASE "{name}"'))
    try:
        url = _with_database(TEST_DATABASE_URL, name)
        _migrate_with_plain_rows(url)
        _all_encrypted(asyncio.run(_raw(url)), Keyring([key]))
        asyncio.run(_app_reads(url, Keyring([key])))
        command.downgrade(alembic_config(url), "0007")
        body, _payload, _value, code, sms_text, sms, sms_code, _secret = asyncio.run(_raw(url))
        assert (code, sms_text, sms, sms_code) == ("482913", CODE_SMS, CODE_SMS, "482913")
        assert looks_encrypted(body)  # the version before reads message bodies encrypted
    finally:
        asyncio.run(_admin(TEST_DATABASE_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
