"""VerificationService on SQLite and PostgreSQL, with the sandbox twin and with TextVerifiedProvider against its fake."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from core.models import Hold, LedgerEntry, OutboxDelivery, User, Verification, VerificationSms
from core.money import accounts, ledger
from core.money.accounts import Contact
from core.money.limits import LimitReached
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.metrics import Metrics
from core.platform.outbox import OutboxDispatcher, OutgoingMessage
from core.platform.settings import Settings
from core.providers.plan import ProviderPlan
from core.providers.sandbox_verification import SandboxVerificationProvider
from core.providers.verification import InsufficientBalance, ProviderSms, Unavailable
from core.providers.verification import WebhookEvent as ProviderEvent
from core.verification.cards import status_message
from core.verification.catalogue import price_with_markup
from core.verification.errors import WrongState
from core.verification.relay import EventOutcome
from core.verification.service import VerificationService, build_verification_service
from tests.conftest import make_settings
from tests.fakes.chat_sender import RecordingSender
from tests.fakes.textverified_api import FakeTextVerifiedServer

ANN = Contact("telegram", "1001", chat_id="1001", username="ann", display_name="Ann")
ADMIN = Contact("telegram", "999", chat_id="999", username="boss", display_name="Boss")
SANDBOX_PLAN = ProviderPlan(verification="sandbox", sms=("sandbox",), ai="sandbox")
TEXTVERIFIED_PLAN = ProviderPlan(verification="textverified", sms=("sandbox",), ai="sandbox")
_keys = itertools.count(1)


class Harness:
    """One provider kind on one database; `service()` builds a fresh service (a restarted process) on both."""

    def __init__(self, db: Database, kind: str, settings: Settings, fake: FakeTextVerifiedServer | None) -> None:
        self.db = db
        self.kind = kind
        self.settings = settings
        self.fake = fake
        self.metrics = Metrics()
        self.services: list[VerificationService] = []
        self.main = self.service()

    def service(self) -> VerificationService:
        plan = TEXTVERIFIED_PLAN if self.kind == "textverified" else SANDBOX_PLAN
        built = build_verification_service(self.settings, self.db, self.metrics, plan)
        self.services.append(built)
        return built

    @property
    def sandbox(self) -> SandboxVerificationProvider:
        assert isinstance(self.main.provider, SandboxVerificationProvider)
        return self.main.provider

    async def close(self) -> None:
        for service in self.services:
            await service.close()

    async def user(self, contact: Contact = ANN, bonus: int = 500) -> User:
        async with self.db.transaction() as session:
            return (await accounts.get_or_create(session, contact, signup_bonus_cents=bonus)).user

    async def start(self, user: User, service: str = "whatsapp", key: str | None = None) -> Verification:
        return await self.main.start(user.id, service, key or f"k{next(_keys)}")

    def sms(self, verification: Verification, text: str, *, event_key: str | None = None) -> ProviderEvent:
        """The webhook TextVerified sends for `text` (the fake's number also gets the SMS, as polling would see)."""
        pid = verification.provider_verification_id
        assert pid is not None
        sms_id = f"evt_{next(_keys)}"
        if self.fake is not None:
            self.fake.deliver_sms(pid, text)
        return ProviderEvent(
            event_key=event_key or f"whk_{sms_id}", kind="sms_received", verification_id=pid,
            sms=ProviderSms(id=sms_id, verification_id=pid, text=text, parsed_code=None, received_at=utcnow()),
        )


def settings_for(db: Database, fake: FakeTextVerifiedServer | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"sandbox_code_delay_seconds": 60.0, "verification_poll_seconds": 1}
    if fake is not None:
        values.update(
            sandbox="auto", textverified_api_key=fake.api_key, textverified_api_username=fake.username,
            textverified_base_url=fake.url,
        )
    values.update(overrides)
    return make_settings(db.url, **values)


@pytest.fixture(params=["sandbox", "textverified"])
async def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTextVerifiedServer]:
    async with FakeTextVerifiedServer() as server:
        yield server


@pytest.fixture
async def h(db: Database, kind: str, fake: FakeTextVerifiedServer) -> AsyncIterator[Harness]:
    harness = Harness(db, kind, settings_for(db, fake if kind == "textverified" else None),
                      fake if kind == "textverified" else None)
    yield harness
    await harness.close()


async def balance(db: Database, user: User) -> ledger.BalanceView:
    async with db.read() as session:
        view = await ledger.balance(session, user.id)
        assert view == await ledger.ledger_sums(session, user.id)  # cached sums agree with the entries
        return view


async def entries(db: Database, kind: str) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == kind)) or 0)


async def deliveries(db: Database, kind: str) -> list[OutboxDelivery]:
    async with db.read() as session:
        return list((await session.scalars(select(OutboxDelivery).where(OutboxDelivery.kind == kind))).all())


async def load(db: Database, verification_id: int) -> Verification:
    async with db.read() as session:
        row = await session.get(Verification, verification_id)
        assert row is not None
        return row


async def wait_state(db: Database, verification_id: int, state: str, timeout: float = 5.0) -> Verification:
    async with asyncio.timeout(timeout):
        while True:
            row = await load(db, verification_id)
            if row.state == state:
                return row
            await asyncio.sleep(0.02)


# --- buying and the code ---------------------------------------------------------------------------------------


async def test_start_then_code_captures_the_hold_and_queues_the_code(h: Harness) -> None:
    user = await h.user()
    v = await h.start(user)
    assert v.state == "active" and v.phone_number and v.provider_verification_id and v.ends_at
    view = await balance(h.db, user)
    assert (view.balance_cents, view.held_cents) == (500, v.price_cents)

    outcome = await h.main.handle_event(h.sms(v, "Your WhatsApp code: 123-456\n\nDon't share this code with others"))
    assert outcome is EventOutcome.HANDLED
    after = await load(h.db, v.id)
    assert after.state == "code_received" and after.code == "123456" and after.code_received_at is not None
    view = await balance(h.db, user)
    assert (view.balance_cents, view.held_cents) == (500 - v.price_cents, 0)
    [code] = await deliveries(h.db, "code")
    assert code.priority > 0 and code.chat_id == "1001" and "123456" in code.payload["text"]
    assert {"label": "📋 Copy code", "copy_text": "123456"} in code.payload["buttons"][0]


async def test_sandbox_code_arrives_by_itself_through_the_event_path(db: Database) -> None:
    harness = Harness(db, "sandbox", settings_for(db, None, sandbox_code_delay_seconds=0.05), None)
    try:
        user = await harness.user()
        v = await harness.start(user)
        done = await wait_state(db, v.id, "code_received")
        assert done.code and len(done.code) == 6
        assert (await balance(db, user)).balance_cents == 500 - v.price_cents
        assert len(await deliveries(db, "code")) == 1
    finally:
        await harness.close()


async def test_price_is_provider_price_plus_tier_markup_rounded_up(h: Harness) -> None:
    user = await h.user()
    cost = (await h.main.provider.price("whatsapp")).cost_cents
    quote = await h.main.quote(user, "whatsapp")
    assert quote.provider_cost_cents == cost and quote.price_cents == price_with_markup(cost, 30)
    assert price_with_markup(115, 30) == 150 and price_with_markup(29, 30) == 38 and price_with_markup(100, 0) == 100
    v = await h.start(user)
    async with h.db.read() as session:
        hold = await session.get(Hold, v.hold_id)
        assert hold is not None and hold.amount_cents == quote.price_cents == v.price_cents
    async with h.db.transaction() as session:
        await session.execute(update(User).where(User.id == user.id).values(tier="pro"))
        pro = await session.get(User, user.id)
    assert pro is not None
    assert (await h.main.quote(pro, "whatsapp")).price_cents == price_with_markup(cost, 20)


async def test_a_double_click_buys_once(h: Harness) -> None:
    user = await h.user()
    results = await asyncio.gather(*(h.start(user, key="same") for _ in range(5)))
    assert len({v.id for v in results}) == 1 and all(v.state == "active" for v in results)
    async with h.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Verification)) == 1
        assert await session.scalar(select(func.count()).select_from(Hold)) == 1
    if h.fake is not None:
        assert len(h.fake.verifications) == 1


# --- cancel -------------------------------------------------------------------------------------------------------


async def test_cancel_releases_the_hold_once(h: Harness) -> None:
    user = await h.user()
    v = await h.start(user)
    cancelled = await h.main.cancel(user.id, v.id)
    assert cancelled.state == "cancelled"
    view = await balance(h.db, user)
    assert (view.balance_cents, view.held_cents) == (500, 0)
    with pytest.raises(WrongState):
        await h.main.cancel(user.id, v.id)
    assert await entries(h.db, "release") == 1
    if h.fake is not None:
        assert h.fake.verifications[v.provider_verification_id or ""].state == "verificationCanceled"


async def test_twenty_parallel_cancels_release_once(h: Harness) -> None:
    user = await h.user()
    v = await h.start(user)
    other_instance = h.service()  # a second process on the same database and provider account
    if h.kind == "sandbox":
        other_instance.provider = h.main.provider
    calls = [(h.main if i % 2 else other_instance).cancel(user.id, v.id) for i in range(20)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert any(isinstance(r, Verification) for r in results)
    assert all(isinstance(r, Verification | WrongState) for r in results), results
    assert await entries(h.db, "release") == 1
    view = await balance(h.db, user)
    assert (view.balance_cents, view.held_cents) == (500, 0)
    if h.fake is not None:
        assert len(h.fake.requests_to("/cancel", "POST")) <= 2  # one per instance; the rest saw it was done


# --- webhooks, duplicates, second SMS -----------------------------------------------------------------------------


async def test_a_duplicate_webhook_has_no_second_effect(h: Harness) -> None:
    user = await h.user()
    v = await h.start(user)
    event = h.sms(v, "Your WhatsApp code: 222-333")
    first, second = await asyncio.gather(h.main.handle_event(event), h.main.handle_event(event))
    assert sorted([first, second]) == sorted([EventOutcome.HANDLED, EventOutcome.DUPLICATE])
    assert await h.main.handle_event(event) is EventOutcome.DUPLICATE
    assert len(await deliveries(h.db, "code")) == 1
    assert await entries(h.db, "capture") == 1


async def test_the_same_sms_by_webhook_and_by_polling_is_relayed_once(h: Harness) -> None:
    if h.kind != "textverified":
        pytest.skip("the sandbox's SMS list only holds its own simulated codes")
    user = await h.user()
    v = await h.start(user)
    event = h.sms(v, "Your WhatsApp code: 444-555")
    await asyncio.gather(h.main.handle_event(event), h.main.poll_open())
    await h.main.poll_open()
    assert len(await deliveries(h.db, "code")) == 1
    assert await entries(h.db, "capture") == 1


async def test_a_second_sms_is_relayed_without_a_second_capture(h: Harness) -> None:
    user = await h.user()
    v = await h.start(user)
    await h.main.handle_event(h.sms(v, "Your WhatsApp code: 111-222"))
    await h.main.handle_event(h.sms(v, "Your WhatsApp code: 333-444"))
    codes = await deliveries(h.db, "code")
    assert len(codes) == 2 and "333444" in codes[1].payload["text"]
    assert await entries(h.db, "capture") == 1
    assert (await load(h.db, v.id)).code == "111222"
    async with h.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(VerificationSms)) == 2
    assert (await balance(h.db, user)).balance_cents == 500 - v.price_cents


async def test_an_sms_with_html_is_escaped(h: Harness) -> None:
    user = await h.user()
    v = await h.start(user)
    await h.main.handle_event(h.sms(v, "<b>Code</b> 987654 & more"))
    [code] = await deliveries(h.db, "code")
    assert "&lt;b&gt;Code&lt;/b&gt; 987654 &amp; more" in code.payload["text"]


# --- polling and expiry -------------------------------------------------------------------------------------------


async def test_provider_time_out_found_by_polling_releases_at_once(db: Database, fake: FakeTextVerifiedServer) -> None:
    harness = Harness(db, "textverified", settings_for(db, fake), fake)
    try:
        user = await harness.user()
        v = await harness.start(user)
        assert await harness.main.poll_open() == 1
        assert (await load(db, v.id)).state == "active"
        fake.set_state(v.provider_verification_id or "", "verificationTimedOut")
        await harness.main.poll_open()
        assert (await load(db, v.id)).state == "expired"
        assert (await balance(db, user)).held_cents == 0 and await entries(db, "release") == 1
        fake.set_state(v.provider_verification_id or "", "verificationCanceled")
        await harness.main.poll_open()  # nothing open any more
        assert await entries(db, "release") == 1
    finally:
        await harness.close()


async def test_polling_spreads_its_calls_over_the_time_given(db: Database, fake: FakeTextVerifiedServer) -> None:
    """The scheduled poll asks about each open verification once, at an even pace rather than all at once, so a
    code's webhook does not queue behind a burst of responses (bench/process_hot_paths.py, code → chat p99)."""
    harness = Harness(db, "textverified", settings_for(db, fake), fake)
    try:
        opened = []
        for n in range(5):
            user = await harness.user(Contact("telegram", str(3000 + n), chat_id=str(3000 + n)))
            opened.append(await harness.start(user))
        since = len(fake.requests)
        started = time.monotonic()
        assert await harness.main.poll_open(spread=1.0) == 5
        asked = [r for r in fake.requests[since:] if r.method == "GET" and "/verifications/" in r.path]
        assert sorted(r.path.rsplit("/", 1)[-1] for r in asked) == sorted(v.provider_verification_id for v in opened)
        # One every 0.2 s: the n-th call starts no sooner than n × 0.2 s (a bound a loaded machine cannot break).
        offsets = sorted(r.at - started for r in asked)
        assert all(offset >= n * 0.2 - 0.01 for n, offset in enumerate(offsets)), offsets
    finally:
        await harness.close()


async def test_provider_cancellation_found_by_polling_releases(db: Database, fake: FakeTextVerifiedServer) -> None:
    harness = Harness(db, "textverified", settings_for(db, fake), fake)
    try:
        user = await harness.user()
        v = await harness.start(user)
        fake.set_state(v.provider_verification_id or "", "verificationCanceled")
        await harness.main.poll_open()
        assert (await load(db, v.id)).state == "cancelled"
        assert (await balance(db, user)).held_cents == 0
    finally:
        await harness.close()


async def test_sandbox_time_out_event_releases(db: Database) -> None:
    harness = Harness(db, "sandbox", settings_for(db, None), None)
    try:
        harness.sandbox.timeout_services.add("whatsapp")
        harness.sandbox.ttl_seconds = 0.1
        user = await harness.user()
        v = await harness.start(user)
        await wait_state(db, v.id, "expired")
        assert (await balance(db, user)).held_cents == 0
    finally:
        await harness.close()


async def test_the_sweeper_expires_what_is_past_its_end(h: Harness) -> None:
    user = await h.user()
    v = await h.start(user)
    got_code = await h.start(user)
    await h.main.handle_event(h.sms(got_code, "Your WhatsApp code: 555-666"))
    async with h.db.transaction() as session:
        await session.execute(update(Verification).values(ends_at=utcnow() - timedelta(minutes=1)))
    assert await h.main.sweep_expired() == 2
    assert (await load(h.db, v.id)).state == "expired"
    assert (await load(h.db, got_code.id)).state == "completed"
    view = await balance(h.db, user)
    assert (view.balance_cents, view.held_cents) == (500 - got_code.price_cents, 0)
    assert await h.main.sweep_expired() == 0
    assert await entries(h.db, "release") == 1 and await entries(h.db, "capture") == 1


async def test_a_purchase_stuck_in_requested_is_failed_and_released(h: Harness) -> None:
    user = await h.user()
    v = await h.start(user)
    async with h.db.transaction() as session:
        await session.execute(
            update(Verification).values(state="requested", created_at=utcnow() - timedelta(minutes=10))
        )
    assert await h.main.sweep_expired() == 1
    assert (await load(h.db, v.id)).state == "failed"
    assert (await balance(h.db, user)).held_cents == 0


async def test_after_a_restart_polling_resumes_and_delivers_the_code(db: Database, fake: FakeTextVerifiedServer) -> None:
    harness = Harness(db, "textverified", settings_for(db, fake), fake)
    try:
        user = await harness.user()
        v = await harness.start(user)
        await harness.main.close()  # the process dies

        restarted = harness.service()
        fake.deliver_sms(v.provider_verification_id or "", "Your WhatsApp code: 246-810")
        assert await restarted.poll_open() == 1
        assert (await load(db, v.id)).state == "code_received"
        sender = RecordingSender("telegram")
        dispatcher = OutboxDispatcher(db, {"telegram": sender})
        assert await dispatcher.run_once() == 1
        [sent] = sender.sent
        assert "246810" in sent.message.text
        assert sent.message.buttons[0][0].copy_text == "246810"
    finally:
        await harness.close()


# --- refusals before buying, failures after -------------------------------------------------------------------------


async def test_limits_refuse_before_any_provider_call(db: Database, fake: FakeTextVerifiedServer) -> None:
    harness = Harness(db, "textverified", settings_for(db, fake), fake)
    try:
        user = await harness.user(bonus=2000)
        await harness.start(user)
        await harness.start(user)
        before = len(fake.requests)
        with pytest.raises(LimitReached) as refused:
            await harness.start(user)
        assert refused.value.limit == "verifications_at_once"
        assert len(fake.requests) == before  # no price, no create
        assert len(fake.requests_to("/api/pub/v2/verifications", "POST")) == 2
    finally:
        await harness.close()


async def test_the_daily_limit_refuses_before_any_provider_call(db: Database, fake: FakeTextVerifiedServer) -> None:
    settings = settings_for(db, fake, tier_limits={"free": {"verifications_per_day": 1}})
    harness = Harness(db, "textverified", settings, fake)
    try:
        user = await harness.user()
        first = await harness.start(user)
        await harness.main.cancel(user.id, first.id)
        await harness.start(user)  # the cancelled one was refunded, so it did not use the day's one verification
        creates = len(fake.requests_to("/api/pub/v2/verifications", "POST"))
        prices = len(fake.requests_to("/pricing"))
        with pytest.raises(LimitReached) as refused:
            await harness.start(user)
        assert refused.value.limit == "verifications_per_day"
        assert len(fake.requests_to("/api/pub/v2/verifications", "POST")) == creates
        assert len(fake.requests_to("/pricing")) == prices
    finally:
        await harness.close()


async def test_not_enough_money_refuses_before_buying(h: Harness) -> None:
    user = await h.user(bonus=10)
    with pytest.raises(ledger.InsufficientFunds):
        await h.start(user)
    async with h.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Verification)) == 0
    if h.fake is not None:
        assert not h.fake.verifications


async def test_unavailable_fails_and_releases_with_a_clear_message(h: Harness) -> None:
    if h.fake is not None:
        h.fake.unavailable_services.add("whatsapp")
    else:
        h.sandbox.unavailable_services.add("whatsapp")
    user = await h.user()
    with pytest.raises(Unavailable):
        await h.start(user)
    async with h.db.read() as session:
        v = await session.scalar(select(Verification))
    assert v is not None and v.state == "failed" and (v.failure_reason or "").startswith("unavailable")
    view = await balance(h.db, user)
    assert (view.balance_cents, view.held_cents) == (500, 0)
    assert "No numbers are available for this service right now" in status_message(v, "en").text
    assert "No hay números disponibles" in status_message(v, "es").text


async def test_provider_out_of_money_alerts_admins_once(db: Database, kind: str, fake: FakeTextVerifiedServer) -> None:
    harness = Harness(
        db, kind, settings_for(db, fake if kind == "textverified" else None, admin_telegram_ids=[999]),
        fake if kind == "textverified" else None,
    )
    try:
        if kind == "textverified":
            fake.balance = 0.5
        else:
            # A sandbox whose own account at the "provider" holds 10 cents.
            harness.main = VerificationService(
                db, SandboxVerificationProvider(balance_cents=10, code_delay_seconds=60), harness.settings,
                harness.metrics,
            )
            harness.services.append(harness.main)
        await harness.user(ADMIN)
        user = await harness.user()
        for _ in range(3):
            with pytest.raises(InsufficientBalance):
                await harness.start(user)
        alerts = await deliveries(db, "alert")
        assert len(alerts) == 1 and alerts[0].chat_id == "999" and "run out of money" in alerts[0].payload["text"]
        assert (await balance(db, user)).held_cents == 0
    finally:
        await harness.close()


# --- the rest of the public API --------------------------------------------------------------------------------------


async def test_services_search_and_catalogue(h: Harness) -> None:
    popular = await h.main.popular_services()
    assert popular[0].code == "whatsapp" and len(popular) <= 8
    assert [s.code for s in await h.main.search_services("WhatsApp")] == ["whatsapp"]
    assert [s.code for s in await h.main.search_services("whats")] == ["whatsapp"]
    assert [s.code for s in await h.main.search_services("gmail")] == ["google"]
    assert [s.code for s in await h.main.search_services("telegarm")] == ["telegram"]  # a typo
    assert await h.main.search_services("zzzz") == []
    first = await h.main.catalogue(0)
    assert first.page == 0 and first.pages >= 1 and first.items
    assert (await h.main.catalogue(99)).page == first.pages - 1


async def test_history_report_another_number_and_done(h: Harness) -> None:
    user = await h.user(bonus=2000)
    v = await h.start(user)
    reported = await h.main.report(user.id, v.id)
    assert reported.state == "cancelled" and (reported.failure_reason or "").startswith("reported")
    second = await h.start(user)
    third = await h.main.another_number(user.id, second.id)
    assert third.id != second.id and third.state == "active" and third.service == second.service
    assert (await load(h.db, second.id)).state == "cancelled"
    assert (await h.main.another_number(user.id, second.id)).id == third.id  # pressed twice: one new rental
    await h.main.handle_event(h.sms(third, "Your WhatsApp code: 101-202"))
    finished = await h.main.complete(user.id, third.id)
    assert finished.state == "completed"
    rows, total = await h.main.history(user.id, 0, 2)
    assert total == 3 and [r.id for r in rows] == [third.id, second.id]
    view = await balance(h.db, user)
    assert (view.balance_cents, view.held_cents) == (2000 - third.price_cents, 0)


async def test_status_edits_follow_the_state_once_the_message_is_known(h: Harness) -> None:
    user = await h.user()
    v = await h.start(user)
    await h.main.attach_status_message(v.id, platform="telegram", chat_id="1001", message_id="77", shown_state="active")
    assert await deliveries(h.db, "verification_status") == []
    await h.main.handle_event(h.sms(v, "Your WhatsApp code: 313-131"))
    [edit] = await deliveries(h.db, "verification_status")
    assert OutgoingMessage.from_payload(edit.payload).edit_message_id == "77" and "313131" in edit.payload["text"]
    code = (await deliveries(h.db, "code"))[0]
    assert code.id < edit.id  # the code (a notification) goes out before the status edit in the same chat


async def test_a_status_message_attached_after_the_code_is_edited_at_once(h: Harness) -> None:
    user = await h.user()
    v = await h.start(user)
    await h.main.handle_event(h.sms(v, "Your WhatsApp code: 424-242"))
    # The chat only now reports the id of the status message that still shows "waiting for the SMS".
    await h.main.attach_status_message(v.id, platform="telegram", chat_id="1001", message_id="88", shown_state="active")
    await h.main.attach_status_message(v.id, platform="telegram", chat_id="1001", message_id="88", shown_state="active")
    [edit] = await deliveries(h.db, "verification_status")
    assert OutgoingMessage.from_payload(edit.payload).edit_message_id == "88" and "424242" in edit.payload["text"]


async def test_reuse_rents_the_same_number_again_once(h: Harness) -> None:
    user = await h.user(bonus=2000)
    if h.kind == "sandbox":
        h.sandbox.code_delay_seconds = 0.05  # the sandbox offers reuse only after its own simulated SMS
    v = await h.start(user)
    if h.kind == "sandbox":
        await wait_state(h.db, v.id, "code_received")
    else:
        with pytest.raises(WrongState):
            await h.main.reuse(user.id, v.id)  # no code yet: nothing to reuse
        await h.main.handle_event(h.sms(v, "Your WhatsApp code: 515-151"))
    again = await h.main.reuse(user.id, v.id)
    assert again.id != v.id and again.state == "active" and again.phone_number == v.phone_number
    assert (await h.main.reuse(user.id, v.id)).id == again.id  # pressed twice: one new rental
    view = await balance(h.db, user)
    assert (view.balance_cents, view.held_cents) == (2000 - v.price_cents, again.price_cents)
