"""Draft sets: three drafts kept between the screen that shows them and the button that sends one.

Stored for a day under a random key, so Send, Edit and Regenerate act on exactly what the user saw; the model
never sends anything itself.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from core.ai.answers import AiAnswer, ConversationRef
from core.models import KeyValue
from core.platform.clock import utcnow
from core.platform.db import Database
from core.providers.ai import Drafts

DRAFTS_TTL = timedelta(days=1)


@dataclass
class DraftSet:
    """Three drafts kept between the screen that shows them and the button that sends one."""

    key: str
    user_id: int
    conversation: ConversationRef
    message_id: int | None
    drafts: list[str]
    engine: str
    subject: str | None = None
    sent: list[int] = field(default_factory=list)

    def to_value(self) -> dict[str, Any]:
        c = self.conversation
        return {
            "user_id": self.user_id,
            "conversation": [c.id, c.phone_number_id, c.remote_e164, c.contact_name],
            "message_id": self.message_id,
            "drafts": list(self.drafts),
            "engine": self.engine,
            "subject": self.subject,
            "sent": list(self.sent),
        }

    @classmethod
    def from_value(cls, key: str, value: dict[str, Any]) -> DraftSet:
        cid, number_id, remote, name = value["conversation"]
        return cls(
            key=key, user_id=int(value["user_id"]),
            conversation=ConversationRef(int(cid), int(number_id), str(remote), name),
            message_id=value.get("message_id"), drafts=[str(d) for d in value["drafts"]],
            engine=str(value["engine"]), subject=value.get("subject"), sent=[int(i) for i in value.get("sent", [])],
        )


class DraftStore:
    """Draft sets in the key-value table, each readable only by its own user until it expires."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def remember(self, user_id: int, answer: AiAnswer[Drafts]) -> DraftSet:
        """Keep the drafts for a day so Send, Edit and Regenerate act on exactly what the user saw."""
        assert answer.conversation is not None
        draft_set = DraftSet(
            key=secrets.token_urlsafe(8), user_id=user_id, conversation=answer.conversation,
            message_id=answer.message_id, drafts=list(answer.value.drafts), engine=answer.engine,
            subject=answer.subject,
        )
        await self.save(draft_set)
        return draft_set

    async def save(self, draft_set: DraftSet) -> None:
        key = f"aidrafts:{draft_set.key}"
        async with self._db.transaction() as session:
            row = await session.get(KeyValue, key, with_for_update=True)
            if row is None:
                session.add(KeyValue(key=key, value=draft_set.to_value(), expires_at=utcnow() + DRAFTS_TTL))
            else:
                row.value = draft_set.to_value()

    async def load(self, user_id: int, key: str) -> DraftSet | None:
        """The drafts stored under `key` when they are this user's and not expired, else None."""
        async with self._db.read() as session:
            row = await session.get(KeyValue, f"aidrafts:{key}")
        if row is None or (row.expires_at is not None and row.expires_at < utcnow()):
            return None
        try:
            draft_set = DraftSet.from_value(key, dict(row.value))
        except (KeyError, TypeError, ValueError):
            return None
        return draft_set if draft_set.user_id == user_id else None


def replace_draft(draft_set: DraftSet, index: int, answer: AiAnswer[Drafts]) -> bool:
    """Put the first of the answer's drafts that differs from every shown one at `index`; False when none does."""
    shown = {text.casefold() for text in draft_set.drafts}
    fresh = next((text for text in answer.value.drafts if text.casefold() not in shown), None)
    if fresh is None:
        return False
    draft_set.drafts[index] = fresh
    draft_set.engine = answer.engine
    draft_set.sent = [i for i in draft_set.sent if i != index]
    return True
