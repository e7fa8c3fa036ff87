"""SandboxSmsProvider: fictional numbers, simulated delivery reports and replies, and clean shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from core.providers.sandbox_sms import SandboxSmsProvider
from core.providers.sms import (
    InboundSms,
    InvalidRecipient,
    NotSmsCapable,
    RecipientOptedOut,
    SmsProvider,
    SmsProviderError,
    StatusUpdate,
)

FROM = "+14155550100"
TO = "+14155550177"
STATUS_URL = "https://cumapp.example/status"


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[StatusUpdate] = []
        self.inbound: list[InboundSms] = []
        self.changed = asyncio.Event()

    async def on_status(self, update: StatusUpdate) -> None:  # async callbacks are awaited
        self.statuses.append(update)
        self.changed.set()

    def on_inbound(self, sms: InboundSms) -> None:  # plain callbacks work too
        self.inbound.append(sms)
        self.changed.set()

    async def wait_for(self, condition: Callable[[], bool], seconds: float = 2.0) -> None:
        async with asyncio.timeout(seconds):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make(recorder: Recorder, **kwargs: float | int) -> SandboxSmsProvider:
    options: dict[str, float | int] = {"reply_delay_seconds": 0, "status_delay_seconds": 0, "seed": 7}
    options.update(kwargs)
    return SandboxSmsProvider(on_status=recorder.on_status, on_inbound=recorder.on_inbound, **options)  # type: ignore[arg-type]


@pytest.fixture
async def sandbox(recorder: Recorder) -> AsyncIterator[SandboxSmsProvider]:
    provider = make(recorder, success_rate=1.0, reply_probability=0.0)
    yield provider
    await provider.close()


def test_satisfies_protocol() -> None:
    assert isinstance(SandboxSmsProvider(), SmsProvider)


async def test_search_offers_only_fictional_numbers(sandbox: SandboxSmsProvider) -> None:
    found = await sandbox.search_numbers("US", area_code="312", limit=5)
    assert [n.e164 for n in found] == [f"+1312555{n:04d}" for n in range(100, 105)]
    assert all(n.locality == "Chicago" and n.provider == "sandbox" and n.monthly_cost_cents > 0 for n in found)
    assert [n.e164 for n in await sandbox.search_numbers("CA", contains="5550142", limit=10)][:1] == ["+14165550142"]
    assert (await sandbox.search_numbers("GB", limit=1))[0].e164.startswith("+447700900")
    assert await sandbox.search_numbers("FR") == []
    assert await sandbox.search_numbers("US", area_code="12") == []


async def test_buy_and_release(sandbox: SandboxSmsProvider) -> None:
    first = (await sandbox.search_numbers("US", limit=1))[0]
    bought = await sandbox.buy_number(first.e164, "https://x/sms", STATUS_URL)
    assert (bought.e164, bought.country) == (first.e164, "US")
    assert first.e164 not in [n.e164 for n in await sandbox.search_numbers("US", limit=500)]
    with pytest.raises(SmsProviderError):
        await sandbox.buy_number(first.e164, "https://x/sms", STATUS_URL)
    with pytest.raises(SmsProviderError):
        await sandbox.buy_number("+14155551234", "https://x/sms", STATUS_URL)  # a real-looking number
    await sandbox.release_number(bought.provider_sid)
    assert sandbox.owned_numbers == []


async def test_delivery_reports_sent_then_delivered(sandbox: SandboxSmsProvider, recorder: Recorder) -> None:
    result = await sandbox.send(FROM, TO, "Your code is 1234", STATUS_URL)
    assert result.status == "queued" and result.cost_cents == 1
    await recorder.wait_for(lambda: len(recorder.statuses) == 2)
    assert [(s.provider_message_id, s.status) for s in recorder.statuses] == [
        (result.provider_message_id, "sent"),
        (result.provider_message_id, "delivered"),
    ]
    await asyncio.sleep(0.01)
    assert recorder.inbound == []  # reply_probability=0 and no question


async def test_failures_follow_success_rate(recorder: Recorder) -> None:
    sandbox = make(recorder, success_rate=0.0)
    try:
        for i in range(4):
            await sandbox.send(FROM, TO, f"message {i}?", STATUS_URL)
        await recorder.wait_for(lambda: len(recorder.statuses) == 8)
    finally:
        await sandbox.close()
    finals = [s for s in recorder.statuses if s.status != "sent"]
    assert len(finals) == 4
    assert all(s.status in ("failed", "undelivered") and s.error_code for s in finals)
    assert recorder.inbound == []  # an undelivered question gets no answer


async def test_question_gets_a_reply(sandbox: SandboxSmsProvider, recorder: Recorder) -> None:
    result = await sandbox.send(FROM, TO, "Are we still on for tonight?", STATUS_URL)
    await recorder.wait_for(lambda: len(recorder.inbound) == 1)
    reply = recorder.inbound[0]
    assert (reply.from_e164, reply.to_e164, reply.provider) == (TO, FROM, "sandbox")
    assert reply.body and reply.provider_message_id != result.provider_message_id
    assert reply.received_at.tzinfo is not None


async def test_reply_probability(recorder: Recorder) -> None:
    sandbox = make(recorder, success_rate=1.0, reply_probability=1.0)
    try:
        await sandbox.send(FROM, TO, "hello", STATUS_URL)
        await recorder.wait_for(lambda: len(recorder.inbound) == 1)
    finally:
        await sandbox.close()
    assert recorder.inbound[0].body


async def test_same_seed_same_story() -> None:
    def bodies(seed: int) -> list[str]:
        provider = SandboxSmsProvider(seed=seed)
        return [provider.reply_for(text) for text in ("ok?", "hi there", "fine", "why?")]

    assert bodies(3) == bodies(3)


@pytest.mark.parametrize(
    ("to", "error"),
    [("+15005550001", InvalidRecipient), ("+15005550004", RecipientOptedOut), ("+15005550009", NotSmsCapable),
     ("not a number", InvalidRecipient), ("+1", InvalidRecipient)],
)
async def test_error_paths(sandbox: SandboxSmsProvider, to: str, error: type[SmsProviderError]) -> None:
    with pytest.raises(error):
        await sandbox.send(FROM, to, "hi", STATUS_URL)


async def test_close_cancels_pending_callbacks(recorder: Recorder) -> None:
    sandbox = make(recorder, status_delay_seconds=30)
    await sandbox.send(FROM, TO, "later?", STATUS_URL)
    await sandbox.close()
    assert recorder.statuses == []
    with pytest.raises(SmsProviderError):
        await sandbox.send(FROM, TO, "after close", STATUS_URL)


async def test_failing_callback_does_not_stop_the_simulation() -> None:
    seen: list[str] = []
    both = asyncio.Event()

    def explode(update: StatusUpdate) -> None:
        seen.append(update.status)
        if len(seen) == 2:
            both.set()
        raise RuntimeError("consumer bug")

    sandbox = SandboxSmsProvider(success_rate=1.0, on_status=explode, status_delay_seconds=0, seed=1)
    try:
        await sandbox.send(FROM, TO, "hi", STATUS_URL)
        async with asyncio.timeout(2):
            await both.wait()
    finally:
        await sandbox.close()
    assert seen == ["sent", "delivered"]


async def test_balance_is_unknown(sandbox: SandboxSmsProvider) -> None:
    assert await sandbox.balance_cents() is None
