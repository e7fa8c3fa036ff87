"""Nothing secret or personal in logs and echoes: SQL parameters hidden, URL passwords masked, numbers masked.

The whole run is also scanned (tests/conftest.py, LogScan): a test secret, a full phone number or a canary SMS body
in any log record fails the run with the offending lines."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from core.messaging.service import build_messaging_service
from core.models import ChatIdentity
from core.money import accounts, ledger
from core.money.accounts import Contact
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.phone import mask_number, mask_numbers
from core.platform.settings import SettingsError, load_settings, mask_url
from core.providers.plan import ProviderPlan
from core.providers.sms import InboundSms
from tests.conftest import PHONE_PATTERN, SMS_BODY_CANARIES, LogScan, make_settings

ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "hunter2-log-canary"
BODY = SMS_BODY_CANARIES[0]
PERSON = "+14155550123"


async def test_a_database_error_does_not_carry_its_parameters(db: Database) -> None:
    """A failed statement's message (what the router logs with its traceback) names no phone number or body."""
    first, second = await _user(db, "1"), await _user(db, "2")
    async with db.transaction() as session:
        session.add(ChatIdentity(user_id=first, platform="telegram", platform_user_id=PERSON))
    with pytest.raises(DBAPIError) as failed:
        async with db.transaction() as session:
            session.add(ChatIdentity(user_id=second, platform="telegram", platform_user_id=PERSON, username=BODY))
    message = str(failed.value)
    assert PERSON not in message and BODY not in message
    assert "hide_parameters=True" in message  # SQLAlchemy says the parameters were left out, and why


async def _user(db: Database, uid: str) -> int:
    async with db.transaction() as session:
        account = await accounts.get_or_create(session, Contact("discord", uid, chat_id=uid))
        return account.user.id


def test_a_bad_database_url_is_echoed_without_its_password() -> None:
    with pytest.raises(SettingsError) as bad:
        load_settings(_env_file=None, database_url=f"mysql://bob:{PASSWORD}@db.internal:3306/cumapp")
    assert bad.value.lines == [
        "DATABASE_URL='mysql://bob:***@db.internal:3306/cumapp': allowed: sqlite+aiosqlite:///path or "
        "postgresql+asyncpg://user@host/db"
    ]
    with pytest.raises(SettingsError) as other:
        load_settings(_env_file=None, public_base_url=f"ftp://ops:{PASSWORD}@files.example?token={PASSWORD}")
    assert PASSWORD not in "\n".join(other.value.lines) and "ops:***@files.example?token=***" in other.value.lines[0]


def test_cumapp_prints_a_bad_database_url_to_stderr_without_its_password(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM", "DISCORD", "TWILIO", "GROQ"))}
    env.update({"DATABASE_URL": f"postgresql+psycopg://bob:{PASSWORD}@db.internal/cumapp", "PYTHONPATH": str(ROOT)})
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "DATABASE_URL='postgresql+psycopg://bob:***@db.internal/cumapp'" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def test_urls_and_numbers_are_masked_for_logs() -> None:
    assert mask_url("postgresql+asyncpg://bob:p@ss/w:rd@db:5432/app") == "postgresql+asyncpg://bob:***@db:5432/app"
    assert mask_url("postgresql+asyncpg://bob@db/app") == "postgresql+asyncpg://bob@db/app"
    assert mask_url("postgresql+asyncpg://db/app?user=bob&password=x1") == "postgresql+asyncpg://db/app?user=bob&password=***"
    assert mask_url("sqlite+aiosqlite:///./cumapp.db") == "sqlite+aiosqlite:///./cumapp.db"
    assert mask_number("+13125550111") == "+1•••0111" and mask_number("+447700900100") == "+44•••0100"
    assert mask_numbers("unknown destination/+13125550111") == "unknown destination/+1•••0111"


async def test_numbers_and_bodies_stay_out_of_log_lines(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A number bought, an SMS sent, one received and one for a number nobody owns: the lines logged on the way
    name numbers masked (+1•••0123) and never hold the text."""
    caplog.set_level(logging.INFO)
    settings = make_settings(db.url)
    service = build_messaging_service(settings, db, None, ProviderPlan("sandbox", ("sandbox",), "sandbox"))
    try:
        async with db.transaction() as session:
            user = (await accounts.get_or_create(session, Contact("telegram", "7", chat_id="7"))).user
            await ledger.post(session, user.id, 5000, kind="topup", idempotency_key="seed:log-scan")
        found = await service.search_numbers("US", "212")
        quote = await service.quote_number(user.id, found[0].e164)
        own = await service.buy_number(user.id, found[0].e164, request_key=quote.token)
        await service.send_sms(user.id, PERSON, BODY, request_key="log-scan-1")
        await service.receive_inbound(InboundSms("sandbox", "SM-log-1", PERSON, own.e164, BODY, received_at=utcnow()),
                                      utcnow())
        await service.receive_inbound(
            InboundSms("sandbox", "SM-log-2", PERSON, "+13125550111", BODY, received_at=utcnow()), utcnow()
        )
    finally:
        await service.close()
    shown = [record for record in caplog.records if record.levelno >= logging.INFO]
    text = "\n".join(record.getMessage() for record in shown)
    assert "+1•••0111" in text and f"+1•••{own.e164[-4:]}" in text  # the lines are there, masked
    assert PHONE_PATTERN.findall(text) == [] and BODY not in text


def test_the_run_wide_log_scan_catches_secrets_numbers_and_bodies() -> None:
    scan = LogScan()

    def record(level: int, message: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("core.probe", level, __file__, 1, message, args, None)

    scan.handle(record(logging.INFO, "user %s bought %s for %s cents", 1, "+1•••0123", 130))
    scan.handle(record(logging.WARNING, "outbox: delivery %s to telegram:%s parked", 12, 880000000000000501))
    assert scan.leaks == []
    scan.handle(record(logging.DEBUG, "GET /bot%s/getMe", "123456:TEST-TOKEN"))
    scan.handle(record(logging.WARNING, "inbound to %s: no active number owns it", PERSON))
    scan.handle(record(logging.DEBUG, "relayed %r", BODY))
    scan.handle(record(logging.ERROR, "Groq refused key gsk_flows_test_key"))
    assert [leak.split(": ", 1)[1].split(" in ")[0] for leak in scan.leaks] == [
        "'123456:TEST-TOKEN'", f"'{PERSON}'", repr(BODY), "'gsk_flows_test_key'",
    ]
