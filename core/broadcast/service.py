"""The broadcast API the front ends, admin views, tests and benchmarks use, gathered from the package's modules."""

from core.broadcast.drafts import create_draft, message_for, update_draft
from core.broadcast.job import INTERRUPTED
from core.broadcast.markup import DraftError, broadcast_html, parse_link_buttons, parse_photo_url
from core.broadcast.progress import (
    EDITABLE_PLATFORMS,
    left,
    progress_buttons,
    progress_ref,
    progress_text,
    summary_line,
)
from core.broadcast.runner import BroadcastRunner, kick
from core.broadcast.segments import (
    SEGMENT_KINDS,
    Segment,
    SegmentCount,
    count_segments,
    describe_count,
    standard_segments,
)
from core.broadcast.states import active, cancel, get, pause, recent, recipient_states, resume, start
from core.platform.pacing import DISCORD_RATE, TELEGRAM_PAID_RATE, TELEGRAM_RATE, PacedSender, RateBudget

__all__ = [
    "DISCORD_RATE", "EDITABLE_PLATFORMS", "INTERRUPTED", "SEGMENT_KINDS", "TELEGRAM_PAID_RATE", "TELEGRAM_RATE",
    "BroadcastRunner", "DraftError", "PacedSender", "RateBudget", "Segment", "SegmentCount", "active",
    "broadcast_html", "cancel", "count_segments", "create_draft", "describe_count", "get", "kick", "left",
    "message_for", "parse_link_buttons", "parse_photo_url", "pause", "progress_buttons", "progress_ref",
    "progress_text", "recent", "recipient_states", "resume", "standard_segments", "start", "summary_line",
    "update_draft",
]
