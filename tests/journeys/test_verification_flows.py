"""Verification journeys through the router and the terminal chat: service, price, Confirm, status, code, Cancel."""

from __future__ import annotations

import asyncio
import html
import io
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import func, select

import bot.handlers.verify  # noqa: F401  (registers the flows; the registry lists it once wired)
from bot.console import ConsoleFrontEnd, to_plain
from bot.handlers import router
from bot.handlers.registry import load_flows
from bot.handlers.screens import Button, Screen, SentRef
from core.models import Hold, User, Verification
from core.money.accounts import Contact
from core.platform.db import Database
from core.platform.outbox import OutboxDispatcher
from core.services import Services, build_services
from core.verification.service import build_verification_service
from tests.conftest import make_settings
from tests.fakes.chat_sender import RecordingSender

ANN = Contact("telegram", "1001", chat_id="1001", username="ann", display_name="Ann", language_code="en")
BOB = Contact("telegram", "2002", chat_id="2002", username="bob", display_name="Bob", language_code="en")
STATUS_REF = SentRef("telegram", "1001", "500")


async def make_services(db: Database, code_delay: float) -> Services:
    settings = make_settings(db.url, sandbox_code_delay_seconds=code_delay)
    services = build_services(settings, db=db)
    services.verification = build_verification_service(settings, db, services.metrics, services.plan)
    return services


@pytest.fixture
async def services(db: Database) -> AsyncIterator[Services]:
    """The sandbox with its code far away, so a test decides what happens first."""
    load_flows()
    built = await make_services(db, code_delay=60.0)
    yield built
    await built.verification.close()


@pytest.fixture
async def fast(db: Database) -> AsyncIterator[Services]:
    """The sandbox with its simulated code 50 ms after the purchase."""
    load_flows()
    built = await make_services(db, code_delay=0.05)
    yield built
    await built.verification.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


def plain(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def button(screen: Screen, label: str) -> Button:
    for row in screen.buttons:
        for candidate in row:
            if candidate.label == label or plain(candidate.label).endswith(label):
                return candidate
    raise AssertionError(f"no button {label!r} in {[[b.label for b in row] for row in screen.buttons]}")


async def press(services: Services, contact: Contact, target: Button | str, ref: SentRef = STATUS_REF) -> Screen:
    data = target if isinstance(target, str) else target.action
    assert data is not None
    [screen] = await router.handle_action(services, contact, data, ref)
    return screen


async def user_of(services: Services, contact: Contact) -> User:
    async with services.db.read() as session:
        user = await session.scalar(select(User).where(User.display_name == contact.display_name))
        assert user is not None
        return user


async def verification_count(services: Services) -> int:
    async with services.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(Verification)) or 0)


async def to_price(services: Services, contact: Contact = ANN) -> Screen:
    [menu] = await router.handle_command(services, contact, "verify")
    return await press(services, contact, button(menu, "WhatsApp"))


async def to_status(services: Services, contact: Contact = ANN) -> Screen:
    status = await press(services, contact, button(await to_price(services, contact), "Confirm"))
    assert status.edit and status.on_sent is not None
    await status.on_sent(STATUS_REF)  # what the adapter does once the edited message is on screen
    return status


async def test_verify_journey_from_popular_buttons_to_the_code_and_the_balance(fast: Services) -> None:
    [menu] = await router.handle_command(fast, ANN, "verify")
    labels = [b.label for row in menu.buttons for b in row]
    assert labels[:3] == ["WhatsApp", "Google / Gmail / YouTube", "Telegram"]
    assert "🔎 Search" in labels and "📚 All services" in labels and "🗂 My verifications" in labels

    price = await press(fast, ANN, button(menu, "WhatsApp"))
    assert "WhatsApp — $1.50, includes your tier's markup" in plain(price.text)
    assert [[b.label for b in row] for row in price.buttons] == [["Confirm", "Cancel"]]

    status = await to_status_from(fast, price)
    number = button(status, "Copy number").copy_text
    assert number and number in status.text
    assert {"Cancel", "⚠️ Report", "🔁 Another number"} <= {b.label for row in status.buttons for b in row}

    user = await user_of(fast, ANN)

    async def code_arrived() -> bool:
        return (await fast.verification.history(user.id, 0, 1))[0][0].state == "code_received"

    await eventually(code_arrived)
    sender = RecordingSender("telegram")
    dispatcher = OutboxDispatcher(fast.db, {"telegram": sender})
    while await dispatcher.run_once():
        pass
    code_message, status_edit = sender.sent
    code = code_message.message.buttons[0][0].copy_text
    assert code and f"<code>{code}</code>" in code_message.message.text
    assert code_message.message.edit_message_id is None  # a new message, so the phone notifies
    assert status_edit.message.edit_message_id == STATUS_REF.message_id and code in status_edit.message.text

    [shown] = await router.handle_command(fast, ANN, "balance")
    assert "Available: $3.50" in plain(shown.text) and "Held: $0.00" in plain(shown.text)


async def to_status_from(services: Services, price: Screen) -> Screen:
    status = await press(services, ANN, button(price, "Confirm"))
    assert status.on_sent is not None
    await status.on_sent(STATUS_REF)
    return status


async def test_verify_with_a_service_goes_straight_to_the_price(services: Services) -> None:
    [price] = await router.handle_command(services, ANN, "verify", "whatsapp")
    assert "WhatsApp — $1.50" in plain(price.text)
    assert [[b.label for b in row] for row in price.buttons] == [["Confirm", "Cancel"]]
    [several] = await router.handle_command(services, ANN, "verify", "t")
    assert "Telegram" in [b.label for row in several.buttons for b in row]
    [none] = await router.handle_command(services, ANN, "verify", "zzzz")
    assert "No service matches" in plain(none.text)


async def test_search_prompt_and_catalogue(services: Services) -> None:
    prompt = await press(services, ANN, "vfq")
    assert prompt.prompt
    [price] = await router.handle_text(services, ANN, "telegr")
    assert "Telegram — $1.82" in plain(price.text)
    first = await press(services, ANN, "vfa:0")
    assert "page 1 of 3" in plain(first.text) and button(first, "Next ➡️")
    backed_out = await press(services, ANN, button(price, "Cancel"))
    assert backed_out.edit and "Nothing was charged" in plain(backed_out.text)
    assert await verification_count(services) == 0


async def test_cancel_refunds_and_a_stale_cancel_changes_nothing(services: Services) -> None:
    status = await to_status(services)
    user = await user_of(services, ANN)
    assert (user.balance_cents, user.held_cents) == (500, 150)
    cancelled = await press(services, ANN, button(status, "Cancel"))
    assert cancelled.edit and cancelled.toast and "$1.50 is back" in cancelled.toast
    assert "cancelled" in plain(cancelled.text)
    user = await user_of(services, ANN)
    assert (user.balance_cents, user.held_cents) == (500, 0)

    stale = await press(services, ANN, button(status, "Cancel"))
    assert stale.text == "" and stale.toast == "Already cancelled."
    assert (await user_of(services, ANN)).balance_cents == 500
    async with services.db.read() as session:
        holds = (await session.scalars(select(Hold))).all()
    assert [hold.state for hold in holds] == ["released"]


async def test_another_users_verification_id_is_refused(services: Services) -> None:
    status = await to_status(services)
    refused = await press(services, BOB, button(status, "Cancel"), SentRef("telegram", "2002", "9"))
    assert refused.text == "" and refused.toast == "This button belongs to someone else."
    user = await user_of(services, ANN)
    async with services.db.read() as session:
        [verification] = (await session.scalars(select(Verification))).all()
    assert verification.state == "active" and user.held_cents == 150


async def test_a_double_confirm_buys_once(services: Services) -> None:
    price = await to_price(services)
    confirm = button(price, "Confirm")
    first, second = await asyncio.gather(press(services, ANN, confirm), press(services, ANN, confirm))
    assert await verification_count(services) == 1
    # One press buys; the other finds the offer used and only says so (the message is left to the first).
    bought, refused = sorted((first, second), key=lambda screen: screen.text == "")
    assert "Waiting for the SMS" in plain(bought.text)
    assert refused.text == "" and refused.toast == "This offer is no longer valid."
    assert (await user_of(services, ANN)).held_cents == 150


async def test_an_unavailable_service_ends_the_offer_with_a_clear_message(services: Services) -> None:
    services.verification.provider.unavailable_services.add("whatsapp")
    price = await to_price(services)
    failed = await press(services, ANN, button(price, "Confirm"))
    assert failed.edit and "No numbers are available for this service right now" in plain(failed.text)
    user = await user_of(services, ANN)
    assert (user.balance_cents, user.held_cents) == (500, 0)


async def test_history_lists_verifications_and_opens_an_open_one(services: Services) -> None:
    await to_status(services)
    [menu] = await router.handle_command(services, ANN, "verify")
    listed = await press(services, ANN, button(menu, "My verifications"))
    assert "WhatsApp" in plain(listed.text) and "waiting for the SMS" in plain(listed.text)
    opened = await press(services, ANN, listed.buttons[0][0])
    assert "Waiting for the SMS" in plain(opened.text) and opened.toast == "Up to date."


async def test_spanish_user_sees_spanish_texts(services: Services) -> None:
    juan = Contact("telegram", "3003", chat_id="3003", display_name="Juan", language_code="es")
    [price] = await router.handle_command(services, juan, "verify", "whatsapp")
    assert "incluye el recargo de tu plan" in plain(price.text)
    assert [[b.label for b in row] for row in price.buttons] == [["Confirmar", "Cancelar"]]


async def test_terminal_chat_journey(fast: Services) -> None:
    out = io.StringIO()
    console = ConsoleFrontEnd(fast, out=out, lines=asyncio.Queue())
    dispatcher = OutboxDispatcher(fast.db, {"console": console.sender})

    def choice(label: str) -> str:
        for number, candidate in console.chat.choices.items():
            if candidate.label.endswith(label):
                return str(number)
        raise AssertionError(f"no choice {label!r} in {out.getvalue()}")

    await console.handle_line("/verify")
    assert "[1] WhatsApp" in out.getvalue()
    await console.handle_line(choice("WhatsApp"))
    assert "WhatsApp — $1.50, includes your tier's markup" in out.getvalue()
    await console.handle_line(choice("Confirm"))
    assert "Waiting for the SMS" in out.getvalue()
    async def sent_something() -> bool:
        return await dispatcher.run_once() > 0

    await eventually(sent_something)
    while await dispatcher.run_once():
        pass
    shown = to_plain(out.getvalue())
    assert re.search(r"WhatsApp code: `\d{6}`", shown), shown
    assert "Copy code →" in shown
    await console.handle_line("/balance")
    assert "Available: $3.50" in out.getvalue()
