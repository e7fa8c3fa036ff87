"""Provider-neutral AI interface: what an engine is asked, what it answers, and how many tokens that took."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, get_args, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

Intent = Literal[
    "verification_code",
    "question",
    "appointment",
    "delivery_notice",
    "marketing",
    "greeting",
    "opt_out",
    "spam_phishing",
    "other",
]
Sentiment = Literal["negative", "neutral", "positive"]
Urgency = Literal["low", "normal", "high"]
Direction = Literal["inbound", "outbound"]

INTENTS: tuple[str, ...] = get_args(Intent)
SENTIMENTS: tuple[str, ...] = get_args(Sentiment)
URGENCIES: tuple[str, ...] = get_args(Urgency)

SUMMARY_MAX_CHARS = 160
WARNING_MAX_CHARS = 200
DRAFT_COUNT = 3
DRAFT_MAX_CHARS = 300
TEMPLATE_NAME_MAX_CHARS = 40
TEMPLATE_BODY_MAX_CHARS = 300

_SPACES = re.compile(r"\s+")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?$")


def one_line(text: str, limit: int) -> str:
    """Whitespace collapsed to single spaces and cut at a word boundary, so it fits one chat line."""
    flat = _SPACES.sub(" ", text).strip()
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    # Cutting inside a word reads as a typo; back up to the last space unless that loses too much.
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"


def clip(text: str, limit: int) -> str:
    """Like `one_line` but keeps line breaks, which a multi-line SMS reply may want."""
    kept = "\n".join(_SPACES.sub(" ", line).strip() for line in text.strip().splitlines()).strip()
    if len(kept) <= limit:
        return kept
    cut = kept[: limit - 1]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-\n") + "…"


def language_of(locale: str | None) -> Literal["en", "es"]:
    """The language the built-in texts exist in for a chat locale such as `es-MX`; English otherwise."""
    return "es" if (locale or "").strip().lower()[:2] == "es" else "en"


def safe_locale(locale: str | None) -> str:
    """A locale tag fit to be placed outside the data block of a prompt (it is partly user-controlled)."""
    tag = (locale or "").strip()
    return tag if _LOCALE.match(tag) else "en"


class Analysis(BaseModel):
    """What one SMS is about, as shown under the Analyze button."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intent: Intent = Field(description="What the SMS is for.")
    sentiment: Sentiment = Field(description="The sender's tone.")
    sentiment_score: float = Field(
        ge=-1.0, le=1.0, description="From -1 (very negative) to 1 (very positive)."
    )
    urgency: Urgency = Field(description="How soon the reader should act.")
    summary: str = Field(
        min_length=1,
        max_length=SUMMARY_MAX_CHARS,
        description=f"One line, at most {SUMMARY_MAX_CHARS} characters, without codes or full phone numbers.",
    )
    warning: str | None = Field(
        default=None,
        max_length=WARNING_MAX_CHARS,
        description="A short warning when the SMS looks like phishing or a scam, else null.",
    )
    engine: str = Field(
        description="Which engine produced this answer, e.g. groq:openai/gpt-oss-20b or rules."
    )

    @field_validator("summary", mode="before")
    @classmethod
    def _summary_one_line(cls, value: Any) -> Any:
        return one_line(value, SUMMARY_MAX_CHARS) if isinstance(value, str) else value

    @field_validator("warning", mode="before")
    @classmethod
    def _warning_or_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = one_line(value, WARNING_MAX_CHARS)
            # Models asked for "null" sometimes write it out as text.
            return value if value and value.lower() not in {"null", "none", "n/a"} else None
        return value

    @field_validator("sentiment_score", mode="before")
    @classmethod
    def _score_in_range(cls, value: Any) -> Any:
        # A model's 1.2 means "very positive", not "broken output": clamp rather than retry.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return max(-1.0, min(1.0, float(value)))
        return value


class Drafts(BaseModel):
    """Three different replies the user may send back, shown behind the Suggest reply button."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drafts: list[str] = Field(
        min_length=DRAFT_COUNT,
        max_length=DRAFT_COUNT,
        description=f"Exactly {DRAFT_COUNT} different replies, each at most {DRAFT_MAX_CHARS} characters.",
    )
    engine: str = Field(description="Which engine produced this answer.")

    @field_validator("drafts", mode="before")
    @classmethod
    def _distinct_and_short(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        kept: list[str] = []
        seen: set[str] = set()
        for item in value:
            if not isinstance(item, str):
                return value  # let the type check report it
            text = clip(item, DRAFT_MAX_CHARS)
            key = text.casefold()
            if text and key not in seen:
                seen.add(key)
                kept.append(text)
        # A fourth suggestion is harmless surplus; fewer than three fails the length check and is retried.
        return kept[:DRAFT_COUNT]

    @field_validator("drafts")
    @classmethod
    def _each_fits(cls, value: list[str]) -> list[str]:
        for text in value:
            if not 1 <= len(text) <= DRAFT_MAX_CHARS:
                raise ValueError(f"each draft must have 1 to {DRAFT_MAX_CHARS} characters")
        return value


class TemplateDraft(BaseModel):
    """A reusable SMS template written from the user's description; `{placeholders}` mark what changes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=TEMPLATE_NAME_MAX_CHARS,
        description=f"A short title, at most {TEMPLATE_NAME_MAX_CHARS} characters.",
    )
    body: str = Field(
        min_length=1,
        max_length=TEMPLATE_BODY_MAX_CHARS,
        description=f"SMS text, at most {TEMPLATE_BODY_MAX_CHARS} characters, placeholders like {{name}}.",
    )
    engine: str = Field(description="Which engine produced this answer.")

    @field_validator("name", mode="before")
    @classmethod
    def _short_name(cls, value: Any) -> Any:
        return one_line(value, TEMPLATE_NAME_MAX_CHARS) if isinstance(value, str) else value

    @field_validator("body", mode="before")
    @classmethod
    def _short_body(cls, value: Any) -> Any:
        return clip(value, TEMPLATE_BODY_MAX_CHARS) if isinstance(value, str) else value


class ChatTurn(BaseModel):
    """One message of an SMS conversation: `inbound` from the other party, `outbound` from our user."""

    model_config = ConfigDict(frozen=True)

    direction: Direction
    text: str


T = TypeVar("T", Analysis, Drafts, TemplateDraft)


@dataclass(frozen=True, slots=True)
class AiResult(Generic[T]):
    """An engine's answer and the model tokens it cost (0 for local rules), for the per-user daily quota."""

    value: T
    tokens: int = 0


class AiEngineError(Exception):
    """An engine could not answer; the caller falls back. `defect` marks a request we built wrongly."""

    def __init__(
        self,
        message: str,
        *,
        tokens: int = 0,
        status: int | None = None,
        retry_after: float | None = None,
        defect: bool = False,
    ) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.status = status
        self.retry_after = retry_after
        self.defect = defect


class AiUnavailable(AiEngineError):
    """The provider was unreachable, too slow, rate-limited or failing."""


class AiOutputInvalid(AiEngineError):
    """The provider answered, but not with output of the requested shape (even after a second try)."""


@runtime_checkable
class AiEngine(Protocol):
    """Anything that can analyse an SMS and write replies and templates; Groq and the local rules are two."""

    @property
    def name(self) -> str: ...

    async def analyze(self, text: str) -> AiResult[Analysis]: ...

    async def draft_replies(self, history: Sequence[ChatTurn], locale: str) -> AiResult[Drafts]: ...

    async def draft_template(self, description: str, locale: str) -> AiResult[TemplateDraft]: ...

    async def close(self) -> None: ...
