"""AiService against a local Groq through the real SDK: opt-in, quotas, fallback timing, breaker, masking, data."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from core.ai.answers import AiNotFound, AiTextTooLong
from core.ai.assistant import AiAssistant, BreakerState
from core.ai.fallback import FallbackEngine
from core.ai.notes import engine_label, relay_note
from core.ai.service import AiService, build_ai_assistant, service_for
from core.models import AiUsage, Conversation, Message, PhoneNumber, User
from core.money import limits
from core.platform.clock import utc_today, utcnow
from core.platform.db import Database
from core.platform.metrics import Metrics
from core.platform.settings import Settings
from core.providers.groq import GroqEngine
from core.providers.plan import plan_providers
from core.services import build_services
from tests.conftest import make_settings
from tests.fakes.groq_api import FakeGroqServer

API_KEY = "gsk_test_service_0123456789"
GROQ = "groq:openai/gpt-oss-20b"
ANSWER_TIMEOUT = 1.0
OWN = "+14155550100"
THEM = "+14155550142"

ANALYSIS = {
    "intent": "appointment",
    "sentiment": "positive",
    "sentiment_score": 0.4,
    "urgency": "normal",
    "summary": "The patient asks to move Thursday's cleaning to Friday.",
    "warning": None,
}
DRAFTS = {
    "drafts": [
        "Friday works! Does 9:30 suit you?",
        "Of course, I've moved you to Friday. See you then!",
        "Friday is full, sorry. Could Monday morning work instead?",
    ]
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rules() -> FallbackEngine:
    return FallbackEngine()


@pytest.fixture
async def fake() -> AsyncIterator[FakeGroqServer]:
    async with FakeGroqServer() as server:
        yield server


def groq_settings(db: Database, fake: FakeGroqServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "sandbox": "auto", "groq_api_key": API_KEY, "groq_base_url": fake.url, "groq_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return make_settings(db.url, **values)


@pytest.fixture
def settings(db: Database, fake: FakeGroqServer) -> Settings:
    return groq_settings(db, fake)


@pytest.fixture
async def ai(db: Database, settings: Settings, rules: FallbackEngine) -> AsyncIterator[AiService]:
    assistant = build_ai_assistant(
        settings, plan_providers(settings), answer_timeout_seconds=ANSWER_TIMEOUT, fallback=rules
    )
    service = AiService(db, assistant, settings, Metrics())
    yield service
    await service.close()


@dataclass
class Seeded:
    user: User
    conversation_id: int
    first_inbound: int
    code_inbound: int
    later_inbound: int


async def seed(db: Database, *, opted_in: bool = True, auto: bool = False, locale: str = "en") -> Seeded:
    """A dental practice texting a patient: the kind of thread a Suggest reply press sees."""
    async with db.transaction() as session:
        user = User(locale=locale, ai_opt_in=opted_in, auto_analyze=auto)
        session.add(user)
        await session.flush()
        number = PhoneNumber(
            user_id=user.id, provider="twilio", provider_sid=f"PN{user.id}", e164=OWN, country="US",
            monthly_price_cents=150,
        )
        session.add(number)
        await session.flush()
        conversation = Conversation(
            user_id=user.id, phone_number_id=number.id, remote_e164=THEM, contact_name="Dana <Patient>"
        )
        session.add(conversation)
        await session.flush()
        ids: list[int] = []
        for direction, body, status in [
            ("outbound", "Hi Dana, this is Bright Dental: your cleaning is booked for Thursday 10:30.", "delivered"),
            ("inbound", "Thanks! Could I move it to Friday? Call me on +1 415 555 0199 if easier.", "received"),
            ("outbound", "Sure, Friday at 9?", "failed"),
            ("inbound", "Also the portal sent me code 482913, is that from you?", "received"),
            ("inbound", "Never mind, Friday afternoon is better.", "received"),
        ]:
            message = Message(
                conversation_id=conversation.id, user_id=user.id, direction=direction, provider="twilio",
                from_e164=OWN if direction == "outbound" else THEM, to_e164=THEM if direction == "outbound" else OWN,
                body=body, status=status,
            )
            session.add(message)
            await session.flush()
            ids.append(message.id)
    return Seeded(user, conversation.id, ids[1], ids[3], ids[4])


def conversation_block(request: Any) -> list[dict[str, str]]:
    blocks = re.findall(r"<conversation>(.*?)</conversation>", request.user, re.DOTALL)
    assert len(blocks) == 1
    return json.loads(blocks[0])


def requests_count(metrics: Metrics, engine: str) -> float:
    return metrics.registry.get_sample_value("cumapp_ai_requests_total", {"engine": engine}) or 0.0


# --- building ----------------------------------------------------------------------------------------------------


def test_the_plan_decides_the_primary_engine(db: Database, fake: FakeGroqServer) -> None:
    with_key = groq_settings(db, fake, groq_timeout_seconds=1.5)
    assistant = build_ai_assistant(with_key, plan_providers(with_key))
    assert assistant.primary_name == GROQ
    forced = groq_settings(db, fake, sandbox="true")
    assert build_ai_assistant(forced, plan_providers(forced)).primary_name is None
    without_key = make_settings(db.url, sandbox="auto")
    assert build_ai_assistant(without_key, plan_providers(without_key)).primary_name is None
    # The answer budget stays within the contract's 5 seconds whatever the SDK time-out is.
    slow = groq_settings(db, fake, groq_timeout_seconds=30)
    assert build_ai_assistant(slow, plan_providers(slow))._answer_timeout == 4.0
    assert assistant._answer_timeout == 2.5


async def test_service_for_builds_once_and_wraps_a_bare_assistant(db: Database, rules: FallbackEngine) -> None:
    services = build_services(make_settings(db.url), db=db)
    first = service_for(services)
    assert service_for(services) is first and services.ai is first and not first.model_configured
    bare = AiAssistant(None, rules)
    services.ai = bare
    wrapped = service_for(services)
    assert wrapped.assistant is bare and services.ai is wrapped


# --- drafts and analysis from Groq ------------------------------------------------------------------------------


async def test_drafts_for_a_relayed_sms_come_from_groq_with_the_thread_up_to_it(
    db: Database, fake: FakeGroqServer, ai: AiService
) -> None:
    seeded = await seed(db)
    fake.respond_with(DRAFTS)

    answer = await ai.drafts_for_message(seeded.user, seeded.code_inbound)

    assert answer.engine == GROQ and answer.from_model and answer.opted_in and not answer.fell_back
    assert list(answer.value.drafts) == DRAFTS["drafts"]
    assert answer.conversation is not None and answer.conversation.id == seeded.conversation_id
    assert answer.conversation.label == "Dana <Patient> (+1 415-555-0142)"
    assert answer.message_id == seeded.code_inbound
    assert answer.subject and answer.subject.startswith("Also the portal")
    (request,) = fake.requests
    turns = conversation_block(request)
    # Oldest first, the failed outbound left out, and nothing after the SMS the button was under.
    assert [turn["from"] for turn in turns] == ["me", "them", "them"]
    assert "Friday at 9" not in request.user and "Never mind" not in request.user
    assert "482913" not in request.user and "555 0199" not in request.user
    assert "[CODE]" in turns[2]["text"] and "[PHONE]" in turns[1]["text"]
    assert answer.tokens == fake.usages[-1]["total_tokens"] > 0


async def test_drafts_for_a_conversation_use_its_latest_messages_in_the_users_language(
    db: Database, fake: FakeGroqServer, ai: AiService
) -> None:
    seeded = await seed(db, locale="es")
    answer = await ai.drafts_for_conversation(seeded.user, seeded.conversation_id)
    assert answer.engine == GROQ and len(answer.value.drafts) == 3 and answer.message_id is None
    assert "Write in Spanish (es)." in fake.requests[0].user
    assert conversation_block(fake.requests[0])[-1]["text"] == "Never mind, Friday afternoon is better."
    assert answer.subject == "Never mind, Friday afternoon is better."


async def test_analysis_of_a_message_and_of_pasted_text(db: Database, fake: FakeGroqServer, ai: AiService) -> None:
    seeded = await seed(db)
    fake.respond_with(ANALYSIS)
    answer = await ai.analyze_message(seeded.user, seeded.first_inbound)
    assert (answer.engine, answer.value.intent, answer.value.sentiment_score) == (GROQ, "appointment", 0.4)
    assert answer.subject and answer.subject.startswith("Thanks! Could I move it")
    pasted = await ai.analyze_text(seeded.user, "  Reminder: dentist tomorrow at 10  ")
    assert pasted.engine == GROQ and pasted.conversation is None
    assert '"Reminder: dentist tomorrow at 10"' in fake.requests[-1].user
    with pytest.raises(AiTextTooLong) as too_long:
        await ai.analyze_text(seeded.user, "x" * 2_001)
    assert (too_long.value.limit, too_long.value.length) == (2_000, 2_001)
    assert len(fake.requests) == 2


async def test_template_drafted_by_groq(db: Database, fake: FakeGroqServer, ai: AiService) -> None:
    seeded = await seed(db)
    fake.respond_with({"name": "Pickup ready", "body": "Hi {name}, your order {order} is ready for pickup."})
    answer = await ai.draft_template(seeded.user, "tell customers their order is ready")
    assert (answer.engine, answer.value.name) == (GROQ, "Pickup ready")
    assert "tell customers their order is ready" in fake.requests[0].user
    with pytest.raises(AiTextTooLong):
        await ai.draft_template(seeded.user, "d" * 1_001)


async def test_someone_elses_message_or_conversation_reads_as_missing(
    db: Database, fake: FakeGroqServer, ai: AiService
) -> None:
    ann, bob = await seed(db), await seed(db)
    for call in (
        ai.drafts_for_message(bob.user, ann.first_inbound),
        ai.analyze_message(bob.user, ann.first_inbound),
        ai.drafts_for_conversation(bob.user, ann.conversation_id),
        ai.drafts_for_message(bob.user, 10_000),
        ai.conversation(bob.user.id, ann.conversation_id),
    ):
        with pytest.raises(AiNotFound):
            await call
    assert fake.requests == []


# --- Groq failing: the fallback answers within the configured time --------------------------------------------


@pytest.mark.parametrize(
    ("failure", "requests"),
    [("429", 1), ("500", 2), ("invalid_json", 2), ("timeout", 1)],
)
async def test_groq_failing_the_rules_answer_within_the_configured_time(
    db: Database, fake: FakeGroqServer, ai: AiService, failure: str, requests: int
) -> None:
    seeded = await seed(db)
    if failure == "429":
        fake.fail_next(429, count=2, retry_after=20)
    elif failure == "500":
        fake.fail_next(500, count=4)
    elif failure == "invalid_json":
        fake.invalid_json_next(4)
    else:
        fake.delay = 10.0
    started = time.monotonic()

    drafts = await ai.drafts_for_message(seeded.user, seeded.later_inbound)
    analysis = await ai.analyze_message(seeded.user, seeded.code_inbound)

    elapsed = time.monotonic() - started
    assert elapsed < 2 * ANSWER_TIMEOUT + 0.5
    for answer in (drafts, analysis):
        assert answer.engine == "rules" and answer.fell_back and answer.opted_in and not answer.from_model
    assert len(drafts.value.drafts) == 3
    assert analysis.value.intent == "verification_code"
    assert len(fake.requests) == 2 * requests
    if failure == "invalid_json":
        # The tokens an unusable answer cost still count against the day's allowance.
        await ai.settle()
        assert await ai.tokens_today(seeded.user.id) == sum(u["total_tokens"] for u in fake.usages) > 0


async def test_breaker_opens_after_failures_and_closes_after_a_good_trial(
    db: Database, fake: FakeGroqServer, settings: Settings, rules: FallbackEngine
) -> None:
    clock = FakeClock()
    engine = GroqEngine(API_KEY, base_url=fake.url, timeout_seconds=2.0, max_retries=0)
    assistant = AiAssistant(engine, rules, answer_timeout_seconds=ANSWER_TIMEOUT, breaker_failures=3,
                            breaker_reset_seconds=30, clock=clock)
    ai = AiService(db, assistant, settings, Metrics())
    seeded = await seed(db)
    fake.fail_next(503, count=3)
    for _ in range(3):
        assert (await ai.analyze_text(seeded.user, "hello")).fell_back
    assert assistant.breaker_state is BreakerState.OPEN and len(fake.requests) == 3

    answer = await ai.drafts_for_conversation(seeded.user, seeded.conversation_id)
    assert answer.engine == "rules" and answer.fell_back
    # No call (and so no waiting) for Groq while it is known to be down; a wall-clock bound here failed on a loaded
    # machine without telling anything the request count does not.
    assert len(fake.requests) == 3

    clock.now += 30
    assert assistant.breaker_state is BreakerState.HALF_OPEN
    assert (await ai.analyze_text(seeded.user, "hello")).engine == GROQ
    assert assistant.breaker_state is BreakerState.CLOSED
    await ai.close()


# --- privacy -----------------------------------------------------------------------------------------------------


async def test_without_opt_in_no_flow_ever_reaches_groq(db: Database, fake: FakeGroqServer, ai: AiService) -> None:
    seeded = await seed(db, opted_in=False, auto=True)
    answers = [
        await ai.drafts_for_message(seeded.user, seeded.code_inbound),
        await ai.drafts_for_conversation(seeded.user, seeded.conversation_id),
        await ai.analyze_text(seeded.user, "Your code is 123456"),
        await ai.analyze_message(seeded.user, seeded.first_inbound),
        await ai.draft_template(seeded.user, "appointment reminder for tomorrow"),
    ]
    draft_set = await ai.remember_drafts(seeded.user.id, answers[0])
    _, changed = await ai.regenerate(seeded.user, draft_set, 0)
    auto = await ai.auto_analysis(seeded.user, "URGENT: your account is locked, verify at http://bit.ly/x")

    assert fake.requests == []
    for answer in answers:
        assert answer.engine == "rules" and not answer.opted_in and not answer.fell_back and answer.tokens == 0
    assert changed is False
    assert auto is not None and auto.engine == "rules" and auto.intent == "spam_phishing"
    async with db.read() as session:
        assert (await session.scalars(select(AiUsage))).all() == []


async def test_opt_in_is_read_at_the_moment_of_asking(db: Database, fake: FakeGroqServer, ai: AiService) -> None:
    seeded = await seed(db, opted_in=True)
    async with db.transaction() as session:
        row = await session.get(User, seeded.user.id)
        assert row is not None
        row.ai_opt_in = False  # turned off in another chat a moment ago
    assert seeded.user.ai_opt_in is True  # the stale object a handler may still hold
    answer = await ai.analyze_text(seeded.user, "hello")
    assert answer.engine == "rules" and not answer.opted_in
    assert fake.requests == []


async def test_codes_and_numbers_are_masked_in_every_recorded_prompt(
    db: Database, fake: FakeGroqServer, ai: AiService
) -> None:
    seeded = await seed(db)
    sms = "Your Acme code: 771-204. Questions? Call +44 20 7946 0958 or (415) 555-0123."
    await ai.analyze_text(seeded.user, sms)
    await ai.drafts_for_conversation(seeded.user, seeded.conversation_id)
    await ai.draft_template(seeded.user, "send code 884211 to +1 212 555 0147")
    await ai.auto_analysis(
        User(id=seeded.user.id, auto_analyze=True, locale="en"), "Login code 550913 for +1 (646) 555-0111"
    )
    assert len(fake.requests) == 4
    for request in fake.requests:
        sent = json.dumps(request.messages, ensure_ascii=False)
        for secret in ("771-204", "771204", "7946", "555-0123", "482913", "555 0199", "884211", "555 0147",
                       "550913", "555-0111"):
            assert secret not in sent
        assert "[CODE]" in request.user and "[PHONE]" in request.user


# --- tokens: recorded per user per UTC day, limited per tier ----------------------------------------------------


async def test_tokens_are_recorded_per_user_and_day(db: Database, fake: FakeGroqServer, ai: AiService) -> None:
    ann, bob = await seed(db), await seed(db)
    await ai.analyze_text(ann.user, "hello")
    await ai.drafts_for_conversation(ann.user, ann.conversation_id)
    await ai.analyze_text(bob.user, "hi")
    await ai.settle()
    spent = [usage["total_tokens"] for usage in fake.usages]
    async with db.read() as session:
        rows = {row.user_id: row for row in (await session.scalars(select(AiUsage))).all()}
        ann_usage = await limits.usage(session, ai._settings, await session.get(User, ann.user.id))  # type: ignore[arg-type]
    assert (rows[ann.user.id].tokens, rows[ann.user.id].requests) == (spent[0] + spent[1], 2)
    assert (rows[bob.user.id].tokens, rows[bob.user.id].requests) == (spent[2], 1)
    assert rows[ann.user.id].day == utc_today()
    assert ann_usage.ai_tokens_today == spent[0] + spent[1]  # what /balance shows
    # Yesterday's row does not count today.
    async with db.transaction() as session:
        session.add(AiUsage(user_id=bob.user.id, day=(utcnow() - timedelta(days=1)).date(), tokens=10**9, requests=1))
    assert await ai.tokens_today(bob.user.id) == spent[2]


async def test_concurrent_answers_all_count(db: Database, fake: FakeGroqServer, ai: AiService) -> None:
    seeded = await seed(db)
    answers = await asyncio.gather(*(ai.analyze_text(seeded.user, f"message {i}") for i in range(12)))
    assert all(answer.engine == GROQ for answer in answers)
    await ai.settle()
    async with db.read() as session:
        row = await session.scalar(select(AiUsage).where(AiUsage.user_id == seeded.user.id))
    assert row is not None
    assert (row.tokens, row.requests) == (sum(u["total_tokens"] for u in fake.usages), 12)


async def test_the_tier_limit_hands_over_to_the_rules_with_a_note(
    db: Database, fake: FakeGroqServer, rules: FallbackEngine
) -> None:
    settings = groq_settings(db, fake, tier_limits=json.dumps({"free": {"ai_tokens_per_day": 400}}))
    ai = AiService(db, build_ai_assistant(settings, plan_providers(settings), fallback=rules), settings, Metrics())
    seeded = await seed(db)
    first = await ai.drafts_for_conversation(seeded.user, seeded.conversation_id)
    assert first.engine == GROQ and first.tokens > 0
    if first.tokens < 400:
        await ai.analyze_text(seeded.user, "x " * 800)
    await ai.settle()
    used = await ai.tokens_today(seeded.user.id)
    assert used >= 400
    before = len(fake.requests)

    over = await ai.analyze_text(seeded.user, "Is the table still free tonight?")

    assert over.engine == "rules" and over.over_limit and not over.fell_back and over.opted_in
    assert (over.tokens_today, over.tokens_allowed) == (used, 400)
    assert len(fake.requests) == before
    assert await ai.auto_analysis(User(id=seeded.user.id, auto_analyze=True), "hi there") is not None
    assert len(fake.requests) == before
    # A higher tier has room again.
    async with db.transaction() as session:
        row = await session.get(User, seeded.user.id)
        assert row is not None
        row.tier = "pro"
    assert (await ai.analyze_text(seeded.user, "hello")).engine == GROQ
    await ai.close()


async def test_the_user_does_not_wait_for_the_token_count(
    db: Database, fake: FakeGroqServer, ai: AiService, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = await seed(db)
    record = ai._record

    async def slow_record(user_id: int, tokens: int) -> None:
        await asyncio.sleep(0.5)
        await record(user_id, tokens)

    monkeypatch.setattr(ai, "_record", slow_record)
    started = time.monotonic()
    answer = await ai.analyze_text(seeded.user, "hello")
    assert answer.engine == GROQ and time.monotonic() - started < 0.4
    assert await ai.tokens_today(seeded.user.id) == 0
    await ai.settle()
    assert await ai.tokens_today(seeded.user.id) == answer.tokens > 0


async def test_every_answer_is_counted_by_engine(db: Database, fake: FakeGroqServer, ai: AiService) -> None:
    seeded = await seed(db)
    await ai.analyze_text(seeded.user, "hello")
    fake.fail_next(401)
    await ai.analyze_text(seeded.user, "hello")
    metrics = ai._metrics
    assert requests_count(metrics, GROQ) == 1
    assert requests_count(metrics, "rules") == 1


# --- automatic analysis of inbound SMS ---------------------------------------------------------------------------


async def test_auto_analysis_only_when_turned_on(db: Database, fake: FakeGroqServer, ai: AiService) -> None:
    off = await seed(db, auto=False)
    assert await ai.auto_analysis(off.user, "hello") is None
    on = await seed(db, auto=True)
    assert await ai.auto_analysis(on.user, "   ") is None
    assert fake.requests == []
    fake.respond_with({**ANALYSIS, "intent": "spam_phishing", "warning": "The link is not your bank's."})
    analysis = await ai.auto_analysis(on.user, "Your bank account is locked: http://bank-secure.top/login")
    assert analysis is not None and analysis.engine == GROQ and analysis.intent == "spam_phishing"
    note = relay_note("en", analysis)
    assert note == "⚠️ <b>Possible scam:</b> The link is not your bank's. <i>(Groq (openai/gpt-oss-20b))</i>"


async def test_slow_groq_never_holds_up_a_relayed_sms(
    db: Database, fake: FakeGroqServer, settings: Settings, rules: FallbackEngine
) -> None:
    ai = AiService(
        db, build_ai_assistant(settings, plan_providers(settings), fallback=rules), settings, Metrics(),
        auto_analysis_seconds=0.3,
    )
    seeded = await seed(db, auto=True)
    fake.delay = 5.0
    started = time.monotonic()
    analysis = await ai.auto_analysis(seeded.user, "Your parcel is held: pay the fee at http://bit.ly/pkg")
    assert time.monotonic() - started < 0.3 + 0.3
    assert analysis is not None and analysis.engine == "rules" and analysis.intent == "spam_phishing"
    await ai.close()


async def test_auto_analysis_never_raises(db: Database, ai: AiService, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded = await seed(db, auto=True)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database went away")

    monkeypatch.setattr(ai, "_standing", broken)
    analysis = await ai.auto_analysis(seeded.user, "STOP")
    assert analysis is not None and analysis.intent == "opt_out" and analysis.engine == "rules"
    monkeypatch.setattr(ai.assistant, "analyze", broken)
    assert await ai.auto_analysis(seeded.user, "STOP") is None


def test_wording_of_engines_and_relay_notes(rules: FallbackEngine) -> None:
    assert engine_label("en", GROQ) == "Groq (openai/gpt-oss-20b)"
    assert engine_label("en", "rules") == "offline rules"
    assert engine_label("es", "rules") == "reglas sin conexión"
    reminder = rules.analyze_now("Reminder: your dentist appointment is today at 3pm")
    assert relay_note("en", reminder) == "🧠 appointment · urgency high <i>(offline rules)</i>"
    phishing = rules.analyze_now("Tu cuenta ha sido bloqueada. Verifica tu cuenta en http://bit.ly/abc <ya>")
    assert relay_note("es", phishing).startswith("⚠️ <b>Posible estafa:</b> Riesgo alto de phishing")


# --- drafts kept for Send, Edit and Regenerate -------------------------------------------------------------------


async def test_drafts_are_kept_for_their_user_and_regenerated_one_at_a_time(
    db: Database, fake: FakeGroqServer, ai: AiService
) -> None:
    seeded = await seed(db)
    other = await seed(db)
    fake.respond_with(DRAFTS, times=1)
    answer = await ai.drafts_for_message(seeded.user, seeded.later_inbound)
    draft_set = await ai.remember_drafts(seeded.user.id, answer)
    assert await ai.load_drafts(other.user.id, draft_set.key) is None
    assert await ai.load_drafts(seeded.user.id, "no-such-key") is None
    loaded = await ai.load_drafts(seeded.user.id, draft_set.key)
    assert loaded is not None and loaded.drafts == DRAFTS["drafts"] and loaded.message_id == seeded.later_inbound

    fake.respond_with({"drafts": [DRAFTS["drafts"][0], "Friday 3pm is free, shall I book it?", "Yes!"]}, times=1)
    _, changed = await ai.regenerate(seeded.user, loaded, 1)
    assert changed
    again = await ai.load_drafts(seeded.user.id, draft_set.key)
    assert again is not None
    assert again.drafts == [DRAFTS["drafts"][0], "Friday 3pm is free, shall I book it?", DRAFTS["drafts"][2]]

    fake.respond_with({"drafts": again.drafts}, times=1)
    _, changed = await ai.regenerate(seeded.user, again, 2)
    assert not changed

    async with db.transaction() as session:
        from core.models import KeyValue

        row = await session.get(KeyValue, f"aidrafts:{draft_set.key}")
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    assert await ai.load_drafts(seeded.user.id, draft_set.key) is None


async def test_recent_conversations_most_active_first(db: Database, ai: AiService) -> None:
    seeded = await seed(db)
    async with db.transaction() as session:
        newer = Conversation(
            user_id=seeded.user.id,
            phone_number_id=(await session.scalar(select(PhoneNumber.id).where(PhoneNumber.user_id == seeded.user.id))),
            remote_e164="+14155550177", last_message_at=utcnow() + timedelta(minutes=5),
        )
        session.add(newer)
    recent = await ai.recent_conversations(seeded.user.id)
    assert [c.remote_e164 for c in recent] == ["+14155550177", THEM]
    assert recent[0].label == "+1 415-555-0177"


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The SDK would read GROQ_BASE_URL from the environment when base_url is None; tests always pass it.
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
    yield
