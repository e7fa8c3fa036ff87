"""/cancel during a live verification cancels it with its refund (or, with several, offers each one's Cancel), rather
than "There is nothing to cancel"."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.handlers import router
from bot.handlers.registry import load_flows
from bot.handlers.screens import Screen
from core.money.accounts import Contact
from core.platform.db import Database
from core.services import Services, build_services
from core.verification.service import build_verification_service
from tests.conftest import make_settings

ANN = Contact("telegram", "1001", chat_id="1001", display_name="Ann", language_code="en")


def actions(screen: Screen) -> dict[str, str]:
    return {b.label: b.action or "" for row in screen.buttons for b in row}


@pytest.fixture
async def services(db: Database) -> AsyncIterator[Services]:
    load_flows()
    settings = make_settings(db.url, signup_bonus_cents=500, sandbox_code_delay_seconds=60)
    built = build_services(settings, db=db)
    built.verification = build_verification_service(settings, db, built.metrics, built.plan)
    yield built
    await built.verification.close()


async def _buy(services: Services, service: str) -> None:
    [price] = await router.handle_command(services, ANN, "verify", service)
    await router.handle_action(services, ANN, actions(price)["Confirm"])


async def _available(services: Services) -> str:
    [balance] = await router.handle_command(services, ANN, "balance")
    return balance.text.split("Available: ", 1)[1].split("\n", 1)[0]


async def test_cancel_during_a_live_verification(services: Services) -> None:
    [nothing] = await router.handle_command(services, ANN, "cancel")
    assert "nothing to cancel" in nothing.text

    await _buy(services, "whatsapp")
    assert "$3.50" in await _available(services)
    [cancelled] = await router.handle_command(services, ANN, "cancel")
    assert "cancelled" in cancelled.text and "$1.50 is back in your balance" in cancelled.text
    assert "$5.00" in await _available(services)

    # Two live ones: which? Each has its Cancel button, and that button cancels (with the refund) once.
    await _buy(services, "whatsapp")
    await _buy(services, "google")
    [which] = await router.handle_command(services, ANN, "cancel")
    assert "Which verification" in which.text and len(which.buttons) == 2
    google = next(action for label, action in actions(which).items() if "Google" in label)
    await router.handle_action(services, ANN, google)
    [again] = await router.handle_command(services, ANN, "cancel")
    assert "WhatsApp" in again.text and "is back in your balance" in again.text
    assert "$5.00" in await _available(services)
