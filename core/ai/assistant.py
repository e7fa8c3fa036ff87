"""The AI assistance service: Groq for opted-in users when it answers in time, the local rules otherwise."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
from typing import TypeVar

from core.ai.fallback import FallbackEngine
from core.providers.ai import AiEngine, AiEngineError, AiResult, Analysis, ChatTurn, Drafts, TemplateDraft

log = logging.getLogger(__name__)

T = TypeVar("T", Analysis, Drafts, TemplateDraft)
X = TypeVar("X")
Masker = Callable[[str], str]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed → open after `failures` failures in a row → half-open after `reset_seconds`, one trial call.

    While open, callers skip the primary engine entirely, so a Groq outage costs users no waiting at all.
    """

    def __init__(self, failures: int, reset_seconds: float, clock: Callable[[], float]) -> None:
        if failures < 1:
            raise ValueError("breaker_failures must be at least 1")
        self._threshold = failures
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._trial_running or self._clock() - self._opened_at >= self._reset_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def try_acquire(self) -> bool:
        """True when a call may go to the primary engine now; in half-open state only one caller gets True."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def failed(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self._threshold:
            self._opened_at = self._clock()
        self._trial_running = False

    def abandoned(self) -> None:
        """The caller cancelled: no verdict, but a half-open trial slot must not stay taken."""
        self._trial_running = False


class AiAssistant:
    """Answers every AI request, always within `answer_timeout_seconds` plus a few milliseconds.

    Nothing reaches the primary engine unless the user opted in; what does is masked first (codes and phone
    numbers). Every result names the engine that produced it and the tokens it cost, for the daily quota.
    """

    def __init__(
        self,
        primary: AiEngine | None,
        fallback: FallbackEngine,
        *,
        answer_timeout_seconds: float = 4.0,
        breaker_failures: int = 3,
        breaker_reset_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        mask: Masker | None = None,
    ) -> None:
        if answer_timeout_seconds <= 0:
            raise ValueError("answer_timeout_seconds must be positive")
        self._primary = primary
        self._fallback = fallback
        self._answer_timeout = answer_timeout_seconds
        self._breaker = CircuitBreaker(breaker_failures, breaker_reset_seconds, clock)
        self._mask = mask

    @property
    def breaker_state(self) -> BreakerState:
        return self._breaker.state

    @property
    def primary_name(self) -> str | None:
        return self._primary.name if self._primary is not None else None

    async def close(self) -> None:
        if self._primary is not None:
            await self._primary.close()

    # --- the three questions --------------------------------------------------------------------------------

    async def analyze(self, text: str, *, opted_in: bool, locale: str | None = None) -> tuple[Analysis, int]:
        masked = self._masked(opted_in, lambda mask: mask(text))
        result = await self._answer(
            "analyze",
            None if masked is None else lambda engine: engine.analyze(masked),
            lambda: self._fallback.analyze(text, locale),  # the rules answer in the reader's language
        )
        return result.value, result.tokens

    async def draft_replies(
        self, history: Sequence[ChatTurn], *, opted_in: bool, locale: str = "en"
    ) -> tuple[Drafts, int]:
        masked = self._masked(
            opted_in,
            lambda mask: [ChatTurn(direction=turn.direction, text=mask(turn.text)) for turn in history],
        )
        result = await self._answer(
            "draft_replies",
            None if masked is None else lambda engine: engine.draft_replies(masked, locale),
            lambda: self._fallback.draft_replies(history, locale),
        )
        return result.value, result.tokens

    async def draft_template(
        self, description: str, *, opted_in: bool, locale: str = "en"
    ) -> tuple[TemplateDraft, int]:
        masked = self._masked(opted_in, lambda mask: mask(description))
        result = await self._answer(
            "draft_template",
            None if masked is None else lambda engine: engine.draft_template(masked, locale),
            lambda: self._fallback.draft_template(description, locale),
        )
        return result.value, result.tokens

    # --- the rules every question follows -------------------------------------------------------------------

    def _masked(self, opted_in: bool, prepare: Callable[[Masker], X]) -> X | None:
        """What may be sent to the primary engine, masked; None when nothing may be sent at all."""
        if not opted_in or self._primary is None:
            return None
        mask = self._mask or _load_masker()
        if mask is None:
            # Unmasked codes must never leave; without the masker the rules answer instead.
            log.warning("core.verification.codes.mask_codes_and_numbers unavailable; AI answers come from the rules")
            return None
        try:
            return prepare(mask)
        except Exception:
            log.exception("masking failed; AI answer comes from the rules")
            return None

    async def _answer(
        self,
        kind: str,
        ask_primary: Callable[[AiEngine], Awaitable[AiResult[T]]] | None,
        ask_fallback: Callable[[], Awaitable[AiResult[T]]],
    ) -> AiResult[T]:
        primary = self._primary
        if ask_primary is None or primary is None or not self._breaker.try_acquire():
            return await ask_fallback()
        spent = 0
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(ask_primary(primary), self._answer_timeout)
        except asyncio.CancelledError:
            self._breaker.abandoned()
            raise
        except TimeoutError:
            self._breaker.failed()
            log.warning(
                "%s: %s gave no answer within %.1f s; rules answer", kind, primary.name, self._answer_timeout
            )
        except AiEngineError as exc:
            spent = exc.tokens
            self._breaker.failed()
            # A request we built wrongly is our defect; an outage, a rate limit or a bad answer is not.
            log.log(
                logging.ERROR if exc.defect else logging.WARNING,
                "%s: %s failed after %.2f s (%s); rules answer",
                kind,
                primary.name,
                time.monotonic() - started,
                exc,
            )
        except Exception:
            self._breaker.failed()
            log.exception("%s: %s raised unexpectedly; rules answer", kind, primary.name)
        else:
            self._breaker.succeeded()
            return result
        answer = await ask_fallback()
        return AiResult(answer.value, answer.tokens + spent)


def _load_masker() -> Masker | None:
    try:
        from core.verification.codes import mask_codes_and_numbers
    except ImportError:
        return None
    return mask_codes_and_numbers
