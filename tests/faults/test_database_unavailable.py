"""The database unreachable, seen from a webhook, a chat command and the error classifier: 503 and "try again
shortly", a WARNING in the log, never a 500, an error id or a traceback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from bot.handlers import router
from core.messaging.gateway import TWILIO_SMS_PATH
from core.messaging.service import build_messaging_service
from core.models import User
from core.money.accounts import Contact
from core.platform import bulk
from core.platform.db import Database
from core.platform.db_faults import database_unavailable
from core.services import Services, build_services
from tests.conftest import TEST_DATABASE_URL, make_settings
from tests.fakes.twilio_api import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, build_inbound_webhook
from tests.faults.cluster import free_port
from webhooks import twilio as twilio_webhooks
from webhooks.server import WebServer, create_app


def _unreachable_url() -> str:
    """A PostgreSQL URL on a port where nothing listens: what a stopped server looks like to a client."""
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/cumapp"


@pytest.fixture
async def down() -> AsyncIterator[Services]:
    url = _unreachable_url()
    settings = make_settings(
        url, twilio_account_sid=DEFAULT_ACCOUNT_SID, twilio_auth_token=DEFAULT_AUTH_TOKEN,
        twilio_api_base_url="http://127.0.0.1:9", public_base_url="https://cumapp.test",
    )
    services = build_services(settings)
    services.messaging = build_messaging_service(settings, services.db, services.metrics, services.plan)
    yield services
    await services.messaging.close()
    await services.db.dispose()


# --- the classifier, on errors the drivers really raise ------------------------------------------------------------


async def test_a_refused_connection_counts_as_unavailable_a_bad_query_does_not(db: Database) -> None:
    unreachable = Database(_unreachable_url())
    try:
        with pytest.raises(Exception) as refused:
            async with unreachable.transaction() as session:
                await session.execute(text("SELECT 1"))
    finally:
        await unreachable.dispose()
    assert database_unavailable(refused.value)

    with pytest.raises(Exception) as bad_sql:
        async with db.transaction() as session:
            await session.execute(text("SELECT * FROM no_such_table"))
    assert not database_unavailable(bad_sql.value)
    with pytest.raises(IntegrityError) as duplicate:
        async with db.transaction() as session:
            session.add_all([User(id=7), User(id=7)])
    assert not database_unavailable(duplicate.value)
    assert not database_unavailable(ValueError("a defect of ours"))


@pytest.mark.postgres_only
async def test_a_pooled_connection_found_closed_as_its_transaction_begins_counts_as_unavailable(db: Database) -> None:
    # As after a PostgreSQL restart: the pool hands out a connection the server closed, and the first thing done
    # on it is beginning the transaction (bulk.driver_connection does that itself, past SQLAlchemy's wrapping).
    async with db.sessionmaker() as session:
        connection = await session.connection()
        raw = await connection.get_raw_connection()
        await raw.driver_connection.close()
        with pytest.raises(Exception) as closed:
            await bulk.driver_connection(session)
        await connection.invalidate()
    assert database_unavailable(closed.value), repr(closed.value)


@pytest.mark.postgres_only
async def test_a_connection_killed_mid_transaction_counts_as_unavailable(db: Database) -> None:
    with pytest.raises(Exception) as killed:
        async with db.transaction() as session:
            pid = await session.scalar(text("SELECT pg_backend_pid()"))
            assert TEST_DATABASE_URL
            other = Database(db.url)
            try:
                async with other.engine.begin() as connection:
                    await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            finally:
                await other.dispose()
            await session.execute(text("SELECT 1"))
    assert database_unavailable(killed.value)


# --- a provider's webhook ----------------------------------------------------------------------------------------


async def test_a_webhook_gets_503_and_a_warning_while_the_database_is_down(
    down: Services, caplog: pytest.LogCaptureFixture
) -> None:
    server = WebServer(create_app(down, [twilio_webhooks.add_routes]), "127.0.0.1", 0)
    await server.start()
    try:
        hook = build_inbound_webhook(
            DEFAULT_AUTH_TOKEN, f"https://cumapp.test{TWILIO_SMS_PATH}", from_="+14155550100", to="+14155550101",
            body="hello",
        )
        with caplog.at_level(logging.WARNING):
            async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{server.port}{TWILIO_SMS_PATH}", data=hook.params, headers=hook.headers
            ) as response:
                status, retry_after = response.status, response.headers.get("Retry-After")
    finally:
        await server.stop()
    assert (status, retry_after) == (503, "5")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    warned = [r for r in caplog.records if "answered 503" in r.getMessage()]
    assert len(warned) == 1 and warned[0].exc_info is None


# --- a chat user --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("language", "expected"), [("en", "Temporarily unavailable"), ("es", "No disponible")])
async def test_a_command_or_a_button_says_temporarily_unavailable(
    down: Services, caplog: pytest.LogCaptureFixture, language: str, expected: str
) -> None:
    import bot.handlers.account  # noqa: F401  (registers /balance)

    contact = Contact("telegram", "5001", chat_id="5001", language_code=language)
    with caplog.at_level(logging.WARNING):
        (answer,) = await router.handle_command(down, contact, "balance")
        (pressed,) = await router.handle_action(down, contact, "cmd:balance")
        (typed,) = await router.handle_text(down, contact, "hello")
    assert expected in answer.text and "Error id" not in answer.text and "Id del error" not in answer.text
    assert pressed.toast is not None and expected in pressed.toast
    assert expected in typed.text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert all(r.exc_info is None for r in caplog.records)
