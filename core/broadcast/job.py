"""The in-memory state of one broadcast while this instance sends it: claimed recipients, outcomes, figures."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from core.broadcast.drafts import message_for
from core.broadcast.progress import progress_ref
from core.models import Broadcast
from core.platform.outbox import OutgoingMessage

INTERRUPTED = "interrupted: may have been delivered, not resent"


@dataclass
class Recipient:
    """A chat claimed (`sending`) for this instance; `attempts` fences every write about it."""

    identity_id: int
    platform: str
    chat_id: str
    attempts: int


@dataclass
class Outcome:
    recipient: Recipient
    state: str  # sent, failed, blocked, pending (to retry), skipped
    error: str | None = None


@dataclass
class Job:
    broadcast_id: int
    paid: bool
    message: OutgoingMessage
    locale: str
    progress: tuple[str, str, str] | None
    figures: Broadcast
    stop_reason: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    in_flight: dict[asyncio.Task[None], Recipient] = field(default_factory=dict)
    unsent: list[Recipient] = field(default_factory=list)
    sent_times: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))
    started: float = field(default_factory=time.monotonic)
    backoff_until: float = 0.0
    failures_in_row: int = 0
    # When failures_in_row last grew: a failure of a send started before then is the same fault, not a new one.
    escalated_at: float = 0.0
    rewinds: int = 0  # bumped when retries are committed back to pending, so lanes restart their cursor
    last_edit: float = 0.0
    edit_task: asyncio.Task[None] | None = None
    edit_broken: bool = False
    poked: asyncio.Event = field(default_factory=asyncio.Event)  # a pause or cancel in this process: look now
    stopped_event: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def for_broadcast(cls, broadcast: Broadcast, locale: str) -> Job:
        """What every send needs, from the broadcast as the store left it (detached from its session)."""
        return cls(
            broadcast_id=broadcast.id, paid=bool(broadcast.paid), message=message_for(broadcast), locale=locale,
            progress=progress_ref(broadcast), figures=broadcast,
        )

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopped_event.set()

    def stopped(self) -> bool:
        return self.stop_reason is not None

    def rate(self, window: float = 5.0) -> float:
        now = time.monotonic()
        span = min(window, max(now - self.started, 0.5))
        recent = sum(1 for at in reversed(self.sent_times) if at >= now - span) if self.sent_times else 0
        return recent / span
