"""What an AI answer is to the rest of the product: the answer with its provenance, the conversation it is about,
and the two ways a question can be refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from core.ai.fallback import FallbackEngine
from core.platform.phone import InvalidPhoneNumber, format_international
from core.providers.ai import Analysis, Drafts, TemplateDraft

RULES_ENGINE = FallbackEngine.name

T = TypeVar("T", Analysis, Drafts, TemplateDraft)


class AiNotFound(LookupError):
    """The message or conversation does not exist or belongs to someone else (both read the same)."""


class AiTextTooLong(ValueError):
    """A text given to analyse (or a template description) is longer than an AI request may carry."""

    def __init__(self, limit: int, length: int) -> None:
        super().__init__(f"{length} characters, at most {limit}")
        self.limit = limit
        self.length = length


@dataclass(frozen=True)
class ConversationRef:
    """Enough of a conversation to show it and to send into it."""

    id: int
    phone_number_id: int
    remote_e164: str
    contact_name: str | None = None

    @property
    def number(self) -> str:
        try:
            return format_international(self.remote_e164)
        except InvalidPhoneNumber:
            return self.remote_e164

    @property
    def label(self) -> str:
        """How a button or a title names the other party: "Ann (+1 415-555-0100)" or just the number."""
        return f"{self.contact_name} ({self.number})" if self.contact_name else self.number


@dataclass(frozen=True)
class AiAnswer(Generic[T]):
    """One answer for the chat, with everything the chat must say about where it came from."""

    value: T
    tokens: int = 0
    opted_in: bool = False  # the user allows their text to go to the model
    over_limit: bool = False  # opted in, but today's model tokens are spent: the rules answered
    fell_back: bool = False  # the model was asked but failed or was too slow: the rules answered
    tokens_today: int = 0
    tokens_allowed: int = 0
    conversation: ConversationRef | None = None
    message_id: int | None = None
    subject: str | None = None  # the inbound SMS answered or analysed, for the chat to quote

    @property
    def engine(self) -> str:
        return self.value.engine

    @property
    def from_model(self) -> bool:
        return self.value.engine != RULES_ENGINE
