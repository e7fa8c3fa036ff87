"""Shared fixtures: a fresh database per test on SQLite, and on PostgreSQL when TEST_DATABASE_URL is set."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from core.models import Base
from core.platform.db import Database
from core.platform.logging_setup import quiet_libraries
from core.platform.settings import Settings
from core.services import Services, build_services

LOCAL_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


async def _probe(url: str) -> None:
    connection = await asyncpg.connect(url.replace("+asyncpg", "", 1), timeout=3)
    await connection.close()


def _find_postgres() -> tuple[str | None, str]:
    """TEST_DATABASE_URL when set (empty turns PostgreSQL off), else a PostgreSQL answering on 127.0.0.1:5432."""
    if "TEST_DATABASE_URL" in os.environ:
        url = os.environ["TEST_DATABASE_URL"] or None
        return url, "TEST_DATABASE_URL" if url else "TEST_DATABASE_URL is set empty"
    try:
        asyncio.run(_probe(LOCAL_PG_URL))
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        return None, f"nothing usable answers on 127.0.0.1:5432 ({type(error).__name__}) and TEST_DATABASE_URL is unset"
    return LOCAL_PG_URL, "found on 127.0.0.1:5432; set TEST_DATABASE_URL to use another"


TEST_DATABASE_URL, PG_SOURCE = _find_postgres()
PG_MISSING = f"PostgreSQL tests skipped: {PG_SOURCE}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """One line at the top of every run, -q included: whether the PostgreSQL half of the suite runs, and why."""
    line = f"PostgreSQL tests run ({PG_SOURCE})" if TEST_DATABASE_URL else PG_MISSING
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"cumapp: {line}")
    LOG_SCAN.install()


# --- the log scan: what the suite logs holds no secret, no full phone number and no SMS body ------------------------

# The secrets tests and fakes use (tests/fakes/*_api.py defaults, the harness's webhook secret, the keys in tests).
TEST_SECRETS = (
    "123456:TEST-TOKEN", "MTEwMDAwMDAwMDAwMDAwMDAwMQ.fake.discord-test-token", "fake-twilio-auth-token",
    "twilio-test-token", "fake-vonage-secret", "fake-vonage-signature-secret", "vonage-signature-secret",
    "tv-test-key-0123456789", "whsec_dGVzdC13ZWJob29rLXNlY3JldA==", "s3cret-token", "hunter2-log-canary",
)
# Groq keys, Discord interaction tokens (tests/fakes/discord_api.py), TextVerified bearer tokens.
SECRET_PATTERN = re.compile(r"gsk_[A-Za-z0-9_]{6,}|aW50ZXJhY3Rpb24\.\d+\.token|eyJh[A-Za-z0-9_-]{20,}")
# Personal data: a full E.164 number (masked ones, +1•••0123, are what log lines show).
PHONE_PATTERN = re.compile(r"(?<![\w+])\+[1-9][0-9]{7,14}(?![0-9])")
# SMS bodies the tests send and receive (tests/core/platform/test_no_secrets_in_logs.py drives this one through the
# paths that log).
SMS_BODY_CANARIES = ("Canary body: meet me at the old mill",)


class LogScan(logging.Handler):
    """Sees every record of the run (root at INFO as in production, or lower where a test asks; libraries as
    `configure_logging` sets them) and keeps the ones holding a secret or personal data."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.leaks: list[str] = []

    def install(self) -> None:
        root = logging.getLogger()
        if self not in root.handlers:
            root.addHandler(self)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)  # production's default; lines below INFO are never created
        quiet_libraries("INFO")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record whose arguments do not format is a test's own problem, not a leak
            return
        found = [secret for secret in TEST_SECRETS if secret in text] + SECRET_PATTERN.findall(text)
        found += PHONE_PATTERN.findall(text) + [body for body in SMS_BODY_CANARIES if body in text]
        if found:
            where = os.environ.get("PYTEST_CURRENT_TEST", "outside a test").rsplit(" ", 1)[0]
            self.leaks.append(f"{where}: {', '.join(map(repr, found))} in {text.splitlines()[0][:300]}")


LOG_SCAN = LogScan()


# Tests whose assertions are rates or deadlines measured on the wall clock: the README's test command runs them after
# the parallel part, alone on the machine (`-m serial`), so that another worker's CPU load cannot fail them.
SERIAL_TESTS = (
    "tests/faults/",
    "tests/journeys/test_flood_budget.py",
    "tests/journeys/test_polling_leader.py",
    "tests/core/platform/test_pacing.py",
    "tests/core/platform/test_outbox.py",
    "tests/bot/test_discord_pacing.py",
    "tests/webhooks/test_slow_clients.py",
    "tests/fakes/test_telegram_api.py",
    "tests/core/ai/test_service.py",
    "tests/core/ai/test_assistant.py",
    "tests/core/verification/test_codes.py",
    "tests/core/broadcast/test_broadcast.py::test_a_broadcast_runs_at_the_platform_limit_with_no_429",
    "tests/core/broadcast/test_broadcast.py::test_429_and_500_for_a_while_still_reach_every_user_exactly_once",
    "tests/core/broadcast/test_broadcast.py::test_pause_and_cancel_take_effect_within_a_second",
    "tests/core/broadcast/test_broadcast.py::test_codes_and_relayed_sms_keep_flowing_during_a_broadcast",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SERIAL_TESTS):
            item.add_marker(pytest.mark.serial)


def pytest_runtest_setup(item: pytest.Item) -> None:
    LOG_SCAN.install()  # again: a test may have replaced the root handlers (configure_logging)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run, with the offending lines, when a log record held a test secret or personal data."""
    if not LOG_SCAN.leaks:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"cumapp log scan: {len(LOG_SCAN.leaks)} log record(s) hold a secret or personal data:"]
    lines += [f"  {leak}" for leak in LOG_SCAN.leaks[:50]]
    if reporter is not None:
        for line in lines:
            reporter.write_line(line, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _logs_hold_no_secret() -> Iterator[None]:
    """The log scan, per test: a leak fails the test that logged it (the session check above cannot fail a run from
    a pytest-xdist worker; it still catches what background tasks log after a test ended)."""
    before = len(LOG_SCAN.leaks)
    yield
    leaks = LOG_SCAN.leaks[before:]
    if leaks:
        pytest.fail("log records hold a secret or personal data:\n" + "\n".join(f"  {leak}" for leak in leaks[:20]))


# Settings must never come from a developer's .env or shell during tests.
for _name in list(os.environ):
    if _name.split("_", 1)[0] in {"TELEGRAM", "DISCORD", "TEXTVERIFIED", "TWILIO", "VONAGE", "GROQ", "SANDBOX"}:
        del os.environ[_name]


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database created for this test run and dropped at its end."""
    if not TEST_DATABASE_URL:
        pytest.skip(PG_MISSING)
    name = f"cumapp_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(TEST_DATABASE_URL, f'CREATE DATABASE "{name}"'))
    url = _with_database(TEST_DATABASE_URL, name)

    async def create_schema() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        await engine.dispose()

    asyncio.run(create_schema())
    yield url
    asyncio.run(_admin(TEST_DATABASE_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate_all(db: Database) -> None:
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    async with db.engine.begin() as connection:
        await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty schema: a new SQLite file, or the run's PostgreSQL database emptied."""
    if request.param == "sqlite":
        if marker := request.node.get_closest_marker("postgres_only"):
            pytest.skip(marker.args[0] if marker.args else "needs PostgreSQL row locks; SQLite serialises writers instead")
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    if database.is_sqlite:
        async with database.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
    else:
        await _truncate_all(database)
    yield database
    await database.dispose()


def make_settings(db_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"database_url": db_url, "sandbox": "true", "http_port": 0}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def services(db: Database) -> AsyncIterator[Services]:
    built = build_services(make_settings(db.url), db=db)
    yield built
