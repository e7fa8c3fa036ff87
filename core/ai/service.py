"""AI assistance as the product offers it: opt-in per user, a daily token quota per tier, metrics, and the data.

`AiAssistant` (core/ai/assistant.py) knows how to ask Groq and when to fall back to the offline rules; this service decides
*whether* a user's text may go to Groq at all (only after they opted in, only while today's tokens last), finds
the conversation a draft answers, records what each answer cost, and keeps drafts until the user presses Send.
The model never sends anything: drafts are stored here and only the chat's Send button hands one to messaging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.ai import conversations
from core.ai.answers import RULES_ENGINE, AiAnswer, AiNotFound, AiTextTooLong, ConversationRef, T
from core.ai.assistant import AiAssistant
from core.ai.drafts import DraftSet, DraftStore, replace_draft
from core.ai.fallback import FallbackEngine
from core.ai.notes import engine_label, relay_note
from core.models import AiUsage, User
from core.platform.clock import utc_today
from core.platform.db import Database, dialect_insert
from core.platform.metrics import Metrics
from core.platform.settings import Settings
from core.providers import ai_prompts
from core.providers.ai import Analysis, ChatTurn, Drafts, TemplateDraft
from core.providers.plan import ProviderPlan

# The names the chat and messaging import from here; they live in the modules named above.
__all__ = [
    "RULES_ENGINE", "AiAnswer", "AiNotFound", "AiService", "AiTextTooLong", "ConversationRef", "DraftSet",
    "build_ai_assistant", "engine_label", "relay_note", "service_for",
]

log = logging.getLogger(__name__)

# The contract promises an AI answer within 5 s even when Groq hangs; the rest is for the database and the chat.
ANSWER_BUDGET_SECONDS = 4.0
# A relayed SMS waits for its automatic analysis, so that wait is kept shorter than a requested answer's.
AUTO_ANALYSIS_SECONDS = 2.0
ANALYZE_MAX_CHARS = ai_prompts.SMS_MAX_CHARS
DESCRIPTION_MAX_CHARS = ai_prompts.DESCRIPTION_MAX_CHARS

_Standing = tuple[bool, int, int]


# --- building ----------------------------------------------------------------------------------------------------


def build_ai_assistant(
    settings: Settings,
    plan: ProviderPlan,
    *,
    answer_timeout_seconds: float | None = None,
    fallback: FallbackEngine | None = None,
) -> AiAssistant:
    """Groq as the primary engine when the provider plan says so (a key is set), else the rules alone."""
    primary = None
    if plan.ai == "groq" and settings.groq_api_key is not None:
        from core.providers.groq import GroqEngine

        primary = GroqEngine(
            settings.groq_api_key, model=settings.groq_model, base_url=settings.groq_base_url,
            timeout_seconds=settings.groq_timeout_seconds,
        )
    if answer_timeout_seconds is None:
        # One SDK time-out plus a short retry, but never past the budget the contract promises.
        answer_timeout_seconds = min(ANSWER_BUDGET_SECONDS, settings.groq_timeout_seconds + 1.0)
    return AiAssistant(primary, fallback or FallbackEngine(), answer_timeout_seconds=answer_timeout_seconds)


def service_for(services: Any) -> AiService:
    """The AiService of a `core.services.Services`, built on first use when the composition root did not."""
    current = services.ai
    if isinstance(current, AiService):
        return current
    assistant = current if isinstance(current, AiAssistant) else build_ai_assistant(services.settings, services.plan)
    service = AiService(services.db, assistant, services.settings, services.metrics)
    services.ai = service
    return service


# --- the service ---------------------------------------------------------------------------------------------------


class AiService:
    """Every AI answer the product gives goes through here; see the module docstring for the rules."""

    def __init__(
        self,
        db: Database,
        assistant: AiAssistant,
        settings: Settings,
        metrics: Metrics,
        *,
        auto_analysis_seconds: float = AUTO_ANALYSIS_SECONDS,
    ) -> None:
        self._db = db
        self._assistant = assistant
        self._settings = settings
        self._metrics = metrics
        self._auto_seconds = auto_analysis_seconds
        self._pending: set[asyncio.Task[None]] = set()
        self._drafts_store = DraftStore(db)

    @property
    def assistant(self) -> AiAssistant:
        return self._assistant

    @property
    def model_configured(self) -> bool:
        return self._assistant.primary_name is not None

    async def close(self) -> None:
        await self.settle()
        await self._assistant.close()

    # --- the questions -------------------------------------------------------------------------------------

    async def analyze_text(self, user: User, text: str) -> AiAnswer[Analysis]:
        """Intent, sentiment, urgency and summary of any text the user pastes (`/analyze <text>`)."""
        text = text.strip()
        if len(text) > ANALYZE_MAX_CHARS:
            raise AiTextTooLong(ANALYZE_MAX_CHARS, len(text))
        async with self._db.read() as session:
            standing = await self._standing(session, user.id)
        return await self._ask(
            user, standing, lambda allowed: self._assistant.analyze(text, opted_in=allowed, locale=user.locale)
        )

    async def analyze_message(self, user: User, message_id: int) -> AiAnswer[Analysis]:
        """The analysis of one of the user's SMS (the Analyze button of a relayed message)."""
        async with self._db.read() as session:
            message = await conversations.message_of(session, user.id, message_id)
            conversation = await conversations.conversation_of(session, user.id, message.conversation_id)
            standing = await self._standing(session, user.id)
        body = message.body[:ANALYZE_MAX_CHARS]
        answer = await self._ask(
            user, standing, lambda allowed: self._assistant.analyze(body, opted_in=allowed, locale=user.locale)
        )
        return replace(answer, conversation=conversation, message_id=message.id, subject=message.body)

    async def drafts_for_message(self, user: User, message_id: int) -> AiAnswer[Drafts]:
        """Three replies to one SMS, written from the conversation up to and including it."""
        async with self._db.read() as session:
            message = await conversations.message_of(session, user.id, message_id)
            conversation = await conversations.conversation_of(session, user.id, message.conversation_id)
            if conversation is None:
                raise AiNotFound(f"message {message_id} has no conversation")
            turns = await conversations.history(session, conversation.id, up_to=message.id)
            standing = await self._standing(session, user.id)
        return await self._drafts(user, standing, conversation, turns, message_id=message.id)

    async def drafts_for_conversation(self, user: User, conversation_id: int) -> AiAnswer[Drafts]:
        """Three replies to the latest messages of a conversation (`/suggest`)."""
        async with self._db.read() as session:
            conversation = await conversations.conversation_of(session, user.id, conversation_id)
            if conversation is None:
                raise AiNotFound(f"conversation {conversation_id}")
            turns = await conversations.history(session, conversation.id)
            standing = await self._standing(session, user.id)
        return await self._drafts(user, standing, conversation, turns, message_id=None)

    async def draft_template(self, user: User, description: str) -> AiAnswer[TemplateDraft]:
        """A reusable template (name and body with `{variables}`) from a one-line description."""
        description = description.strip()
        if len(description) > DESCRIPTION_MAX_CHARS:
            raise AiTextTooLong(DESCRIPTION_MAX_CHARS, len(description))
        locale = user.locale
        async with self._db.read() as session:
            standing = await self._standing(session, user.id)
        return await self._ask(
            user, standing,
            lambda allowed: self._assistant.draft_template(description, opted_in=allowed, locale=locale),
        )

    async def auto_analysis(self, user: User, text: str) -> Analysis | None:
        """The analysis shown on a relayed inbound SMS when the user turned automatic analysis on, else None.

        Never raises and answers within `auto_analysis_seconds` (the rules answer when the model is slower),
        so relaying is never held up for long. Call it outside any open transaction (before the one that stores
        the SMS): a transaction held open while the model thinks would block every other writer.
        """
        if not user.auto_analyze or not text.strip():
            return None
        try:
            answer = await asyncio.wait_for(self.analyze_text(user, text[:ANALYZE_MAX_CHARS]), self._auto_seconds)
            return answer.value
        except TimeoutError:
            log.warning("automatic analysis took over %.1f s; the rules answer", self._auto_seconds)
        except Exception:
            log.exception("automatic analysis failed; trying the rules")
        try:
            value, _ = await self._assistant.analyze(text[:ANALYZE_MAX_CHARS], opted_in=False, locale=user.locale)
        except Exception:
            log.exception("automatic analysis by the rules failed; the SMS is relayed without it")
            return None
        self._metrics.ai_requests.labels(value.engine).inc()
        return value

    # --- what the chat needs around the answers ------------------------------------------------------------------

    async def recent_conversations(self, user_id: int, limit: int = 8) -> list[ConversationRef]:
        """The user's conversations, the most recently active first."""
        async with self._db.read() as session:
            return await conversations.recent(session, user_id, limit)

    async def conversation(self, user_id: int, conversation_id: int) -> ConversationRef:
        async with self._db.read() as session:
            found = await conversations.conversation_of(session, user_id, conversation_id)
        if found is None:
            raise AiNotFound(f"conversation {conversation_id}")
        return found

    async def remember_drafts(self, user_id: int, answer: AiAnswer[Drafts]) -> DraftSet:
        """Keep the drafts for a day so Send, Edit and Regenerate act on exactly what the user saw."""
        return await self._drafts_store.remember(user_id, answer)

    async def save_drafts(self, draft_set: DraftSet) -> None:
        await self._drafts_store.save(draft_set)

    async def load_drafts(self, user_id: int, key: str) -> DraftSet | None:
        """The drafts stored under `key` when they are this user's and not expired, else None."""
        return await self._drafts_store.load(user_id, key)

    async def regenerate(self, user: User, draft_set: DraftSet, index: int) -> tuple[AiAnswer[Drafts], bool]:
        """Replace draft `index` by a new one that differs from the other drafts; False when none does.

        The stored set is updated only when something changed, so Send keeps acting on what is shown.
        """
        if draft_set.message_id is not None:
            answer = await self.drafts_for_message(user, draft_set.message_id)
        else:
            answer = await self.drafts_for_conversation(user, draft_set.conversation.id)
        if not replace_draft(draft_set, index, answer):
            return answer, False
        await self.save_drafts(draft_set)
        return answer, True

    async def tokens_today(self, user_id: int) -> int:
        async with self._db.read() as session:
            used = await session.scalar(
                select(AiUsage.tokens).where(AiUsage.user_id == user_id, AiUsage.day == utc_today())
            )
        return int(used or 0)

    # --- the rules every answer follows --------------------------------------------------------------------------

    async def _ask(
        self, user: User, standing: _Standing, ask: Callable[[bool], Awaitable[tuple[T, int]]]
    ) -> AiAnswer[T]:
        opted_in, used, allowed = standing
        over_limit = opted_in and self.model_configured and used >= allowed
        may_use_model = opted_in and self.model_configured and not over_limit
        value, tokens = await ask(may_use_model)
        if tokens > 0:
            self._record_soon(user.id, tokens)
        self._metrics.ai_requests.labels(value.engine).inc()
        return AiAnswer(
            value=value, tokens=tokens, opted_in=opted_in, over_limit=over_limit,
            fell_back=may_use_model and value.engine == RULES_ENGINE, tokens_today=used + tokens,
            tokens_allowed=allowed,
        )

    async def _drafts(
        self, user: User, standing: _Standing, conversation: ConversationRef, turns: Sequence[ChatTurn], *,
        message_id: int | None,
    ) -> AiAnswer[Drafts]:
        locale = user.locale
        answer = await self._ask(
            user, standing, lambda allowed: self._assistant.draft_replies(turns, opted_in=allowed, locale=locale)
        )
        subject = next((turn.text for turn in reversed(turns) if turn.direction == "inbound"), None)
        return replace(answer, conversation=conversation, message_id=message_id, subject=subject)

    async def _standing(self, session: AsyncSession, user_id: int) -> _Standing:
        """(opted in, model tokens used today, tokens allowed per day), read in the caller's session.

        Opt-in is read at the moment of asking, never taken from a User loaded earlier: a user who has just
        turned AI off in another chat must not have text leave a second later.
        """
        row = (
            await session.execute(
                select(User.ai_opt_in, User.tier, AiUsage.tokens)
                .outerjoin(AiUsage, and_(AiUsage.user_id == User.id, AiUsage.day == utc_today()))
                .where(User.id == user_id)
            )
        ).one_or_none()
        if row is None:
            return False, 0, 0
        opted_in, tier, used = row
        limits = self._settings.tier_limits.get(tier) or self._settings.tier_limits["free"]
        return bool(opted_in), int(used or 0), limits.ai_tokens_per_day

    def _record_soon(self, user_id: int, tokens: int) -> None:
        """Count the tokens without making the user wait for the write (it is not part of their answer)."""
        task = asyncio.get_running_loop().create_task(self._record(user_id, tokens))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle(self) -> None:
        """Wait until every token count already started is written (before shutdown, and in tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _record(self, user_id: int, tokens: int) -> None:
        """Add `tokens` to the user's total for today, atomically (concurrent answers all count)."""
        try:
            async with self._db.transaction() as session:
                insert = dialect_insert(session.bind.dialect.name)
                statement = insert(AiUsage).values(user_id=user_id, day=utc_today(), tokens=tokens, requests=1)
                table = AiUsage.__table__.c
                await session.execute(
                    statement.on_conflict_do_update(
                        index_elements=[table.user_id, table.day],
                        set_={"tokens": table.tokens + statement.excluded.tokens, "requests": table.requests + 1},
                    )
                )
        except Exception:
            # The user already has the answer they paid for; a lost count must not turn into an error.
            log.warning("recording %d AI tokens for user %s failed", tokens, user_id, exc_info=True)
