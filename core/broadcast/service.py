"""Durable broadcasts: segments and their counts, recipients kept in the database, and a runner that sends each
announcement once per chat at the platform's rate without starving ordinary traffic.

How it fits together
--------------------
* `create_draft` / `update_draft` keep what the admin composed (HTML text, optional photo URL and link buttons,
  a `Segment`). `count_segments` tells how many chats a segment reaches and how many were left out and why
  (banned, opted out of announcements, unreachable), with one GROUP BY query.
* `start` turns a draft into a running broadcast: one `BroadcastRecipient` per reachable chat identity of the
  segment, written with a single INSERT … SELECT (50,000 rows never pass through Python).
* `BroadcastRunner` sends running broadcasts. It takes a lease on each (`Broadcast.lease_owner/lease_until`),
  so two app instances never send the same one; it adopts running broadcasts whose lease lapsed (a restart,
  a crashed instance) and resumes from the recipients' states.

Sharing the platform limit
--------------------------
Telegram allows about 30 messages per second per bot. Broadcasts and ordinary traffic go through the same bot,
so they draw from one `RateBudget` per platform (a GCRA token bucket, 29/s by default for Telegram):

* the outbox's deliveries (codes, relayed SMS, alerts) are wrapped by `paced_senders()` and take a slot with
  priority: they reserve the next free slot at once and never queue behind a broadcast, which only takes a slot
  that is free *now*; a broadcast therefore slows down by exactly the ordinary traffic and never starves it;
* direct answers to a user's own command or button are sent by the front end outside the budget; the 1/s left
  between 29 and 30 is their headroom (they are at most about one per second per person typing);
* a paid broadcast (`allow_paid_broadcast`, up to 1000/s) draws from its own budget (`paid_rate_per_second`);
* a 429's `retry_after` blocks the whole budget for that long: Telegram's flood wait applies to the bot; a send
  that took over a second (a flood wait served inside python-telegram-bot) holds it for one more window.

Exactly once
------------
A recipient goes `pending` → `sending` (claimed under the lease, a few at a time, just before its turn) → `sent`
(or `failed`, `blocked`). The outcome is committed within `tick_seconds` (0.25 s) of the platform's answer. A
retryable refusal (429, 5xx, connection error: the platform did not take the message) puts it back to `pending`.

The one window we cannot close is between the platform accepting a message and our commit: Bot API has no
idempotency key and no way to ask whether a message arrived. We choose *at most once* there: a recipient found in
`sending` after a crash (or after a send timed out, where the outcome is equally unknown) is marked `failed` with
the reason "interrupted", never sent again. So no user ever gets a broadcast twice; after a crash, at most two
claim batches plus the sends in flight (about 20 chats at 29/s) may miss it, and the figures say so. A lease that
lapsed while its holder still runs cannot cause a duplicate either: every write is fenced by the recipient's
`attempts` and state, and the new holder never sends what it finds in `sending`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import math
import os
import re
import socket
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, and_, case, func, insert, literal, or_, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from core.admin import audit
from core.models import PLATFORMS, TIERS, Broadcast, BroadcastRecipient, ChatIdentity, User
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.i18n import Html, t
from core.platform.metrics import Metrics
from core.platform.outbox import ChatSender, DeliveryError, OutButton, OutgoingMessage

log = logging.getLogger(__name__)

# --- rates ----------------------------------------------------------------------------------------------------

TELEGRAM_RATE = 29.0  # Telegram's ~30/s per bot, less the headroom for direct answers (see the module docstring)
TELEGRAM_PAID_RATE = 950.0  # allow_paid_broadcast lifts the limit to 1000/s; 5% margin keeps us clear of 429s
# Discord allows 50 requests/s per bot; a DM to someone new costs two (open the channel, send).
DISCORD_RATE = 20.0
OTHER_RATE = 50.0  # the terminal chat and anything without a published limit

# Front ends whose sender honours `OutgoingMessage.edit_message_id`; elsewhere progress is sent once, at the end.
EDITABLE_PLATFORMS = frozenset({"telegram", "discord"})

MAX_TEXT = 4000
STALL_SECONDS = 1.0  # a send slower than this waited out a flood wait somewhere (see RateBudget.finished)
MAX_CAPTION = 1024  # with a photo the text is its caption: one message, so a retry can never repeat half of it
MAX_BUTTONS = 8
MAX_LABEL = 64
MAX_URL = 512
INTERRUPTED = "interrupted: may have been delivered, not resent"


# --- segments ---------------------------------------------------------------------------------------------------

SEGMENT_KINDS = ("everyone", "tier", "platform", "language", "active")


@dataclass(frozen=True)
class Segment:
    """Who a broadcast is for: everyone, one tier, one platform, one language, or active in the last N days."""

    kind: str = "everyone"
    value: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SEGMENT_KINDS:
            raise ValueError(f"unknown segment kind {self.kind!r}")
        valid = {
            "everyone": self.value == "",
            "tier": self.value in TIERS,
            "platform": self.value in PLATFORMS,
            "language": bool(re.fullmatch(r"[a-z]{2,3}(-[a-zA-Z]{2,4})?", self.value)),
            "active": self.value.isdigit() and 1 <= int(self.value) <= 366,
        }[self.kind]
        if not valid:
            raise ValueError(f"bad value {self.value!r} for segment {self.kind}")

    @property
    def key(self) -> str:
        """Short and stable, for button action ids: `everyone`, `tier:pro`, `active:7`."""
        return self.kind if self.kind == "everyone" else f"{self.kind}:{self.value}"

    @classmethod
    def parse(cls, key: str) -> Segment:
        kind, _, value = key.partition(":")
        return cls(kind, value)

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "value": self.value}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Segment:
        data = data or {}
        return cls(str(data.get("kind") or "everyone"), str(data.get("value") or ""))

    def condition(self, now: datetime) -> ColumnElement[bool]:
        if self.kind == "tier":
            return User.tier == self.value
        if self.kind == "platform":
            return ChatIdentity.platform == self.value
        if self.kind == "language":
            return User.locale == self.value
        if self.kind == "active":
            return User.last_seen_at >= now - timedelta(days=int(self.value))
        return true()


@dataclass(frozen=True)
class SegmentCount:
    """How many chats a segment reaches, and how many of its chats were left out and why."""

    segment: Segment
    recipients: int = 0
    banned: int = 0
    opted_out: int = 0  # the user turned announcements off in /settings
    unreachable: int = 0  # blocked the bot (403) or never opened a private chat

    @property
    def left_out(self) -> int:
        return self.banned + self.opted_out + self.unreachable


def standard_segments(languages: Iterable[str] = ("en", "es"), platforms: Iterable[str] = PLATFORMS) -> list[Segment]:
    """The segments the /broadcast flow offers as buttons."""
    segments = [Segment()]
    segments += [Segment("tier", tier) for tier in TIERS]
    segments += [Segment("platform", platform) for platform in platforms]
    segments += [Segment("language", language) for language in languages]
    segments += [Segment("active", "7"), Segment("active", "30")]
    return segments


def _population() -> Any:
    """Chat identities of live accounts; merged-away accounts are not people any more."""
    return select().select_from(ChatIdentity).join(User, User.id == ChatIdentity.user_id).where(
        User.merged_into_id.is_(None)
    )


def _reachable() -> ColumnElement[bool]:
    return and_(ChatIdentity.chat_id.is_not(None), ChatIdentity.unreachable_at.is_(None))


async def count_segments(session: AsyncSession, segments: Sequence[Segment]) -> dict[Segment, SegmentCount]:
    """Every segment's counts from one GROUP BY (tier, platform, language, activity, why-left-out)."""
    now = utcnow()
    days = sorted({int(s.value) for s in segments if s.kind == "active"})
    reason = case(
        (User.status != "active", "banned"),
        (User.announcements.is_(False), "opted_out"),
        (~_reachable(), "unreachable"),
        else_="ok",
    ).label("reason")
    active_flags = [
        case((User.last_seen_at >= now - timedelta(days=n), 1), else_=0).label(f"active_{n}") for n in days
    ]
    # Grouped in an outer query: PostgreSQL would not match a CASE with bound parameters in SELECT and GROUP BY.
    inner = _population().add_columns(
        User.tier.label("tier"), ChatIdentity.platform.label("platform"), User.locale.label("locale"), reason,
        *active_flags,
    ).subquery()
    keys = [inner.c.tier, inner.c.platform, inner.c.locale, inner.c.reason, *(inner.c[f"active_{n}"] for n in days)]
    query = select(*keys, func.count().label("n")).group_by(*keys)
    rows = (await session.execute(query)).all()
    result: dict[Segment, SegmentCount] = {}
    for segment in segments:
        totals = {"ok": 0, "banned": 0, "opted_out": 0, "unreachable": 0}
        for row in rows:
            mapping = row._mapping
            if segment.kind == "tier" and mapping["tier"] != segment.value:
                continue
            if segment.kind == "platform" and mapping["platform"] != segment.value:
                continue
            if segment.kind == "language" and mapping["locale"] != segment.value:
                continue
            if segment.kind == "active" and not mapping[f"active_{segment.value}"]:
                continue
            totals[mapping["reason"]] += int(mapping["n"])
        result[segment] = SegmentCount(
            segment, recipients=totals["ok"], banned=totals["banned"], opted_out=totals["opted_out"],
            unreachable=totals["unreachable"],
        )
    return result


# --- composing --------------------------------------------------------------------------------------------------

_ALLOWED_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre", "tg-spoiler", "blockquote",
     "span"}
)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)(\s[^<>]*)?>")
_BARE_AMPERSAND = re.compile(r"&(?!(?:#\d{1,7}|#x[0-9a-fA-F]{1,6}|lt|gt|amp|quot);)")
_ATTRIBUTES = {
    "a": re.compile(r"""\s+href\s*=\s*(["'])(https?://|tg://)[^"'<>\s]+\1\s*"""),
    "span": re.compile(r"""\s+class\s*=\s*(["'])tg-spoiler\1\s*"""),
    "code": re.compile(r"""\s+class\s*=\s*(["'])language-[a-zA-Z0-9+#-]+\1\s*"""),
    "blockquote": re.compile(r"\s+expandable\s*"),
}
_BUTTON_LINE = re.compile(r"^(?P<label>.+?)\s+[-–—|]\s+(?P<url>https?://\S+)$")
_URL = re.compile(r"https?://[^\s<>\"']+")


class DraftError(ValueError):
    """What the admin typed cannot be used; `key` names the catalog text that says why."""

    def __init__(self, key: str, **details: Any) -> None:
        super().__init__(key)
        self.key = key
        self.details = details


def broadcast_html(raw: str) -> tuple[str, bool]:
    """The admin's text as Telegram HTML and whether their markup was kept.

    Tags are kept when they form valid Telegram HTML (b, i, u, s, a href, code, pre, spoiler, blockquote),
    otherwise the whole text is escaped and sent as typed; a stray `&` is escaped either way. The preview shows
    the result, so the admin sees which it was before confirming."""
    text = raw.strip()
    if not text:
        raise DraftError("bc_error_empty")
    if len(text) > MAX_TEXT:
        raise DraftError("bc_error_too_long", limit=MAX_TEXT)
    plain = html.escape(text, quote=False)
    candidate = _BARE_AMPERSAND.sub("&amp;", text)
    stack: list[str] = []
    position = 0
    for match in _TAG.finditer(candidate):
        if "<" in candidate[position : match.start()]:
            return plain, False
        closing, name, attributes = match.group(1), match.group(2).lower(), match.group(3) or ""
        if name not in _ALLOWED_TAGS:
            return plain, False
        if closing:
            if attributes.strip() or not stack or stack.pop() != name:
                return plain, False
        else:
            pattern = _ATTRIBUTES.get(name)
            if attributes.strip() and (pattern is None or not pattern.fullmatch(attributes)):
                return plain, False
            if name == "a" and not attributes.strip():
                return plain, False
            if name == "span" and not attributes.strip():
                return plain, False
            stack.append(name)
        position = match.end()
    if stack or "<" in candidate[position:]:
        return plain, False
    return candidate, True


def parse_link_buttons(text: str) -> list[dict[str, str]]:
    """`Label - https://…` lines → link buttons; DraftError naming the first bad line."""
    buttons: list[dict[str, str]] = []
    for number, line in enumerate((line.strip() for line in text.strip().splitlines()), start=1):
        if not line:
            continue
        match = _BUTTON_LINE.match(line)
        if match is None or len(match["url"]) > MAX_URL:
            raise DraftError("bc_error_button_line", line=number)
        label = match["label"].strip()
        if len(label) > MAX_LABEL:
            raise DraftError("bc_error_button_label", line=number, limit=MAX_LABEL)
        buttons.append({"label": label, "url": match["url"]})
    if not buttons:
        raise DraftError("bc_error_button_line", line=1)
    if len(buttons) > MAX_BUTTONS:
        raise DraftError("bc_error_too_many_buttons", limit=MAX_BUTTONS)
    return buttons


def parse_photo_url(text: str) -> str:
    url = text.strip()
    if len(url) > MAX_URL or not _URL.fullmatch(url):
        raise DraftError("bc_error_photo_url")
    return url


def message_for(broadcast: Broadcast) -> OutgoingMessage:
    """Exactly what each recipient receives; the preview shows this same message."""
    rows = tuple(
        (OutButton(label=str(button["label"]), url=str(button["url"])),) for button in broadcast.buttons or []
    )
    return OutgoingMessage(
        text=broadcast.text, buttons=rows, photo_url=broadcast.photo, paid_broadcast=bool(broadcast.paid),
    )


async def create_draft(
    session: AsyncSession,
    *,
    created_by_user_id: int,
    text: str,
    photo: str | None = None,
    buttons: Sequence[dict[str, str]] = (),
    segment: Segment | None = None,
    paid: bool = False,
) -> Broadcast:
    """A broadcast in `draft`: nothing is sent until `start`."""
    body, _ = broadcast_html(text)
    broadcast = Broadcast(
        created_by_user_id=created_by_user_id, text=body, photo=photo, buttons=[dict(b) for b in buttons],
        segment=(segment or Segment()).to_json(), paid=paid, state="draft", created_at=utcnow(),
    )
    session.add(broadcast)
    await session.flush()
    return broadcast


async def update_draft(session: AsyncSession, broadcast_id: int, **changes: Any) -> Broadcast | None:
    """Change `photo`, `buttons`, `segment` (a Segment) or `paid` of a draft; None when it is no draft any more.

    DraftError when a photo is added to a text too long to be its caption."""
    broadcast = await session.get(Broadcast, broadcast_id, with_for_update=True)
    if broadcast is None or broadcast.state != "draft":
        return None
    for name, value in changes.items():
        if name == "segment":
            broadcast.segment = value.to_json()
        elif name == "buttons":
            broadcast.buttons = [dict(b) for b in value]
        elif name == "photo":
            if value is not None and len(broadcast.text) > MAX_CAPTION:
                raise DraftError("bc_error_caption_too_long", limit=MAX_CAPTION)
            broadcast.photo = value
        elif name == "paid":
            broadcast.paid = bool(value)
        else:
            raise TypeError(f"cannot change {name} of a draft")
    await session.flush()
    return broadcast


def progress_ref(broadcast: Broadcast) -> tuple[str, str, str] | None:
    """(platform, chat id, message id) of the progress card; `progress_chat_id` keeps `platform:chat`."""
    if not broadcast.progress_chat_id or not broadcast.progress_message_id:
        return None
    platform, _, chat_id = broadcast.progress_chat_id.partition(":")
    return platform, chat_id, broadcast.progress_message_id


# --- state changes ----------------------------------------------------------------------------------------------


async def start(
    db: Database,
    broadcast_id: int,
    *,
    actor_user_id: int | None = None,
    progress: tuple[str, str, str] | None = None,
) -> Broadcast | None:
    """Materialise the recipients and set the broadcast running; a second call (a double Confirm) changes nothing.

    `progress` is (platform, chat id, message id) of the card the runner keeps up to date."""
    now = utcnow()
    async with db.transaction() as session:
        broadcast = await session.get(Broadcast, broadcast_id, with_for_update=True)
        if broadcast is None:
            return None
        if broadcast.state != "draft":
            return broadcast
        segment = Segment.from_json(broadcast.segment)
        chosen = (
            _population()
            .add_columns(
                literal(broadcast_id, Integer), ChatIdentity.id, literal("pending", String), literal(0, Integer)
            )
            .where(
                segment.condition(now), User.status == "active", User.announcements.is_(True), _reachable(),
            )
        )
        await session.execute(
            insert(BroadcastRecipient).from_select(["broadcast_id", "identity_id", "state", "attempts"], chosen)
        )
        total = await session.scalar(
            select(func.count()).select_from(BroadcastRecipient).where(BroadcastRecipient.broadcast_id == broadcast_id)
        )
        broadcast.total = int(total or 0)
        broadcast.state = "running"
        broadcast.started_at = now
        if progress is not None:
            broadcast.progress_chat_id = f"{progress[0]}:{progress[1]}"[:64]
            broadcast.progress_message_id = str(progress[2])[:64]
        await audit.record(
            session, actor_user_id=actor_user_id or broadcast.created_by_user_id, action="broadcast",
            target_user_id=None, before={"state": "draft"},
            after={"broadcast": broadcast_id, "state": "running", "segment": broadcast.segment,
                   "recipients": broadcast.total, "paid": broadcast.paid},
        )
    kick(db)
    return broadcast


async def _change_state(
    db: Database, broadcast_id: int, actor_user_id: int | None, *, allowed: tuple[str, ...], to: str
) -> Broadcast | None:
    async with db.transaction() as session:
        broadcast = await session.get(Broadcast, broadcast_id, with_for_update=True)
        if broadcast is None or broadcast.state not in allowed:
            return None
        before = broadcast.state
        broadcast.state = to
        if to == "cancelled":
            broadcast.finished_at = utcnow()
            # Nobody is sending these any more; a runner holding claims marks its own as skipped when it stops.
            await session.execute(
                update(BroadcastRecipient)
                .where(BroadcastRecipient.broadcast_id == broadcast_id, BroadcastRecipient.state == "pending")
                .values(state="skipped", error="cancelled")
                .execution_options(synchronize_session=False)
            )
        if before != "draft":
            await audit.record(
                session, actor_user_id=actor_user_id, action=f"broadcast_{to}"[:32], target_user_id=None,
                before={"broadcast": broadcast_id, "state": before}, after={"broadcast": broadcast_id, "state": to},
            )
    kick(db)
    return broadcast


async def pause(db: Database, broadcast_id: int, *, actor_user_id: int | None = None) -> Broadcast | None:
    """Stop sending within a second (the runner checks four times a second); None when it was not running."""
    return await _change_state(db, broadcast_id, actor_user_id, allowed=("running",), to="paused")


async def resume(db: Database, broadcast_id: int, *, actor_user_id: int | None = None) -> Broadcast | None:
    return await _change_state(db, broadcast_id, actor_user_id, allowed=("paused",), to="running")


async def cancel(db: Database, broadcast_id: int, *, actor_user_id: int | None = None) -> Broadcast | None:
    """Drop a draft, or stop a running or paused broadcast for good; recipients not reached are `skipped`."""
    return await _change_state(db, broadcast_id, actor_user_id, allowed=("draft", "running", "paused"), to="cancelled")


async def get(session: AsyncSession, broadcast_id: int) -> Broadcast | None:
    return await session.get(Broadcast, broadcast_id, populate_existing=True)


async def recent(session: AsyncSession, limit: int = 5) -> list[Broadcast]:
    """Finished and cancelled broadcasts, newest first, with their figures."""
    return list(
        (
            await session.scalars(
                select(Broadcast)
                .where(Broadcast.state.in_(("finished", "cancelled")))
                .order_by(Broadcast.finished_at.desc(), Broadcast.id.desc())
                .limit(limit)
            )
        ).all()
    )


async def active(session: AsyncSession) -> list[Broadcast]:
    """Broadcasts running or paused right now."""
    return list(
        (
            await session.scalars(
                select(Broadcast).where(Broadcast.state.in_(("running", "paused"))).order_by(Broadcast.id)
            )
        ).all()
    )


async def recipient_states(session: AsyncSession, broadcast_id: int) -> dict[str, int]:
    """How many recipients are in each state (pending, sending, sent, failed, blocked, skipped)."""
    rows = (
        await session.execute(
            select(BroadcastRecipient.state, func.count())
            .where(BroadcastRecipient.broadcast_id == broadcast_id)
            .group_by(BroadcastRecipient.state)
        )
    ).all()
    return {str(state): int(count) for state, count in rows}


def left(broadcast: Broadcast) -> int:
    """Recipients not reached (still to go, or skipped by a cancel)."""
    return max(0, broadcast.total - broadcast.sent - broadcast.failed - broadcast.blocked)


# --- progress card ----------------------------------------------------------------------------------------------


def _duration(locale: str, seconds: float) -> Html:
    seconds = max(0, int(math.ceil(seconds)))
    if seconds >= 3600:
        return t(locale, "bc_duration_hours", hours=seconds // 3600, minutes=(seconds % 3600) // 60)
    if seconds >= 60:
        return t(locale, "bc_duration_minutes", minutes=seconds // 60, seconds=seconds % 60)
    return t(locale, "bc_duration_seconds", seconds=seconds)


def progress_text(broadcast: Broadcast, locale: str, *, rate: float | None = None) -> Html:
    """The progress card: state, sent, failed, blocked, left, current rate and time to go."""
    remaining = left(broadcast)
    lines = [
        t(locale, "bc_progress_title", id=broadcast.id, state=t(locale, f"bc_state_{broadcast.state}")),
        t(locale, "bc_progress_counts", sent=f"{broadcast.sent:,}", total=f"{broadcast.total:,}",
          failed=f"{broadcast.failed:,}", blocked=f"{broadcast.blocked:,}", left=f"{remaining:,}"),
    ]
    if broadcast.state == "running" and rate is not None:
        eta = _duration(locale, remaining / rate) if rate > 0.05 else t(locale, "bc_eta_unknown")
        lines.append(t(locale, "bc_progress_rate", rate=f"{rate:.1f}", eta=eta))
    if broadcast.paid:
        lines.append(t(locale, "bc_progress_paid"))
    return Html("\n".join(lines))


def progress_buttons(broadcast: Broadcast, locale: str) -> tuple[tuple[OutButton, ...], ...]:
    """Pause or Resume, and Cancel, while the broadcast can still change."""
    cancel_button = OutButton(t(locale, "bc_btn_cancel_run"), action=f"bc:stop:{broadcast.id}")
    if broadcast.state == "running":
        return ((OutButton(t(locale, "bc_btn_pause"), action=f"bc:pause:{broadcast.id}"), cancel_button),)
    if broadcast.state == "paused":
        return ((OutButton(t(locale, "bc_btn_resume"), action=f"bc:resume:{broadcast.id}"), cancel_button),)
    return ()


def summary_line(broadcast: Broadcast, locale: str) -> Html:
    """One line per finished broadcast for `/broadcast`'s list."""
    when = (broadcast.finished_at or broadcast.created_at).strftime("%Y-%m-%d %H:%M")
    preview = re.sub(r"<[^>]+>", "", broadcast.text)
    preview = html.unescape(preview).replace("\n", " ")
    preview = preview[:40] + ("…" if len(preview) > 40 else "")
    return t(
        locale, "bc_recent_line", id=broadcast.id, when=when, state=t(locale, f"bc_state_{broadcast.state}"),
        sent=f"{broadcast.sent:,}", total=f"{broadcast.total:,}", failed=f"{broadcast.failed:,}",
        blocked=f"{broadcast.blocked:,}", left=f"{left(broadcast):,}", preview=preview,
    )


# --- the shared rate budget -------------------------------------------------------------------------------------


class RateBudget:
    """A token bucket (GCRA) at one platform's rate, shared by ordinary sends (priority) and broadcasts (bulk).

    Priority callers reserve the next free slot at once; bulk callers only take a slot that is due now. So
    ordinary traffic waits at most one interval and a broadcast fills whatever is left.

    Sends are spaced evenly, a little closer than `1/rate` (`headway`), and one that woke late may take its
    slot up to a quarter interval (at least 5 ms) early (`slack`), so a busy event loop does not cost
    throughput; a sliding window caps all sends at `rate` per second. So every 31 consecutive sends span more
    than a second plus ~25 ms at 29/s: that, and the platform's last slot per second (30 vs 29), is the margin
    for network jitter. Priority sends count in the same window, so ordinary traffic and a broadcast together
    stay at `rate` per second.
    """

    def __init__(self, rate: float, *, slack: float = 0.25, headway: float = 1.05, window: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.interval = 1.0 / (rate * headway)
        self.window = window
        self.cap = max(1, math.floor(rate * window))
        # At high rates an interval is shorter than an event-loop turn; a few milliseconds of catch-up keep a
        # busy loop from costing throughput there (the window still caps the second).
        self._slack = max(slack * self.interval, 0.005)
        self._next = 0.0
        self._blocked_until = 0.0
        self._starts: deque[float] = deque()  # start times, ascending (every taker records a later time)
        self._bulk_turn = asyncio.Lock()
        self.taken = 0

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def hold(self, seconds: float) -> None:
        """Nobody sends for `seconds` (a flood wait from the platform)."""
        self._blocked_until = max(self._blocked_until, self._now() + max(0.0, seconds))

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self._now())

    def finished(self, started: float) -> None:
        """Report a send that began at `started` (monotonic) and just ended.

        One that took over `STALL_SECONDS` was almost certainly held in a flood wait inside the client library
        (python-telegram-bot's AIORateLimiter retries a 429 itself, holding every request meanwhile): the
        requests it held are reaching the platform together right now, so nobody starts another for a window,
        or that burst and our regular pace would add up to a fresh 429, and the next wait to a fresh burst."""
        if self._now() - started > STALL_SECONDS:
            self.hold(self.window)

    def _earliest(self, now: float) -> float:
        """The first moment a send may start: spacing, flood wait, and fewer than `cap` starts in the window."""
        while self._starts and self._starts[0] <= now - self.window:
            self._starts.popleft()
        slot = max(self._next, now - self._slack, self._blocked_until)
        if len(self._starts) >= self.cap:
            slot = max(slot, self._starts[-self.cap] + self.window)
        return slot

    def _take(self, slot: float, at: float) -> None:
        self._next = slot + self.interval
        self._starts.append(at)
        self.taken += 1

    async def acquire_priority(self) -> None:
        """Ordinary traffic: reserve the next slot now and wait for it (about one interval at most, bar a flood
        wait); the broadcast waits behind the reservation."""
        now = self._now()
        slot = self._earliest(now)
        self._take(slot, max(slot, now))
        if slot > now:
            await asyncio.sleep(slot - now)

    async def acquire_bulk(self, stopped: Callable[[], bool] | None = None) -> bool:
        """A broadcast's turn: wait for a slot nobody reserved; False as soon as `stopped()` says so."""
        # One bulk sender watches the clock at a time (the lock is FIFO): at 950/s, a hundred senders all waking
        # for every slot would spend the CPU the sends need.
        async with self._bulk_turn:
            while True:
                if stopped is not None and stopped():
                    return False
                now = self._now()
                slot = self._earliest(now)
                if slot <= now:
                    self._take(slot, now)
                    return True
                # Short naps: a pause, a cancel or a priority reservation is noticed within 50 ms.
                await asyncio.sleep(min(slot - now, 0.05))


class PacedSender:
    """Wraps a ChatSender so ordinary deliveries take priority slots from the platform's RateBudget."""

    def __init__(self, inner: ChatSender, budget: RateBudget) -> None:
        self.inner = inner
        self.budget = budget
        self.platform = inner.platform

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        await self.budget.acquire_priority()
        started = time.monotonic()
        try:
            return await self.inner.send(chat_id, message)
        except DeliveryError as error:
            if error.retry_after:
                self.budget.hold(error.retry_after)
            raise
        finally:
            self.budget.finished(started)


# --- the runner -------------------------------------------------------------------------------------------------

_runners: weakref.WeakSet[BroadcastRunner] = weakref.WeakSet()


def kick(db: Database) -> None:
    """Tell this process's runners on the same database to look for work now (after start, resume, pause)."""
    for runner in list(_runners):
        if runner.db.engine is db.engine or runner.db.url == db.url:
            runner.kick()


@dataclass
class _Recipient:
    identity_id: int
    platform: str
    chat_id: str
    attempts: int


@dataclass
class _Outcome:
    recipient: _Recipient
    state: str  # sent, failed, blocked, pending (to retry), skipped
    error: str | None = None


@dataclass
class _Job:
    broadcast_id: int
    paid: bool
    message: OutgoingMessage
    locale: str
    progress: tuple[str, str, str] | None
    figures: Broadcast
    stop_reason: str | None = None
    outcomes: list[_Outcome] = field(default_factory=list)
    in_flight: dict[asyncio.Task[None], _Recipient] = field(default_factory=dict)
    unsent: list[_Recipient] = field(default_factory=list)
    sent_times: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))
    started: float = field(default_factory=time.monotonic)
    backoff_until: float = 0.0
    failures_in_row: int = 0
    rewinds: int = 0  # bumped when retries are committed back to pending, so lanes restart their cursor
    last_edit: float = 0.0
    edit_task: asyncio.Task[None] | None = None
    edit_broken: bool = False
    poked: asyncio.Event = field(default_factory=asyncio.Event)  # a pause or cancel in this process: look now
    stopped_event: asyncio.Event = field(default_factory=asyncio.Event)

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


class BroadcastRunner:
    """Sends running broadcasts at the platform limit, exactly once per chat, resuming after restarts.

    `start()` adopts every running broadcast without a live lease, now and every `poll_interval` seconds (so a
    broadcast left by a crashed instance is taken over when its lease lapses); `kick()` makes it look at once.
    Each broadcast is sent by one task holding its lease: a lane per platform claims a few recipients at a time
    just before their turn, waits for a slot of the platform's RateBudget and sends; a ticker commits outcomes,
    renews the lease and reads the state four times a second, so Pause and Cancel stop new sends within 0.25 s.
    """

    def __init__(
        self,
        db: Database,
        senders: dict[str, ChatSender],
        metrics: Metrics | None = None,
        *,
        rate_per_second: float = TELEGRAM_RATE,
        paid_rate_per_second: float = TELEGRAM_PAID_RATE,
        discord_rate_per_second: float = DISCORD_RATE,
        other_rate_per_second: float = OTHER_RATE,
        budgets: dict[str, RateBudget] | None = None,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        tick_seconds: float = 0.25,
        progress_interval: float = 3.0,
        max_attempts: int = 6,
        send_timeout: float = 30.0,
        concurrency: int | None = None,
        instance_id: str | None = None,
    ) -> None:
        if paid_rate_per_second > 1000:
            raise ValueError("Telegram's paid broadcasts allow 1000 messages per second at most")
        self.db = db
        self.senders = dict(senders)
        self.metrics = metrics
        self.rates = {"telegram": rate_per_second, "discord": discord_rate_per_second}
        self.other_rate = other_rate_per_second
        self.paid_rate = paid_rate_per_second
        self.budgets: dict[str, RateBudget] = dict(budgets or {})
        for platform in self.senders:
            self.budgets.setdefault(platform, RateBudget(self.rates.get(platform, other_rate_per_second)))
        self.paid_budget = RateBudget(paid_rate_per_second)
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.tick_seconds = tick_seconds
        self.progress_interval = progress_interval
        self.max_attempts = max_attempts
        self.send_timeout = send_timeout
        self.concurrency = concurrency
        self.instance_id = (instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")[:64]
        self._jobs: dict[int, asyncio.Task[None]] = {}
        self._job_state: dict[int, _Job] = {}
        self._not_before: dict[int, float] = {}
        self._wakeup = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._abandoned = False
        self.messages_sent = 0  # by this instance, for tests and benchmarks
        _runners.add(self)

    # -- wiring helpers --

    def paced_senders(self) -> dict[str, ChatSender]:
        """The same senders for the outbox, drawing priority slots from the budgets broadcasts share."""
        return {platform: PacedSender(sender, self.budgets[platform]) for platform, sender in self.senders.items()}

    def _rate(self, platform: str, paid: bool) -> float:
        if paid and platform == "telegram":
            return self.paid_rate
        return self.budgets[platform].rate

    def _budget(self, platform: str, paid: bool) -> RateBudget:
        return self.paid_budget if paid and platform == "telegram" else self.budgets[platform]

    # -- lifecycle --

    @property
    def running(self) -> bool:
        return self._supervisor is not None and not self._supervisor.done()

    @property
    def active_broadcasts(self) -> set[int]:
        return {bid for bid, task in self._jobs.items() if not task.done()}

    async def start(self) -> None:
        """Adopt running broadcasts now (a restart resumes them) and keep looking until `stop()`."""
        if self.running:
            return
        self._stopping = False
        self._abandoned = False
        self._wakeup.set()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"broadcast-supervisor-{self.instance_id}")

    def kick(self) -> None:
        """Look for work now, and have every running job read its state now (a Pause pressed here)."""
        self._wakeup.set()
        for job in self._job_state.values():
            job.poked.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop sending: in-flight sends get `grace` seconds, outcomes are committed, claims and leases released
        so a restarted instance resumes at once."""
        self._stopping = True
        self._wakeup.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        for job in self._job_state.values():
            job.stop("shutdown")
        tasks = [task for task in self._jobs.values() if not task.done()]
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=grace + 5.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def abandon(self) -> None:
        """Stop at once as a crash would: nothing is committed and leases are left to lapse (tests, benchmarks)."""
        self._abandoned = True
        self._stopping = True
        tasks: list[asyncio.Task[Any]] = [t for t in (self._supervisor,) if t is not None]
        for job in self._job_state.values():
            tasks += list(job.in_flight)
            if job.edit_task is not None:
                tasks.append(job.edit_task)
        tasks += list(self._jobs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._supervisor = None

    async def wait(self, broadcast_id: int) -> None:
        """Until this instance's task for the broadcast has ended (finished, paused, cancelled or stopped)."""
        task = self._jobs.get(broadcast_id)
        if task is not None:
            await asyncio.shield(task)

    # -- adopting broadcasts --

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=self.poll_interval)
            except TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self.adopt()
                failures = 0
            except Exception:
                failures += 1
                log.exception("broadcast runner %s: looking for work failed", self.instance_id)
                await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))

    async def adopt(self) -> list[int]:
        """Take the lease on every running broadcast nobody holds (or whose holder's lease lapsed) and run it.

        Also the job the scheduler may call periodically; returns the broadcasts this call started."""
        now = utcnow()
        async with self.db.read() as session:
            candidates = list(
                await session.scalars(
                    select(Broadcast.id).where(
                        Broadcast.state == "running",
                        or_(
                            Broadcast.lease_owner.is_(None),
                            Broadcast.lease_until.is_(None),
                            Broadcast.lease_until < now,
                            Broadcast.lease_owner == self.instance_id,
                        ),
                    )
                )
            )
        started: list[int] = []
        for broadcast_id in candidates:
            if self._stopping or broadcast_id in self.active_broadcasts:
                continue
            if self._not_before.get(broadcast_id, 0.0) > time.monotonic():
                continue
            if await self._take_lease(broadcast_id):
                self._jobs[broadcast_id] = asyncio.create_task(
                    self._run(broadcast_id), name=f"broadcast-{broadcast_id}"
                )
                started.append(broadcast_id)
        return started

    async def _take_lease(self, broadcast_id: int) -> bool:
        now = utcnow()
        async with self.db.transaction() as session:
            taken = await session.scalar(
                update(Broadcast)
                .where(
                    Broadcast.id == broadcast_id,
                    Broadcast.state == "running",
                    or_(
                        Broadcast.lease_owner.is_(None),
                        Broadcast.lease_until.is_(None),
                        Broadcast.lease_until < now,
                        Broadcast.lease_owner == self.instance_id,
                    ),
                )
                .values(lease_owner=self.instance_id, lease_until=now + timedelta(seconds=self.lease_seconds))
                .returning(Broadcast.id)
                .execution_options(synchronize_session=False)
            )
        return taken is not None

    # -- one broadcast --

    async def _run(self, broadcast_id: int) -> None:
        job: _Job | None = None
        ticker: asyncio.Task[None] | None = None
        try:
            job = await self._prepare(broadcast_id)
            self._job_state[broadcast_id] = job
            ticker = asyncio.create_task(self._ticker(job), name=f"broadcast-{broadcast_id}-ticker")
            while not job.stopped():
                platforms = await self._pending_platforms(job)
                if not platforms:
                    await self._drain(job)
                    if not await self._pending_platforms(job) and not job.in_flight:
                        job.stop("finished")
                    continue
                await asyncio.gather(*(self._lane(job, platform) for platform in platforms))
                await self._drain(job)
        except asyncio.CancelledError:
            if self._abandoned:
                raise
            if job is not None:
                job.stop("shutdown")
        except Exception:
            log.exception("broadcast %s: runner %s failed; releasing it for 30 s", broadcast_id, self.instance_id)
            # Not adopted again at once by this instance: a lasting fault would otherwise log every second.
            self._not_before[broadcast_id] = time.monotonic() + 30.0
            if job is not None:
                job.stop("shutdown")
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            if job is not None and not self._abandoned:
                await self._finish(job)
            self._job_state.pop(broadcast_id, None)

    async def _prepare(self, broadcast_id: int) -> _Job:
        """Settle what a previous holder left and load what every send needs."""
        async with self.db.transaction() as session:
            interrupted = list(
                await session.scalars(
                    update(BroadcastRecipient)
                    .where(BroadcastRecipient.broadcast_id == broadcast_id, BroadcastRecipient.state == "sending")
                    .values(state="failed", error=INTERRUPTED)
                    .returning(BroadcastRecipient.identity_id)
                    .execution_options(synchronize_session=False)
                )
            )
            if interrupted:
                log.warning(
                    "broadcast %s: %d recipients were being sent when their runner stopped; marked failed, not "
                    "resent", broadcast_id, len(interrupted),
                )
                await session.execute(
                    update(Broadcast)
                    .where(Broadcast.id == broadcast_id)
                    .values(failed=Broadcast.failed + len(interrupted))
                    .execution_options(synchronize_session=False)
                )
            without_sender = select(ChatIdentity.id).where(ChatIdentity.platform.not_in(sorted(self.senders)))
            skipped = (
                await session.execute(
                    update(BroadcastRecipient)
                    .where(
                        BroadcastRecipient.broadcast_id == broadcast_id,
                        BroadcastRecipient.state == "pending",
                        BroadcastRecipient.identity_id.in_(without_sender),
                    )
                    .values(state="skipped", error="no front end for this platform")
                    .execution_options(synchronize_session=False)
                )
            ).rowcount
            if skipped:
                log.warning("broadcast %s: %d recipients on platforms without a front end skipped", broadcast_id,
                            skipped)
            broadcast = await session.get(Broadcast, broadcast_id, populate_existing=True)
            assert broadcast is not None
            creator = await session.get(User, broadcast.created_by_user_id)
            locale = creator.locale if creator is not None else "en"
            session.expunge(broadcast)
        return _Job(
            broadcast_id=broadcast_id, paid=bool(broadcast.paid), message=message_for(broadcast), locale=locale,
            progress=progress_ref(broadcast), figures=broadcast,
        )

    async def _pending_platforms(self, job: _Job) -> list[str]:
        async with self.db.read() as session:
            rows = await session.scalars(
                select(ChatIdentity.platform)
                .join(BroadcastRecipient, BroadcastRecipient.identity_id == ChatIdentity.id)
                .where(BroadcastRecipient.broadcast_id == job.broadcast_id, BroadcastRecipient.state == "pending")
                .distinct()
            )
            return [platform for platform in rows if platform in self.senders]

    def _concurrency(self, platform: str, paid: bool) -> int:
        if self.concurrency is not None:
            return self.concurrency
        # Enough sends in flight to keep the rate with ~250 ms round trips, no more.
        return max(4, min(128, math.ceil(self._rate(platform, paid) * 0.25)))

    async def _lane(self, job: _Job, platform: str) -> None:
        """Send one platform's recipients: claim a few ahead of their turn, take a slot, send.

        The next batch is claimed in the background while the current one is sent, so the claim's round trip
        never leaves a slot unused; at most two batches are claimed and unsent at any time."""
        sender = self.senders[platform]
        budget = self._budget(platform, job.paid)
        rate = self._rate(platform, job.paid)
        batch = max(1, min(500, math.ceil(rate * self.tick_seconds)))
        slots = asyncio.Semaphore(self._concurrency(platform, job.paid))
        queue: deque[_Recipient] = deque()
        refill: asyncio.Task[list[_Recipient] | None] | None = None
        exhausted = False
        cursor = 0
        rewinds_seen = job.rewinds
        try:
            while not job.stopped():
                if refill is None and not exhausted and len(queue) <= batch // 2:
                    if job.rewinds != rewinds_seen:
                        # Retries went back to pending behind the cursor: start over from the first chat.
                        cursor, rewinds_seen = 0, job.rewinds
                    refill = asyncio.create_task(self._claim(job, platform, batch, cursor))
                if refill is not None and (not queue or refill.done()):
                    claimed = await refill
                    refill = None
                    if claimed is None:
                        job.stop("lost")
                        break
                    if claimed:
                        cursor = claimed[-1].identity_id
                    elif cursor:
                        cursor = 0  # one more pass from the start before calling the lane done
                        continue
                    exhausted = not claimed
                    queue.extend(claimed)
                if not queue:
                    if exhausted:
                        return
                    continue
                await self._wait_backoff(job)
                await slots.acquire()
                if job.stopped():
                    slots.release()
                    break
                recipient = queue.popleft()
                task = asyncio.create_task(self._send(job, sender, budget, recipient, slots))
                job.in_flight[task] = recipient
        finally:
            if refill is not None:
                # Let a claim in progress end (cancelling it mid-transaction gains nothing) and release its rows.
                claimed = None
                with contextlib.suppress(Exception):
                    claimed = await asyncio.shield(refill)
                queue.extend(claimed or [])
            job.unsent.extend(queue)

    async def _claim(self, job: _Job, platform: str, limit: int, after: int = 0) -> list[_Recipient] | None:
        """Mark the next `limit` pending recipients after identity `after` `sending`; None when our lease is gone.

        `after` is the lane's keyset cursor: the primary key's range scan starts there instead of walking past
        every recipient already sent, which would make a 50,000-chat broadcast quadratic."""
        now = utcnow()
        async with self.db.transaction() as session:
            holder = await session.execute(
                select(Broadcast.state, Broadcast.lease_owner, Broadcast.lease_until)
                .where(Broadcast.id == job.broadcast_id)
                .with_for_update()
            )
            row = holder.first()
            if row is None or row.lease_owner != self.instance_id or row.lease_until is None or row.lease_until < now:
                return None
            if row.state != "running":
                job.stop(row.state)
                return []
            next_ids = (
                select(BroadcastRecipient.identity_id)
                .join(ChatIdentity, ChatIdentity.id == BroadcastRecipient.identity_id)
                .where(
                    BroadcastRecipient.broadcast_id == job.broadcast_id,
                    BroadcastRecipient.identity_id > after,
                    BroadcastRecipient.state == "pending",
                    ChatIdentity.platform == platform,
                )
                .order_by(BroadcastRecipient.identity_id)
                .limit(limit)
            )
            if session.bind.dialect.name == "postgresql":
                next_ids = next_ids.with_for_update(skip_locked=True, of=BroadcastRecipient)
                # asyncpg prepares statements, and after five runs PostgreSQL may switch to a generic plan that
                # ignores the broadcast id and the cursor (a hash join over every chat identity: 50-150 ms per
                # claim once a table grew faster than its statistics). Plan each claim for its own values.
                await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
            ids = list(await session.scalars(next_ids))
            if not ids:
                return []
            claimed = (
                await session.execute(
                    update(BroadcastRecipient)
                    .where(
                        BroadcastRecipient.broadcast_id == job.broadcast_id,
                        BroadcastRecipient.identity_id.in_(ids),
                        BroadcastRecipient.state == "pending",
                    )
                    .values(state="sending", attempts=BroadcastRecipient.attempts + 1)
                    .returning(BroadcastRecipient.identity_id, BroadcastRecipient.attempts)
                    .execution_options(synchronize_session=False)
                )
            ).all()
            attempts = {identity_id: count for identity_id, count in claimed}
            chats = (
                await session.execute(
                    select(ChatIdentity.id, ChatIdentity.chat_id).where(ChatIdentity.id.in_(list(attempts)))
                )
            ).all()
        found = {identity_id: chat_id for identity_id, chat_id in chats}
        return [
            _Recipient(identity_id, platform, str(found.get(identity_id) or ""), attempts[identity_id])
            for identity_id in sorted(attempts)
        ]

    async def _send(
        self, job: _Job, sender: ChatSender, budget: RateBudget, recipient: _Recipient, slots: asyncio.Semaphore
    ) -> None:
        task = asyncio.current_task()
        try:
            await self._wait_backoff(job)
            # The slot is taken here, in the task that sends at once: taken in the lane, a busy event loop could
            # start this task late while later ones start on time, bunching requests at the platform.
            if job.stopped() or not await budget.acquire_bulk(job.stopped):
                job.unsent.append(recipient)
                return
            outcome = await self._attempt(job, sender, budget, recipient)
            job.outcomes.append(outcome)
            self._count(recipient.platform, outcome.state)
        finally:
            slots.release()
            if task is not None:
                job.in_flight.pop(task, None)

    @staticmethod
    async def _wait_backoff(job: _Job) -> None:
        delay = job.backoff_until - time.monotonic()
        while delay > 0 and not job.stopped():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.stopped_event.wait(), delay)
            delay = job.backoff_until - time.monotonic()

    async def _attempt(self, job: _Job, sender: ChatSender, budget: RateBudget, recipient: _Recipient) -> _Outcome:
        if not recipient.chat_id:
            return _Outcome(recipient, "blocked", "no chat")
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.send_timeout):
                await sender.send(recipient.chat_id, job.message)
        except DeliveryError as error:
            budget.finished(started)
            return self._refused(job, budget, recipient, error)
        except TimeoutError:
            log.warning("broadcast %s: send to %s:%s timed out; not resent", job.broadcast_id, recipient.platform,
                        recipient.chat_id)
            return _Outcome(recipient, "failed", f"timed out: {INTERRUPTED}")
        except Exception as error:
            log.error("broadcast %s: send to %s:%s failed unexpectedly", job.broadcast_id, recipient.platform,
                      recipient.chat_id, exc_info=True)
            return _Outcome(recipient, "failed", f"{type(error).__name__}: {error}"[:256])
        budget.finished(started)
        job.sent_times.append(time.monotonic())
        job.failures_in_row = 0
        self.messages_sent += 1
        return _Outcome(recipient, "sent")

    def _refused(self, job: _Job, budget: RateBudget, recipient: _Recipient, error: DeliveryError) -> _Outcome:
        reason = error.reason[:256]
        if error.blocked:
            return _Outcome(recipient, "blocked", reason)
        if error.permanent:
            log.warning("broadcast %s: %s:%s refused for good: %s", job.broadcast_id, recipient.platform,
                        recipient.chat_id, reason)
            return _Outcome(recipient, "failed", reason)
        lowered = reason.lower()
        if "timed out" in lowered and "pool timeout" not in lowered:
            # The request may have reached the platform: the at-most-once rule applies.
            return _Outcome(recipient, "failed", f"timed out: {INTERRUPTED}")
        if error.retry_after is not None:
            # A flood wait holds the whole bot, ordinary traffic included.
            budget.hold(error.retry_after)
            job.backoff_until = max(job.backoff_until, time.monotonic() + error.retry_after)
            log.warning("broadcast %s: flood wait of %.1f s honoured", job.broadcast_id, error.retry_after)
        else:
            job.failures_in_row += 1
            delay = min(30.0, 0.5 * 2 ** min(job.failures_in_row - 1, 6))
            job.backoff_until = max(job.backoff_until, time.monotonic() + delay)
            log.warning("broadcast %s: %s:%s failed (%s); backing off %.1f s", job.broadcast_id, recipient.platform,
                        recipient.chat_id, reason, delay)
        if recipient.attempts >= self.max_attempts:
            return _Outcome(recipient, "failed", f"gave up after {recipient.attempts} attempts: {reason}"[:256])
        return _Outcome(recipient, "pending", reason)

    def _count(self, platform: str, outcome: str) -> None:
        if self.metrics is None:
            return
        counter = self.metrics.__dict__.get("_broadcast_messages")
        if counter is None:
            from prometheus_client import Counter

            counter = Counter(
                "cumapp_broadcast_messages_total", "Broadcast sends by platform and outcome", ["platform", "outcome"],
                registry=self.metrics.registry,
            )
            self.metrics.__dict__["_broadcast_messages"] = counter
        counter.labels(platform, outcome).inc()

    async def _drain(self, job: _Job) -> None:
        """Wait for the sends in flight, then commit their outcomes."""
        while job.in_flight:
            await asyncio.wait(set(job.in_flight), timeout=1.0)
        await self._tick(job, renew=not job.stopped())

    # -- committing --

    async def _ticker(self, job: _Job) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.poked.wait(), self.tick_seconds)
            job.poked.clear()
            try:
                await self._tick(job, renew=True)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("broadcast %s: committing progress failed (%d in a row)", job.broadcast_id, failures)
            if time.monotonic() - job.last_edit >= self.progress_interval:
                await self._edit_progress(job)

    async def _tick(self, job: _Job, *, renew: bool) -> None:
        """Commit outcomes (fenced by `attempts`, so a stale runner changes nothing), renew the lease, read the
        state: paused or cancelled stops this job."""
        outcomes, job.outcomes = job.outcomes, []
        now = utcnow()
        try:
            async with self.db.transaction() as session:
                counts = await self._record(session, outcomes, job.broadcast_id, now)
                if any(counts.values()):
                    await session.execute(
                        update(Broadcast)
                        .where(Broadcast.id == job.broadcast_id)
                        .values(
                            sent=Broadcast.sent + counts["sent"], failed=Broadcast.failed + counts["failed"],
                            blocked=Broadcast.blocked + counts["blocked"],
                        )
                        .execution_options(synchronize_session=False)
                    )
                statement = update(Broadcast).where(
                    Broadcast.id == job.broadcast_id, Broadcast.lease_owner == self.instance_id
                )
                if renew:
                    statement = statement.values(lease_until=now + timedelta(seconds=self.lease_seconds))
                else:
                    statement = statement.values(lease_owner=self.instance_id)
                row = (
                    await session.execute(
                        statement.returning(
                            Broadcast.state, Broadcast.total, Broadcast.sent, Broadcast.failed, Broadcast.blocked
                        ).execution_options(synchronize_session=False)
                    )
                ).first()
        except BaseException:
            job.outcomes[:0] = outcomes
            raise
        if any(outcome.state == "pending" for outcome in outcomes):
            job.rewinds += 1  # after the commit, so a lane restarting its cursor finds them pending
        if row is None:
            job.stop("lost")
            return
        figures = job.figures
        figures.state, figures.total, figures.sent, figures.failed, figures.blocked = (
            row.state, row.total, row.sent, row.failed, row.blocked,
        )
        if row.state != "running":
            job.stop(row.state)

    async def _record(
        self, session: AsyncSession, outcomes: list[_Outcome], broadcast_id: int, now: datetime
    ) -> dict[str, int]:
        counts = {"sent": 0, "failed": 0, "blocked": 0}
        groups: dict[tuple[str, str | None, int], list[int]] = {}
        for outcome in outcomes:
            key = (outcome.state, outcome.error, outcome.recipient.attempts)
            groups.setdefault(key, []).append(outcome.recipient.identity_id)
        blocked_ids: list[int] = []
        for (state, error, attempts), identity_ids in groups.items():
            values: dict[str, Any] = {"state": state, "error": error}
            if state == "sent":
                values["sent_at"] = now
            for chunk in _chunks(identity_ids, 500):
                applied = list(
                    await session.scalars(
                        update(BroadcastRecipient)
                        .where(
                            BroadcastRecipient.broadcast_id == broadcast_id,
                            BroadcastRecipient.identity_id.in_(chunk),
                            BroadcastRecipient.state == "sending",
                            BroadcastRecipient.attempts == attempts,
                        )
                        .values(**values)
                        .returning(BroadcastRecipient.identity_id)
                        .execution_options(synchronize_session=False)
                    )
                )
                if len(applied) < len(chunk):
                    log.warning(
                        "broadcast %s: %d outcomes (%s) arrived after their claim was settled elsewhere",
                        broadcast_id, len(chunk) - len(applied), state,
                    )
                if state in counts:
                    counts[state] += len(applied)
                if state == "blocked":
                    blocked_ids += applied
        if blocked_ids:
            # Skipped by the next broadcast's segment until they write to us again (accounts.get_or_create).
            await session.execute(
                update(ChatIdentity)
                .where(ChatIdentity.id.in_(blocked_ids), ChatIdentity.unreachable_at.is_(None))
                .values(unreachable_at=now)
                .execution_options(synchronize_session=False)
            )
        return counts

    async def _finish(self, job: _Job) -> None:
        """Leave the broadcast in a state the next holder (or nobody, when it is done) can pick up from."""
        reason = job.stop_reason or "shutdown"
        job.stop(reason)
        if job.in_flight:
            _, stuck = await asyncio.wait(set(job.in_flight), timeout=5.0)
            stuck_recipients = [job.in_flight[task] for task in stuck if task in job.in_flight]
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
            # Cancelled mid-send: the platform may have taken it, so it is settled as interrupted, never resent.
            job.outcomes += [_Outcome(recipient, "failed", INTERRUPTED) for recipient in stuck_recipients]
        try:
            await self._tick(job, renew=False)
        except Exception:
            log.exception("broadcast %s: committing the last outcomes failed; their claims will be settled by "
                          "the next holder", job.broadcast_id)
        reason = job.stop_reason or reason
        release_to = "skipped" if reason == "cancelled" else "pending"
        now = utcnow()
        try:
            async with self.db.transaction() as session:
                for (attempts,), ids in _group(job.unsent, lambda r: (r.attempts,)).items():
                    for chunk in _chunks(ids, 500):
                        await session.execute(
                            update(BroadcastRecipient)
                            .where(
                                BroadcastRecipient.broadcast_id == job.broadcast_id,
                                BroadcastRecipient.identity_id.in_(chunk),
                                BroadcastRecipient.state == "sending",
                                BroadcastRecipient.attempts == attempts,
                            )
                            .values(
                                state=release_to, attempts=BroadcastRecipient.attempts - 1,
                                error="cancelled" if reason == "cancelled" else None,
                            )
                            .execution_options(synchronize_session=False)
                        )
                if reason == "cancelled":
                    await session.execute(
                        update(BroadcastRecipient)
                        .where(BroadcastRecipient.broadcast_id == job.broadcast_id, BroadcastRecipient.state == "pending")
                        .values(state="skipped", error="cancelled")
                        .execution_options(synchronize_session=False)
                    )
                values: dict[str, Any] = {"lease_owner": None, "lease_until": None}
                mine = [Broadcast.id == job.broadcast_id, Broadcast.lease_owner == self.instance_id]
                if reason == "finished":
                    finished = await session.scalar(
                        update(Broadcast)
                        .where(*mine, Broadcast.state == "running")
                        .values(state="finished", finished_at=now, **values)
                        .returning(Broadcast.id)
                        .execution_options(synchronize_session=False)
                    )
                    if finished is None:
                        reason = "shutdown"
                if reason != "finished" and reason != "lost":
                    await session.execute(
                        update(Broadcast).where(*mine).values(**values).execution_options(synchronize_session=False)
                    )
                broadcast = await session.get(Broadcast, job.broadcast_id, populate_existing=True)
                if broadcast is not None:
                    session.expunge(broadcast)
                    job.figures = broadcast
        except Exception:
            log.exception("broadcast %s: releasing it failed; its lease will lapse", job.broadcast_id)
            return
        if reason in ("finished", "paused", "cancelled") or job.figures.state in ("finished", "cancelled"):
            await self._edit_progress(job, force=True, final=True)
        if reason == "finished":
            log.info("broadcast %s finished: %d sent, %d failed, %d blocked", job.broadcast_id, job.figures.sent,
                     job.figures.failed, job.figures.blocked)

    # -- the progress card --

    async def _edit_progress(self, job: _Job, *, force: bool = False, final: bool = False) -> None:
        """Edit the admin's progress card; at most one edit per `progress_interval`, never two at once."""
        if job.progress is None or job.edit_broken:
            return
        platform, chat_id, message_id = job.progress
        sender = self.senders.get(platform)
        if sender is None or (platform not in EDITABLE_PLATFORMS and not final):
            return
        if job.edit_task is not None and not job.edit_task.done():
            if not final:
                return
            with contextlib.suppress(Exception):
                await job.edit_task
        if not force and time.monotonic() - job.last_edit < self.progress_interval:
            return
        job.last_edit = time.monotonic()
        figures = job.figures
        message = OutgoingMessage(
            text=progress_text(figures, job.locale, rate=job.rate()),
            buttons=progress_buttons(figures, job.locale),
            edit_message_id=message_id if platform in EDITABLE_PLATFORMS else None,
        )

        async def edit() -> None:
            # Not charged to the budget: an edit is no new message, and one per 3 s is far below any limit.
            try:
                sent_id = await sender.send(chat_id, message)
                if message.edit_message_id and sent_id and str(sent_id) != message.edit_message_id:
                    # The card could not be edited any more (Discord, after its interaction expired) and came as
                    # a new message: keep editing that one rather than sending a new card every few seconds.
                    job.progress = (platform, chat_id, str(sent_id))
            except DeliveryError as error:
                if error.permanent and "not modified" not in error.reason.lower():
                    job.edit_broken = True
                log.warning("broadcast %s: progress card not updated: %s", job.broadcast_id, error.reason)
            except Exception:
                log.warning("broadcast %s: progress card not updated", job.broadcast_id, exc_info=True)

        job.edit_task = asyncio.create_task(edit(), name=f"broadcast-{job.broadcast_id}-progress")
        if final:
            await job.edit_task


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for index in range(0, len(items), size):
        yield items[index : index + size]


def _group(recipients: Iterable[_Recipient], key: Callable[[_Recipient], tuple[Any, ...]]) -> dict[tuple[Any, ...], list[int]]:
    groups: dict[tuple[Any, ...], list[int]] = {}
    for recipient in recipients:
        groups.setdefault(key(recipient), []).append(recipient.identity_id)
    return groups


def describe_count(count: SegmentCount, locale: str) -> Html:
    """`1,234 chats · left out: 3 opted out, 2 unreachable, 1 banned` for the segment step and the preview."""
    parts = []
    if count.opted_out:
        parts.append(t(locale, "bc_left_opted_out", count=f"{count.opted_out:,}"))
    if count.unreachable:
        parts.append(t(locale, "bc_left_unreachable", count=f"{count.unreachable:,}"))
    if count.banned:
        parts.append(t(locale, "bc_left_banned", count=f"{count.banned:,}"))
    recipients = t(locale, "bc_recipients", count=f"{count.recipients:,}")
    if not parts:
        return recipients
    return t(locale, "bc_recipients_left_out", recipients=recipients, reasons=Html(", ".join(parts)))


__all__ = [
    "DISCORD_RATE", "EDITABLE_PLATFORMS", "SEGMENT_KINDS", "TELEGRAM_PAID_RATE", "TELEGRAM_RATE", "BroadcastRunner",
    "DraftError", "PacedSender", "RateBudget", "Segment", "SegmentCount", "active",
    "broadcast_html", "cancel", "count_segments", "create_draft", "describe_count", "get", "kick", "left",
    "message_for", "parse_link_buttons", "parse_photo_url", "pause", "progress_buttons", "progress_ref",
    "progress_text", "recent", "recipient_states", "resume", "standard_segments", "start", "summary_line",
    "update_draft",
]
