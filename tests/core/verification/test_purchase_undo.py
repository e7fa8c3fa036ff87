"""A failure after the provider call (a verification or a number bought, then not recorded) gives the rental back at
the provider and releases the hold, each exactly once, and the user gets a short answer, never a traceback.

The failures are real database errors: a unique-constraint clash (the id a restarted sandbox used to hand out again)
and a trigger that makes the database refuse the write, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import func, select, text

import bot.handlers.verify  # noqa: F401  (registers the flows)
from bot.handlers import router
from bot.handlers.registry import load_flows
from bot.handlers.screens import SentRef
from core.messaging.errors import MessagingError
from core.messaging.service import build_messaging_service
from core.models import Hold, LedgerEntry, PhoneNumber, User, Verification
from core.money.accounts import Contact
from core.platform.clock import utcnow
from core.platform.db import Database
from core.providers.plan import ProviderPlan
from core.providers.sandbox_sms import SandboxSmsProvider
from core.services import Services, build_services
from core.verification.service import build_verification_service
from tests.conftest import make_settings
from tests.fakes.textverified_api import FakeTextVerifiedServer

ANN = Contact("telegram", "1001", chat_id="1001", username="ann", display_name="Ann", language_code="en")
REF = SentRef("telegram", "1001", "500")
TEXTVERIFIED_PLAN = ProviderPlan(verification="textverified", sms=("sandbox",), ai="sandbox")
SANDBOX_PLAN = ProviderPlan(verification="sandbox", sms=("sandbox",), ai="sandbox")


@asynccontextmanager
async def refused(db: Database, table: str, when: str, event: str = "UPDATE") -> AsyncIterator[None]:
    """The database itself refuses `event` on `table` where `when` holds on the new row (a trigger)."""
    async with db.engine.begin() as connection:
        if db.is_sqlite:
            await connection.execute(text(
                f"CREATE TRIGGER refuse BEFORE {event} ON {table} WHEN {when} "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"
            ))
        else:
            await connection.execute(text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused by the test trigger'; END $$"
            ))
            await connection.execute(text(
                f"CREATE TRIGGER refuse BEFORE {event} ON {table} FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION refuse()"
            ))
    try:
        yield
    finally:
        async with db.engine.begin() as connection:
            await connection.execute(text("DROP TRIGGER IF EXISTS refuse" + ("" if db.is_sqlite else f" ON {table}")))
            if not db.is_sqlite:
                await connection.execute(text("DROP FUNCTION IF EXISTS refuse()"))


@pytest.fixture
async def tv(db: Database) -> AsyncIterator[tuple[Services, FakeTextVerifiedServer]]:
    load_flows()
    async with FakeTextVerifiedServer() as fake:
        settings = make_settings(
            db.url, sandbox="auto", textverified_api_key=fake.api_key, textverified_api_username=fake.username,
            textverified_base_url=fake.url, signup_bonus_cents=500,
        )
        services = build_services(settings, db=db)
        services.verification = build_verification_service(settings, db, services.metrics, TEXTVERIFIED_PLAN)
        try:
            yield services, fake
        finally:
            await services.verification.close()


async def _confirm(services: Services) -> str:
    """/verify whatsapp, then Confirm: the chat's answer to Confirm as one text."""
    (price,) = await router.handle_command(services, ANN, "verify", "whatsapp")
    confirm = price.buttons[0][0]
    assert confirm.action is not None and confirm.action.startswith("vfok:")
    answers = await router.handle_action(services, ANN, confirm.action, REF)
    return "\n".join(f"{s.text} {s.toast or ''}" for s in answers)


async def _money_and_rows(db: Database) -> tuple[int, int, list[str], int]:
    async with db.read() as session:
        user = await session.scalar(select(User).order_by(User.id).limit(1))  # Ann, the first account
        assert user is not None
        states = list((await session.scalars(select(Hold.state).where(Hold.user_id == user.id))).all())
        releases = await session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "release")
        )
        return user.available_cents, user.held_cents, states, int(releases or 0)


@pytest.mark.parametrize("fault", ["unique id clash", "database refuses the write"])
async def test_a_verification_bought_but_not_recorded_is_cancelled_and_released_once(
    tv: tuple[Services, FakeTextVerifiedServer], db: Database, fault: str
) -> None:
    services, fake = tv
    await router.handle_command(services, ANN, "start")
    if fault == "unique id clash":
        # The first id the fake hands out is already on record, as the seeded sandbox's ids were after a restart.
        async with db.transaction() as session:
            other = User(locale="en", created_at=utcnow())
            session.add(other)
            await session.flush()
            session.add(Verification(
                user_id=other.id, provider="textverified", service="google", service_name="Google", state="completed",
                price_cents=95, provider_cost_cents=95, provider_verification_id="lr_000000000001",
                idempotency_key="earlier-run", created_at=utcnow(), updated_at=utcnow(),
            ))
        answer = await _confirm(services)
    else:
        async with refused(db, "verifications", "NEW.state = 'active'"):
            answer = await _confirm(services)

    assert "try again" in answer and "Traceback" not in answer and len(answer) < 300, answer
    available, held, holds, releases = await _money_and_rows(db)
    assert (available, held, holds, releases) == (500, 0, ["released"], 1)
    (cancelled,) = fake.requests_to("/cancel", "POST")
    assert cancelled.path.endswith("lr_000000000001/cancel")
    assert fake.verifications["lr_000000000001"].state == "verificationCanceled"
    async with db.read() as session:
        mine = await session.scalar(select(Verification).where(Verification.idempotency_key != "earlier-run"))
        assert mine is not None and mine.state == "failed"

    # Nothing stays blocked: the next purchase goes through.
    answer = await _confirm(services)
    assert "WhatsApp" in answer and "try again" not in answer, answer


async def test_a_number_bought_but_not_recorded_is_given_back_and_released_once(db: Database) -> None:
    settings = make_settings(db.url, signup_bonus_cents=500)
    services = build_services(settings, db=db)
    messaging = build_messaging_service(settings, db, services.metrics, SANDBOX_PLAN)
    sandbox = messaging.providers["sandbox"]
    assert isinstance(sandbox, SandboxSmsProvider)
    try:
        await router.handle_command(services, ANN, "start")
        async with db.read() as session:
            user = await session.scalar(select(User))
            assert user is not None
        (offer, *_) = await messaging.search_numbers("US")
        async with refused(db, "phone_numbers", "NEW.state = 'active'", event="INSERT"):
            with pytest.raises(MessagingError) as refusal:
                await messaging.buy_number(user.id, offer.e164, "quote-1")
        assert refusal.value.key == "num_buy_failed"
        assert sandbox.owned_numbers == []  # given back at the provider
        available, held, holds, releases = await _money_and_rows(db)
        assert (available, held, holds, releases) == (500, 0, ["released"], 1)
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(PhoneNumber)) == 0
    finally:
        await messaging.close()
