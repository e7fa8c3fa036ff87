"""Business statistics for /stats: database aggregates per period and per hour or day, and PNG charts.

Every figure is computed by the database (COUNT/SUM with GROUP BY over date buckets); rows are never loaded into
Python. Percentiles use PostgreSQL's `percentile_cont`; on SQLite a window query returns only the (at most four)
rows around each percentile per bucket and the same linear interpolation is done here.

Definitions (kept here so the admin's figures and the tests agree):
* users: accounts not merged into another; active: seen in the period; new today: created since 00:00 UTC;
* revenue: money captured from holds (verifications, SMS, numbers) minus refunds of captured holds, when it
  happened; top-ups are prepaid credit, not revenue;
* provider cost: what the providers charge us: verifications that got a code (the others are refunded by the
  provider) plus the cost of every SMS in and out; margin = revenue - provider cost;
* verification outcomes: success (a code came), cancelled, expired, failed, open (still waiting);
* code-to-chat latency: `code_received_at` (provider event) → `code_delivered_at` (chat API accepted).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Float, case, cast, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from core.models import Hold, LedgerEntry, Message, User, Verification
from core.platform.clock import start_of_utc_day, utcnow
from core.platform.db import Database

PERIODS: dict[str, tuple[timedelta, str]] = {
    "24h": (timedelta(hours=24), "hour"),
    "7d": (timedelta(days=7), "day"),
    "30d": (timedelta(days=30), "day"),
}
DEFAULT_PERIOD = "7d"
_T = TypeVar("_T")
OUTCOMES = ("success", "cancelled", "expired", "failed", "open")
_SUCCESS_STATES = ("code_received", "completed")


@dataclass(frozen=True)
class Summary:
    """The figures of one period; money in integer cents, latencies in seconds."""

    period: str
    since: datetime
    users: int = 0
    active_users: int = 0
    new_today: int = 0
    new_in_period: int = 0
    revenue_cents: int = 0
    revenue_by_purpose: dict[str, int] = field(default_factory=dict)
    provider_cost_cents: int = 0
    verifications: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    sms_in: int = 0
    sms_out: int = 0
    latency_count: int = 0
    latency_p50: float | None = None
    latency_p95: float | None = None

    @property
    def margin_cents(self) -> int:
        return self.revenue_cents - self.provider_cost_cents

    @property
    def verifications_total(self) -> int:
        return sum(self.verifications.values())


@dataclass(frozen=True)
class Series:
    """Per-bucket series (hours for 24 h, days otherwise), oldest first, zeros where nothing happened."""

    period: str
    unit: str
    buckets: list[datetime]
    sms_in: list[int]
    sms_out: list[int]
    verifications: dict[str, list[int]]
    revenue_cents: list[int]
    cost_cents: list[int]
    latency_p50: list[float | None]
    latency_p95: list[float | None]


def period_bounds(period: str, now: datetime | None = None) -> tuple[datetime, str, list[datetime]]:
    """(start, bucket unit, bucket starts) of a period; the first bucket is the one `start` falls in."""
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}; allowed: {', '.join(PERIODS)}")
    length, unit = PERIODS[period]
    now = now or utcnow()
    since = now - length
    step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
    first = since.replace(minute=0, second=0, microsecond=0)
    if unit == "day":
        first = start_of_utc_day(since)
    buckets: list[datetime] = []
    moment = first
    while moment <= now:
        buckets.append(moment)
        moment += step
    return since, unit, buckets


# --- SQL building blocks -----------------------------------------------------------------------------------------


def _bucket(column: Any, unit: str, dialect: str) -> ColumnElement[Any]:
    """The UTC hour or day a timestamp falls in; literal (not bound) arguments so GROUP BY matches SELECT."""
    if dialect == "postgresql":
        # date_bin from a UTC midnight: half the CPU of date_trunc(timezone('UTC', …)) per row (PostgreSQL ≥ 14).
        return func.date_bin(literal_column(f"interval '1 {unit}'"), column,
                             literal_column("timestamptz '2000-01-01 00:00:00+00'"))
    pattern = "%Y-%m-%d %H:00:00" if unit == "hour" else "%Y-%m-%d 00:00:00"
    return func.strftime(literal_column(f"'{pattern}'"), column)


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _seconds_between(start: Any, end: Any, dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.date_part(literal_column("'epoch'"), end - start)
    # julianday() is a double in days: ~30 µs of noise, so milliseconds are all it honestly knows.
    return func.round((func.julianday(end) - func.julianday(start)) * 86400.0, 3)


def _outcome() -> ColumnElement[str]:
    return case(
        (Verification.state.in_(_SUCCESS_STATES), "success"),
        (Verification.state.in_(("requested", "active")), "open"),
        else_=Verification.state,
    )


def _index(buckets: list[datetime]) -> dict[datetime, int]:
    return {bucket: position for position, bucket in enumerate(buckets)}


def _interpolate(values: dict[int, float], count: int, fraction: float) -> float | None:
    """percentile_cont's linear interpolation from the rows at 1-based positions around `fraction`."""
    if count == 0:
        return None
    position = fraction * (count - 1)
    low, high = math.floor(position), math.ceil(position)
    if low + 1 not in values or high + 1 not in values:
        return None
    return values[low + 1] + (values[high + 1] - values[low + 1]) * (position - low)


# --- queries -----------------------------------------------------------------------------------------------------


async def _users(session: AsyncSession, since: datetime, now: datetime) -> dict[str, int]:
    today = start_of_utc_day(now)
    row = (
        await session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((User.last_seen_at >= since, 1), else_=0)), 0),
                func.coalesce(func.sum(case((User.created_at >= today, 1), else_=0)), 0),
                func.coalesce(func.sum(case((User.created_at >= since, 1), else_=0)), 0),
            ).where(User.merged_into_id.is_(None))
        )
    ).one()
    return {"users": int(row[0]), "active": int(row[1]), "today": int(row[2]), "period": int(row[3])}


async def _verifications(session: AsyncSession, since: datetime, unit: str, dialect: str) -> list[Any]:
    inner = (
        select(
            _bucket(Verification.created_at, unit, dialect).label("bucket"),
            _outcome().label("outcome"),
            case((Verification.state.in_(_SUCCESS_STATES), Verification.provider_cost_cents), else_=0).label("cost"),
        )
        .where(Verification.created_at >= since)
        .subquery()
    )
    return list(
        (
            await session.execute(
                select(inner.c.bucket, inner.c.outcome, func.count(), func.coalesce(func.sum(inner.c.cost), 0))
                .group_by(inner.c.bucket, inner.c.outcome)
            )
        ).all()
    )


async def _messages(session: AsyncSession, since: datetime, unit: str, dialect: str) -> list[Any]:
    inner = (
        select(
            _bucket(Message.created_at, unit, dialect).label("bucket"),
            Message.direction.label("direction"),
            Message.cost_cents.label("cost"),
        )
        .where(Message.created_at >= since)
        .subquery()
    )
    return list(
        (
            await session.execute(
                select(inner.c.bucket, inner.c.direction, func.count(), func.coalesce(func.sum(inner.c.cost), 0))
                .group_by(inner.c.bucket, inner.c.direction)
            )
        ).all()
    )


async def _revenue(session: AsyncSession, since: datetime, unit: str, dialect: str) -> list[Any]:
    """(bucket, purpose, captured minus refunded cents) per bucket and hold purpose."""
    inner = (
        select(
            _bucket(LedgerEntry.created_at, unit, dialect).label("bucket"),
            func.coalesce(Hold.purpose, literal_column("'other'")).label("purpose"),
            # A capture moves the balance down (negative amount); a refund gives it back (positive).
            (-LedgerEntry.amount_cents).label("revenue"),
        )
        .select_from(LedgerEntry)
        .outerjoin(Hold, Hold.id == LedgerEntry.hold_id)
        .where(LedgerEntry.created_at >= since, LedgerEntry.kind.in_(("capture", "refund")))
        .subquery()
    )
    return list(
        (
            await session.execute(
                select(inner.c.bucket, inner.c.purpose, func.coalesce(func.sum(inner.c.revenue), 0))
                .group_by(inner.c.bucket, inner.c.purpose)
            )
        ).all()
    )


def _latency_source(since: datetime, unit: str | None, dialect: str) -> Any:
    bucket = _bucket(Verification.code_received_at, unit, dialect) if unit else literal_column("'all'")
    return (
        select(
            bucket.label("bucket"),
            cast(
                _seconds_between(Verification.code_received_at, Verification.code_delivered_at, dialect), Float
            ).label("seconds"),
        )
        .where(
            Verification.code_received_at >= since,
            Verification.code_delivered_at.is_not(None),
        )
        .subquery()
    )


async def _latency(
    session: AsyncSession, since: datetime, unit: str | None, dialect: str
) -> dict[Any, tuple[int, float | None, float | None]]:
    """bucket → (count, median, p95); `unit=None` gives one bucket, "all", for the whole period."""
    source = _latency_source(since, unit, dialect)
    if dialect == "postgresql":
        rows = (
            await session.execute(
                select(
                    source.c.bucket,
                    func.count(),
                    func.percentile_cont(0.5).within_group(source.c.seconds),
                    func.percentile_cont(0.95).within_group(source.c.seconds),
                ).group_by(source.c.bucket)
            )
        ).all()
        return {row[0]: (int(row[1]), _float(row[2]), _float(row[3])) for row in rows}
    # SQLite: number the rows of each bucket in order and keep only those around the two percentiles.
    ranked = select(
        source.c.bucket,
        source.c.seconds,
        func.row_number().over(partition_by=source.c.bucket, order_by=source.c.seconds).label("position"),
        func.count().over(partition_by=source.c.bucket).label("total"),
    ).subquery()
    wanted = []
    for fraction in (0.5, 0.95):
        exact = (ranked.c.total - 1) * fraction
        wanted += [func.floor(exact) + 1, func.ceil(exact) + 1]
    rows = (
        await session.execute(
            select(ranked.c.bucket, ranked.c.position, ranked.c.total, ranked.c.seconds).where(
                or_(*(ranked.c.position == expression for expression in wanted))
            )
        )
    ).all()
    by_bucket: dict[Any, tuple[int, dict[int, float]]] = {}
    for bucket, position, total, seconds in rows:
        entry = by_bucket.setdefault(bucket, (int(total), {}))
        entry[1][int(position)] = float(seconds)
    return {
        bucket: (count, _interpolate(values, count, 0.5), _interpolate(values, count, 0.95))
        for bucket, (count, values) in by_bucket.items()
    }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# --- the public calls ----------------------------------------------------------------------------------------------


async def collect(db: Database, period: str = DEFAULT_PERIOD, *, now: datetime | None = None) -> tuple[Summary, Series]:
    """The summary and the per-bucket series of one period, from six aggregate queries."""
    now = now or utcnow()
    since, unit, buckets = period_bounds(period, now)
    position = _index(buckets)
    size = len(buckets)
    dialect = db.engine.dialect.name

    async def verifications(session: AsyncSession) -> tuple[list[Any], dict[Any, Any], dict[Any, Any]]:
        return (await _verifications(session, since, unit, dialect), await _latency(session, since, None, dialect),
                await _latency(session, since, unit, dialect))

    async def accounts(session: AsyncSession) -> tuple[dict[str, int], list[Any]]:
        return await _users(session, since, now), await _revenue(session, since, unit, dialect)

    async def messages(session: AsyncSession) -> list[Any]:
        return await _messages(session, since, unit, dialect)

    if dialect == "postgresql":
        # Three connections at once: the SMS aggregate (the largest table) runs beside the others, so the
        # figures take as long as the slowest query rather than the sum of all six.
        async def alone(query: Callable[[AsyncSession], Awaitable[_T]]) -> _T:
            async with db.read() as session:
                return await query(session)

        (verification_rows, latency_total, latency_rows), (users, revenue_rows), message_rows = await asyncio.gather(
            alone(verifications), alone(accounts), alone(messages)
        )
    else:
        async with db.read() as session:  # SQLite: one connection reads at a time anyway
            verification_rows, latency_total, latency_rows = await verifications(session)
            users, revenue_rows = await accounts(session)
            message_rows = await messages(session)

    def slot(bucket: Any) -> int | None:
        return position.get(_as_datetime(bucket))

    outcomes = {outcome: [0] * size for outcome in OUTCOMES}
    cost = [0] * size
    outcome_totals = dict.fromkeys(OUTCOMES, 0)
    cost_total = 0
    for bucket, outcome, count, spent in verification_rows:
        name = outcome if outcome in outcomes else "failed"
        outcome_totals[name] += int(count)
        cost_total += int(spent)
        index = slot(bucket)
        if index is not None:
            outcomes[name][index] += int(count)
            cost[index] += int(spent)
    sms_in, sms_out = [0] * size, [0] * size
    totals = {"inbound": 0, "outbound": 0}
    for bucket, direction, count, spent in message_rows:
        totals[direction] = totals.get(direction, 0) + int(count)
        cost_total += int(spent)
        index = slot(bucket)
        if index is not None:
            (sms_in if direction == "inbound" else sms_out)[index] += int(count)
            cost[index] += int(spent)
    revenue = [0] * size
    by_purpose: dict[str, int] = {}
    for bucket, purpose, amount in revenue_rows:
        by_purpose[str(purpose)] = by_purpose.get(str(purpose), 0) + int(amount)
        index = slot(bucket)
        if index is not None:
            revenue[index] += int(amount)
    p50: list[float | None] = [None] * size
    p95: list[float | None] = [None] * size
    for bucket, (_, median, high) in latency_rows.items():
        index = slot(bucket)
        if index is not None:
            p50[index], p95[index] = median, high
    overall = next(iter(latency_total.values()), (0, None, None))
    summary = Summary(
        period=period, since=since, users=users["users"], active_users=users["active"], new_today=users["today"],
        new_in_period=users["period"], revenue_cents=sum(by_purpose.values()), revenue_by_purpose=by_purpose,
        provider_cost_cents=cost_total, verifications=outcome_totals, sms_in=totals["inbound"],
        sms_out=totals["outbound"], latency_count=overall[0], latency_p50=overall[1], latency_p95=overall[2],
    )
    series = Series(
        period=period, unit=unit, buckets=buckets, sms_in=sms_in, sms_out=sms_out, verifications=outcomes,
        revenue_cents=revenue, cost_cents=cost, latency_p50=p50, latency_p95=p95,
    )
    return summary, series


# --- charts ------------------------------------------------------------------------------------------------------


def render_charts(series: Series, locale: str = "en") -> list[tuple[str, bytes]]:
    """Four PNG charts as (name, bytes): SMS in/out, verifications by outcome, revenue vs cost, latency."""
    # Pillow is loaded by the first /stats, not when the process starts.
    from core.admin.stats_charts import render_charts as draw

    return draw(series, locale)
