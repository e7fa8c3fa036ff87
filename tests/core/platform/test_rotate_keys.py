"""Key rotation on both engines: `rotate-keys` in batches, stopped part way and run again, leaves every encrypted
row readable under the new key alone; verification SMS are found again by fingerprint across a rotation; a
`pg_dump` holds no relayed SMS text, verification SMS text or webhook secret."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Text, cast, column, select, table, text
from sqlalchemy.engine import make_url

from core.api.endpoints import Endpoints
from core.messaging.storage import kv_put
from core.models import (
    ApiEvent,
    ApiIdempotency,
    ApiWebhookEndpoint,
    Base,
    Message,
    Verification,
    VerificationSms,
)
from core.platform.crypto import DataKeyError, Keyring, looks_encrypted
from core.platform.db import Database
from core.platform.rotate_keys import model_columns, rotate_database
from core.verification.relay import EventOutcome
from tests.core.messaging.test_service import give_number, inbound, new_user, twilio_service
from tests.core.verification.test_service import Harness, deliveries, settings_for
from tests.fakes.textverified_api import FakeTextVerifiedServer

ROOT = Path(__file__).resolve().parents[3]
KEY_A, KEY_B = (Fernet.generate_key().decode() for _ in range(2))
RELAYED = "Grandma's parcel waits in locker 8812 beside the pistachio bakery"
SEEDED = {
    "api_events.data", "api_idempotency.response", "api_webhook_endpoints.secret", "key_values.value",
    "messages.body", "outbox_deliveries.payload", "verification_sms.text", "verification_sms.code",
    "verifications.sms_text", "verifications.code",
}
VERIFICATION_TEXT = "Zanzibar passcode 731904 for the marmalade kazoo"


async def _seed(db: Database) -> dict[str, Any]:
    """A row in every encrypted column: one written in plain text before encryption, the rest under key A."""
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):  # the version before encryption
        await service.receive_inbound(inbound(own.e164, body="plain old text", sid="SMold"))
    db.use_keyring(Keyring([KEY_A]))
    async with twilio_service(db) as (service, _fake):
        for n in range(4):
            await service.receive_inbound(inbound(own.e164, body=f"{RELAYED} #{n}", sid=f"SM{n}"))
    keyring = Keyring([KEY_A])
    async with db.transaction() as session:
        await kv_put(session, "smsref:x", {"note": "a remembered note"}, None)
        verification = Verification(
            user_id=user.id, provider="sandbox", service="zz", service_name="Zanzibar", state="code_received",
            price_cents=10, provider_cost_cents=5, idempotency_key="rot-1", sms_text=VERIFICATION_TEXT, code="731904",
        )
        session.add(verification)
        await session.flush()
        session.add(VerificationSms(
            verification_id=verification.id, provider_sms_id="s1", text=VERIFICATION_TEXT, code="731904",
            text_hash=keyring.fingerprint(VerificationSms.dedupe_text(verification.id, VERIFICATION_TEXT)),
        ))
        session.add(ApiEvent(user_id=user.id, type="message.received", data={"text": RELAYED}))
        session.add(ApiIdempotency(user_id=user.id, key="k", request_hash="0" * 64, response={"body": RELAYED}))
        session.add(ApiWebhookEndpoint(user_id=user.id, url="https://hooks.example/x", secret="whsec_rotate_me"))
    return {"verification_id": verification.id}


async def _stored(db: Database) -> dict[str, list[str]]:
    """Every encrypted column's values as the database holds them (JSON as its text)."""
    found: dict[str, list[str]] = {}
    async with db.read() as session:
        for spec in model_columns():
            raw = column(spec.column)
            rows = await session.scalars(
                select(cast(raw, Text)).select_from(table(spec.table, raw)).where(raw.is_not(None)))
            found[spec.name] = [value for value in rows if value is not None and value != "null"]
    return found


def _token(spec_json: bool, value: str) -> str:
    return json.loads(value) if spec_json else value


async def test_rotation_in_batches_stops_and_a_second_run_finishes(db: Database) -> None:
    seeded = await _seed(db)
    new_only = Keyring([KEY_B])

    first = await rotate_database(db.url, Keyring([KEY_B, KEY_A]), batch_size=2, max_batches=3)
    assert not first.done and first.batches == 3
    stored = await _stored(db)
    tokens = [_token(s.json, v) for s in model_columns() for v in stored[s.name]]
    under_b = sum(isinstance(t, str) and new_only.is_current(t) for t in tokens)
    assert 0 < under_b < len(tokens)  # stopped part way, with what it did kept

    second = await rotate_database(db.url, Keyring([KEY_B, KEY_A]), batch_size=2)
    assert second.done and second.summary().endswith("every encrypted row is under the first key")
    assert sum(c.current for c in second.columns) >= under_b  # what the first run did is skipped, not redone
    plain = {c.name for c in first.columns + second.columns if c.was_plain}
    assert {"messages.body", "outbox_deliveries.payload"} <= plain, plain  # the message from before encryption

    stored = await _stored(db)
    for spec in model_columns():
        assert stored[spec.name] or spec.name not in SEEDED, spec.name
        for value in stored[spec.name]:
            token = _token(spec.json, value)
            assert looks_encrypted(token) and new_only.is_current(token), spec.name
            with pytest.raises(DataKeyError):
                Keyring([KEY_A]).decrypt(token)

    # The application with key B alone reads everything, and finds the verification SMS by its new fingerprint.
    only_b = Database(db.url, keyring=new_only)
    try:
        async with only_b.read() as session:
            bodies = sorted((await session.scalars(select(Message.body))).all())
            sms = (await session.scalars(select(VerificationSms))).one()
            secret = await session.scalar(select(ApiWebhookEndpoint.secret))
            verification = await session.get(Verification, seeded["verification_id"])
        assert bodies == sorted([f"{RELAYED} #{n}" for n in range(4)] + ["plain old text"])
        assert sms.text == VERIFICATION_TEXT and verification is not None
        assert verification.sms_text == VERIFICATION_TEXT and secret == "whsec_rotate_me"
        assert sms.text_hash == new_only.fingerprint(VerificationSms.dedupe_text(sms.verification_id, sms.text))
    finally:
        await only_b.dispose()

    third = await rotate_database(db.url, new_only)
    assert third.done and sum(c.rewritten for c in third.columns) == 0  # nothing left to do


def test_the_command_stops_after_its_batches_and_a_rerun_finishes(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'rotate.db'}"

    async def seed() -> None:
        db = Database(url, keyring=Keyring([KEY_A]))
        async with db.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        async with db.transaction() as session:
            for n in range(5):
                await kv_put(session, f"smsref:{n}", {"text": f"{RELAYED} {n}"}, None)
        await db.dispose()

    asyncio.run(seed())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM", "DISCORD", "TWILIO", "GROQ"))}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=url, SANDBOX="true", DATA_ENCRYPTION_KEYS=f"{KEY_B},{KEY_A}")

    def rotate(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot.cli", "rotate-keys", "--batch-size", "2", *extra],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)

    stopped = rotate("--max-batches", "2")
    assert stopped.returncode == 3, stopped.stderr
    assert "key_values.value: 2/5 checked, 2 re-encrypted" in stopped.stdout  # progress
    assert "key_values.value: 5 row(s), 4 re-encrypted, 0 already under the first key (not finished)" in stopped.stdout
    assert stopped.stdout.strip().endswith("run `cumapp rotate-keys` again to finish")
    finished = rotate()
    assert finished.returncode == 0, finished.stderr
    assert "key_values.value: 5 row(s), 1 re-encrypted, 4 already under the first key" in finished.stdout
    assert finished.stdout.strip().endswith("every encrypted row is under the first key")


async def test_a_verification_sms_seen_again_after_a_rotation_is_still_a_duplicate(db: Database) -> None:
    db.use_keyring(Keyring([KEY_A]))
    async with FakeTextVerifiedServer() as fake:
        h = Harness(db, "textverified", settings_for(db, fake), fake)
        try:
            user = await h.user()
            v = await h.start(user)
            assert await h.main.handle_event(h.sms(v, VERIFICATION_TEXT)) is EventOutcome.HANDLED
            db.use_keyring(Keyring([KEY_B, KEY_A]))  # the new key is first; the SMS was stored under A
            await h.main.poll_open()  # the SMS list holds the same text under another id
            assert len(await deliveries(db, "code")) == 1
            # The same words with other spacing, as another route may carry them, are the same SMS too.
            again = h.sms(v, VERIFICATION_TEXT.replace(" ", "  "), event_key="whk_again")
            assert await h.main.handle_event(again) is EventOutcome.DUPLICATE
        finally:
            await h.close()
    async with db.read() as session:
        rows = (await session.execute(text("SELECT text, text_hash FROM verification_sms"))).all()
        sms_text, code = (await session.execute(text("SELECT sms_text, code FROM verifications"))).one()
    assert len(rows) == 1 and looks_encrypted(rows[0][0]) and looks_encrypted(str(sms_text))
    assert "731904" not in rows[0][1] and looks_encrypted(str(code))


def _pg_dump(url: str) -> str:
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return subprocess.run(["pg_dump", "--no-owner", "-d", plain], capture_output=True, text=True, check=True,
                          timeout=60).stdout


async def test_a_pg_dump_holds_no_relayed_text_no_verification_text_and_no_webhook_secret(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("pg_dump dumps PostgreSQL only: the SQLite run has no PostgreSQL database to dump")
    db.use_keyring(Keyring([KEY_A]))
    user = await new_user(db, "1")
    own = await give_number(db, user.id, "+12125550100")
    async with twilio_service(db) as (service, _fake):
        await service.receive_inbound(inbound(own.e164, body=RELAYED, sid="SMdump"))
    async with FakeTextVerifiedServer() as fake:
        h = Harness(db, "textverified", settings_for(db, fake), fake)
        try:
            v = await h.start(await h.user())
            assert await h.main.handle_event(h.sms(v, VERIFICATION_TEXT)) is EventOutcome.HANDLED
        finally:
            await h.close()
    endpoint = await Endpoints(db, allow_private=True).create(user.id, "http://127.0.0.1:9/hook")

    dump = _pg_dump(db.url)
    assert "+12125550100" in dump and "http://127.0.0.1:9/hook" in dump  # the dump is the real one
    assert endpoint.secret.startswith("whsec_") and endpoint.secret not in dump
    assert endpoint.secret.removeprefix("whsec_") not in dump
    for secret in (RELAYED, VERIFICATION_TEXT):
        assert secret not in dump
        # Words of five letters or more: a shorter one turns up in random base64 now and then.
        for word in (w for w in secret.split() if len(w) >= 5):
            assert word not in dump, word


def test_tokens_name_their_key_and_fernet_tokens_of_the_first_version_still_read() -> None:
    ring = Keyring([KEY_B, KEY_A])
    old = Fernet(KEY_A).encrypt(b"from version one").decode()  # as the first version stored rows
    assert looks_encrypted(old) and ring.decrypt(old) == "from version one" and not ring.is_current(old)
    new = ring.rotate(old)
    assert new.startswith("ag1:") and ring.is_current(new) and not Keyring([KEY_A, KEY_B]).is_current(new)
    assert Keyring([KEY_B]).decrypt(new) == "from version one"
    with pytest.raises(DataKeyError):
        Keyring([KEY_A]).decrypt(new)
    flipped = new[:-8] + ("A" if new[-8] != "A" else "B") + new[-7:]
    with pytest.raises(DataKeyError):  # the tag covers every byte
        ring.decrypt(flipped)
    assert Keyring([KEY_A]).fingerprint("x") in ring.fingerprints("x") and ring.fingerprint("x") != Keyring(
        [KEY_A]).fingerprint("x")
