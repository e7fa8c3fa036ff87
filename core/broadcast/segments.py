"""Who a broadcast reaches: audience segments, how many chats each reaches and how many were left out and why."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from core.models import PLATFORMS, TIERS, ChatIdentity, User
from core.platform.clock import utcnow
from core.platform.i18n import Html, t

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


def population() -> Any:
    """Chat identities of live accounts; merged-away accounts are not people any more."""
    return select().select_from(ChatIdentity).join(User, User.id == ChatIdentity.user_id).where(
        User.merged_into_id.is_(None)
    )


def reachable() -> ColumnElement[bool]:
    return and_(ChatIdentity.chat_id.is_not(None), ChatIdentity.unreachable_at.is_(None))


async def count_segments(session: AsyncSession, segments: Sequence[Segment]) -> dict[Segment, SegmentCount]:
    """Every segment's counts from one GROUP BY (tier, platform, language, activity, why-left-out)."""
    now = utcnow()
    days = sorted({int(s.value) for s in segments if s.kind == "active"})
    reason = case(
        (User.status != "active", "banned"),
        (User.announcements.is_(False), "opted_out"),
        (~reachable(), "unreachable"),
        else_="ok",
    ).label("reason")
    active_flags = [
        case((User.last_seen_at >= now - timedelta(days=n), 1), else_=0).label(f"active_{n}") for n in days
    ]
    # Grouped in an outer query: PostgreSQL would not match a CASE with bound parameters in SELECT and GROUP BY.
    inner = population().add_columns(
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
