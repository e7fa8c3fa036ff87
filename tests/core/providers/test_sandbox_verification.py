"""SandboxVerificationProvider: fictional numbers, delayed codes, webhook-like events, timeouts, close."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from core.providers.sandbox_verification import SANDBOX_SERVICES, SandboxVerificationProvider
from core.providers.verification import (
    InsufficientBalance,
    NotAllowed,
    NotFound,
    PriceChanged,
    ProviderError,
    Unavailable,
    VerificationProvider,
    WebhookEvent,
)
from tests.fakes.textverified_api import FakeTextVerifiedServer

FICTIONAL_US_NUMBER = re.compile(r"^\+1\d{3}55501\d{2}$")


class Events:
    def __init__(self) -> None:
        self.received: list[WebhookEvent] = []
        self.arrived = asyncio.Event()

    async def __call__(self, event: WebhookEvent) -> None:
        self.received.append(event)
        self.arrived.set()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def sandbox(events: Events) -> AsyncIterator[SandboxVerificationProvider]:
    provider = SandboxVerificationProvider(code_delay_seconds=0.05, on_event=events, seed=1)
    yield provider
    await provider.close()


def provider_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("sandbox-verification-")]


async def test_services_and_prices(sandbox: SandboxVerificationProvider) -> None:
    services = await sandbox.list_services()
    assert len(services) == len(SANDBOX_SERVICES) == 20
    assert {"whatsapp", "google", "telegram", "signal", "twitter"} <= {s.code for s in services}
    quote = await sandbox.price("whatsapp")
    assert quote.service == "whatsapp" and quote.cost_cents > 0
    with pytest.raises(ProviderError):
        await sandbox.price("myspace")


async def test_create_gives_a_fictional_active_number(sandbox: SandboxVerificationProvider) -> None:
    before = datetime.now(UTC)
    verification = await sandbox.create("google", "order-1")
    assert FICTIONAL_US_NUMBER.match(verification.number)
    assert verification.state == "active"
    assert verification.can_cancel and verification.can_report
    assert verification.ends_at is not None
    assert (
        before + timedelta(seconds=899) < verification.ends_at <= datetime.now(UTC) + timedelta(seconds=900)
    )
    assert (await sandbox.create("google", "order-1")).id == verification.id


async def test_code_arrives_after_the_delay(sandbox: SandboxVerificationProvider, events: Events) -> None:
    verification = await sandbox.create("whatsapp", "order-2")
    assert await sandbox.sms(verification.id) == []
    await asyncio.wait_for(events.arrived.wait(), 1)
    (message,) = await sandbox.sms(verification.id)
    assert message.parsed_code is not None and re.fullmatch(r"\d{6}", message.parsed_code)
    assert message.parsed_code[:3] in message.text and "WhatsApp" in message.text
    (event,) = events.received
    assert (event.kind, event.verification_id, event.sms) == ("sms_received", verification.id, message)
    details = await sandbox.details(verification.id)
    assert (details.state, details.can_cancel, details.can_reuse) == ("completed", False, True)


async def test_unavailable_service(events: Events) -> None:
    provider = SandboxVerificationProvider(unavailable_services={"tinder"}, on_event=events)
    with pytest.raises(Unavailable):
        await provider.create("tinder", "order-3")
    await provider.close()


async def test_timeout_service_never_delivers_and_times_out(events: Events) -> None:
    provider = SandboxVerificationProvider(
        code_delay_seconds=0.01,
        ttl_seconds=0.1,
        timeout_services={"google"},
        on_event=events,
        balance_cents=1000,
    )
    verification = await provider.create("google", "order-4")
    await asyncio.wait_for(events.arrived.wait(), 1)
    details = await provider.details(verification.id)
    assert details.state == "timed_out"
    assert await provider.sms(verification.id) == []
    (event,) = events.received
    assert (event.kind, event.verification_id, event.sms) == ("verification_changed", verification.id, None)
    assert await provider.balance_cents() == 1000
    await provider.close()


async def test_cancel_before_the_code_stops_delivery(
    sandbox: SandboxVerificationProvider, events: Events
) -> None:
    verification = await sandbox.create("telegram", "order-5")
    assert (await sandbox.cancel(verification.id)).state == "cancelled"
    await asyncio.sleep(0.1)
    assert await sandbox.sms(verification.id) == []
    assert events.received == []
    with pytest.raises(NotAllowed):
        await sandbox.cancel(verification.id)


async def test_report_reuse_and_reactivate(sandbox: SandboxVerificationProvider, events: Events) -> None:
    verification = await sandbox.create("discord", "order-6")
    await asyncio.wait_for(events.arrived.wait(), 1)
    with pytest.raises(NotAllowed):
        await sandbox.reactivate(verification.id)
    reused = await sandbox.reuse(verification.id)
    assert reused.id != verification.id and reused.number == verification.number and reused.state == "active"
    with pytest.raises(NotAllowed):
        await sandbox.reuse(verification.id)
    assert (await sandbox.report(reused.id)).state == "reported"
    with pytest.raises(NotFound):
        await sandbox.details("sbx_ver_missing")


async def test_balance_is_charged_and_refunded() -> None:
    provider = SandboxVerificationProvider(code_delay_seconds=5, balance_cents=150)
    assert await provider.balance_cents() == 150
    verification = await provider.create("whatsapp", "order-7")
    assert await provider.balance_cents() == 150 - verification.cost_cents
    with pytest.raises(InsufficientBalance):
        await provider.create("whatsapp", "order-8")
    await provider.cancel(verification.id)
    assert await provider.balance_cents() == 150
    with pytest.raises(PriceChanged):
        await provider.create("whatsapp", "order-9", max_cost_cents=1)
    await provider.close()


async def test_same_seed_same_numbers_and_codes_but_never_the_same_ids() -> None:
    async def run(seed: int) -> tuple[list[str | None], set[str]]:
        events = Events()
        provider = SandboxVerificationProvider(code_delay_seconds=0.01, on_event=events, seed=seed)
        verification = await provider.create("google", "order-10")
        await asyncio.wait_for(events.arrived.wait(), 1)
        (message,) = await provider.sms(verification.id)
        await provider.close()
        return [verification.number, message.parsed_code], {verification.id, message.id, events.received[0].event_key}

    (first, first_ids), (again, again_ids), (other, _) = await run(7), await run(7), await run(8)
    assert first == again and first != other
    # A restarted process (same seed) must not hand out ids the database already holds from the last run.
    assert not first_ids & again_ids


async def test_a_failing_callback_does_not_break_delivery() -> None:
    async def broken(event: WebhookEvent) -> None:
        raise RuntimeError("consumer bug")

    provider = SandboxVerificationProvider(code_delay_seconds=0.01, on_event=broken)
    verification = await provider.create("apple", "order-11")
    await asyncio.sleep(0.1)
    assert len(await provider.sms(verification.id)) == 1
    await provider.close()


async def test_close_leaves_no_pending_tasks(events: Events) -> None:
    provider = SandboxVerificationProvider(code_delay_seconds=30, on_event=events)
    for n in range(5):
        await provider.create("signal", f"order-{n}")
    assert len(provider_tasks()) == 5
    await provider.close()
    assert provider_tasks() == []
    with pytest.raises(ProviderError):
        await provider.create("signal", "order-late")
    await provider.close()


async def test_parses_textverified_shaped_webhooks(sandbox: SandboxVerificationProvider) -> None:
    body = FakeTextVerifiedServer().webhook_payload(
        "sbx_ver_1", "G-123456 is your Google verification code.", "123456"
    )
    event = sandbox.parse_webhook(body)
    assert (event.kind, event.verification_id) == ("sms_received", "sbx_ver_1")


def test_sandbox_satisfies_the_protocol() -> None:
    assert isinstance(SandboxVerificationProvider(), VerificationProvider)
