"""/stats figures against seeded data, its PNG charts, /health, the Prometheus gauges and the admin alerts."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from sqlalchemy import func, select

import bot.handlers.health
import bot.handlers.stats  # noqa: F401  (importing a flow module registers its commands and buttons)
from core.admin import alerts, health, stats
from core.models import AlertState, ChatIdentity, Message, OutboxDelivery, User, Verification
from core.money import ledger
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.outbox import OutgoingMessage
from core.services import Services
from tests.conftest import make_settings
from tests.harness import ADMIN_ID, buttons, telegram_app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def seed(db: Database) -> dict[str, Any]:
    """Known activity: five verifications with codes (latencies 1, 2, 3, 4 and 10 s), one of each other outcome,
    SMS in and out, captured and refunded money, and users of different ages."""
    now = utcnow()
    async with db.transaction() as session:
        old = User(created_at=now - timedelta(days=40), last_seen_at=now - timedelta(days=40))
        week = User(created_at=now - timedelta(days=3), last_seen_at=now - timedelta(days=2))
        today = User(created_at=now - timedelta(minutes=5), last_seen_at=now)
        merged = User(created_at=now, last_seen_at=now)
        session.add_all([old, week, today, merged])
        await session.flush()
        merged.merged_into_id = today.id

        def verification(n: int, state: str, hours_ago: float, latency: float | None = None) -> Verification:
            created = now - timedelta(hours=hours_ago)
            received = created + timedelta(seconds=30) if latency is not None else None
            return Verification(
                user_id=today.id, provider="sandbox", service="svc", service_name="Service", state=state,
                price_cents=100, provider_cost_cents=60, idempotency_key=f"v{n}", created_at=created,
                code_received_at=received,
                code_delivered_at=received + timedelta(seconds=latency) if received and latency else None,
            )

        session.add_all([
            verification(1, "completed", 1, 1.0), verification(2, "completed", 2, 2.0),
            verification(3, "code_received", 3, 3.0), verification(4, "completed", 30, 4.0),
            verification(5, "completed", 50, 10.0), verification(6, "cancelled", 4),
            verification(7, "expired", 5), verification(8, "failed", 60), verification(9, "active", 0.5),
            verification(10, "completed", 24 * 20, 7.0),  # 20 days ago: only in the 30-day view
        ])

        def sms(n: int, direction: str, hours_ago: float, cost: int) -> Message:
            return Message(
                user_id=today.id, direction=direction, provider="sandbox", provider_message_id=f"m{n}",
                from_e164="+15550000001", to_e164="+15550000002", body="hi", status="delivered",
                cost_cents=cost, created_at=now - timedelta(hours=hours_ago),
            )

        session.add_all([sms(1, "inbound", 1, 0), sms(2, "inbound", 2, 1), sms(3, "outbound", 3, 2),
                         sms(4, "outbound", 26, 2), sms(5, "inbound", 24 * 10, 1)])
        await ledger.post(session, today.id, 10_000, kind="topup", idempotency_key="topup")
        first = await ledger.place_hold(session, today.id, 300, purpose="verification", idempotency_key="h1")
        second = await ledger.place_hold(session, today.id, 1_200, purpose="number", idempotency_key="h2")
        third = await ledger.place_hold(session, today.id, 50, purpose="sms", idempotency_key="h3")
        released = await ledger.place_hold(session, today.id, 999, purpose="verification", idempotency_key="h4")
        for hold in (first, second, third):
            await ledger.capture(session, hold.id)
        await ledger.release(session, released.id)
        await ledger.refund(session, first.id)
    return {"now": now}


# --- figures --------------------------------------------------------------------------------------------------------


async def test_figures_match_the_database_for_each_period(db: Database) -> None:
    await seed(db)
    day, day_series = await stats.collect(db, "24h")
    assert (day.users, day.active_users, day.new_today, day.new_in_period) == (3, 1, 1, 1)
    assert day.verifications == {"success": 3, "cancelled": 1, "expired": 1, "failed": 0, "open": 1}
    assert (day.sms_in, day.sms_out) == (2, 1)
    # Captured 300 + 1,200 + 50, refunded 300: the release is no revenue and the top-up is prepaid credit.
    assert day.revenue_cents == 1_250
    assert day.revenue_by_purpose == {"verification": 0, "number": 1_200, "sms": 50}
    assert day.provider_cost_cents == 3 * 60 + 0 + 1 + 2
    assert day.margin_cents == 1_250 - 183
    assert day.latency_count == 3 and day.latency_p50 == pytest.approx(2.0) and day.latency_p95 == pytest.approx(2.9)
    assert len(day_series.buckets) == 25 and day_series.unit == "hour"
    assert sum(day_series.sms_in) == 2 and sum(day_series.sms_out) == 1
    assert sum(day_series.verifications["success"]) == 3 and sum(day_series.cost_cents) == 183
    assert sum(day_series.revenue_cents) == 1_250 and day_series.revenue_cents[-1] == 1_250

    week, week_series = await stats.collect(db, "7d")
    assert (week.users, week.active_users, week.new_in_period) == (3, 2, 2)
    assert week.verifications == {"success": 5, "cancelled": 1, "expired": 1, "failed": 1, "open": 1}
    assert (week.sms_in, week.sms_out) == (2, 2)
    assert week.provider_cost_cents == 5 * 60 + 1 + 2 + 2
    # percentile_cont over 1, 2, 3, 4, 10 s: the median is 3 s, p95 is 4 + 0.8 × 6 = 8.8 s.
    assert week.latency_p50 == pytest.approx(3.0) and week.latency_p95 == pytest.approx(8.8)
    assert len(week_series.buckets) == 8 and week_series.unit == "day"
    assert sum(sum(values) for values in week_series.verifications.values()) == 9
    assert [value for value in week_series.latency_p50 if value is not None]

    month, _ = await stats.collect(db, "30d")
    assert month.verifications["success"] == 6 and month.sms_in == 3 and month.latency_count == 6
    assert month.users == 3 and month.active_users == 2


async def test_empty_database_gives_zeros_not_errors(db: Database) -> None:
    summary, series = await stats.collect(db, "30d")
    assert summary.users == 0 and summary.revenue_cents == 0 and summary.latency_p50 is None
    assert len(series.buckets) == 31 and not any(series.sms_in)
    charts = stats.render_charts(series, "es")
    assert [name for name, _ in charts] == ["sms", "verifications", "revenue", "latency"]
    assert all(png.startswith(PNG_SIGNATURE) for _, png in charts)


def test_charts_draw_what_the_series_holds() -> None:
    """Bars in each series' colour, a refund-only bucket below zero, gaps where no code came: 800×400 PNGs."""
    from PIL import Image

    since, unit, buckets = stats.period_bounds("7d")
    size = len(buckets)
    series = stats.Series(
        period="7d", unit=unit, buckets=buckets, sms_in=[0] * (size - 1) + [40], sms_out=[0] * size,
        verifications={o: [1] * size if o == "failed" else [0] * size for o in stats.OUTCOMES},
        revenue_cents=[-500, *([1_000] * (size - 1))], cost_cents=[0] * size,
        latency_p50=[None] * size, latency_p95=[None] * (size - 1) + [2.5],
    )

    def colours(png: bytes) -> set[tuple[int, int, int]]:
        with Image.open(io.BytesIO(png)) as image:
            assert image.size == (800, 400)
            return {rgb for _, rgb in image.convert("RGB").getcolors(1 << 16) or []}

    def near(found: set[tuple[int, int, int]], hex_colour: str) -> bool:
        want = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
        return any(sum(abs(a - b) for a, b in zip(rgb, want, strict=True)) < 24 for rgb in found)

    charts = dict(stats.render_charts(series, "es"))
    assert list(charts) == ["sms", "verifications", "revenue", "latency"]
    sms, verifications = colours(charts["sms"]), colours(charts["verifications"])
    assert near(sms, "#2b83ba") and near(sms, "#fdae61")  # the "in" bar, and the legend's "out" swatch
    assert near(verifications, "#d7191c")
    # An empty series still draws axes and legends; the charts differ from it where the data is.
    empty = dict(stats.render_charts(_empty_like(series), "es"))
    assert all(charts[name] != empty[name] for name in charts)


def _empty_like(series: stats.Series) -> stats.Series:
    size = len(series.buckets)
    return stats.Series(
        period=series.period, unit=series.unit, buckets=series.buckets, sms_in=[0] * size, sms_out=[0] * size,
        verifications={o: [0] * size for o in stats.OUTCOMES}, revenue_cents=[0] * size, cost_cents=[0] * size,
        latency_p50=[None] * size, latency_p95=[None] * size,
    )


# --- /stats and /health through the Telegram front end -------------------------------------------------------------


def _decode_png(data: bytes) -> tuple[int, ...]:
    from PIL import Image

    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes it all: a truncated or corrupt PNG fails here
        return (image.height, image.width, len(image.getbands()))


async def test_stats_sends_a_summary_and_four_png_charts(db: Database) -> None:
    await seed(db)
    async with telegram_app(db) as h:
        admin = h.user(ADMIN_ID)
        since = len(h.fake.calls)
        summary = await h.command(admin, "/stats", timeout=15)
        text = summary["text"]
        assert "Statistics · last 7 days" in text
        assert "Users: 4" in text  # the three seeded accounts and the admin's own, just created
        assert "Revenue: $12.50 · provider cost $3.05 · margin $9.45" in text
        assert "Verifications: 9 · 5 with a code, 1 cancelled, 1 expired, 1 failed, 1 open" in text
        assert "SMS: 2 in · 2 out" in text and "median 3.0 s · p95 8.8 s (5 codes)" in text
        assert buttons(summary) == {"24 h": "st:24h", "• 7 days •": "st:7d", "30 days": "st:30d"}
        photos = [await h.fake.wait_for("sendPhoto", since=since, timeout=15)]
        while len(photos) < 4:
            photos.append(await h.fake.wait_for(
                lambda c: c.method == "sendPhoto" and c not in photos, since=since, timeout=15))
        for call in photos:
            height, width, _ = _decode_png(call.files["photo"].content)
            assert (width, height) == (800, 400)
        assert "SMS in and out per day" in photos[0].params["caption"]

        since = len(h.fake.calls)
        await h.press(admin, summary, "st:24h", timeout=15)
        edited = await h.fake.wait_for(lambda c: c.method == "editMessageText" and c.chat_id == ADMIN_ID, since=since)
        assert "last 24 hours" in edited.params["text"] and "Verifications: <b>6</b>" in edited.params["text"]
        hourly = await h.fake.wait_for("sendPhoto", since=since, timeout=15)
        assert "per hour" in hourly.params["caption"]
        _decode_png(hourly.files["photo"].content)


class _Provider:
    def __init__(self, name: str, balance: int | None = None, error: Exception | None = None) -> None:
        self.name = name
        self.balance = balance
        self.error = error
        self.calls = 0

    async def balance_cents(self) -> int | None:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.balance

    async def close(self) -> None:
        return None


async def test_health_shows_providers_balances_outbox_and_errors(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with telegram_app(db, low_balance_threshold_cents=1_000) as h:
        await h.dispatcher.stop()  # keep the queued deliveries queued
        # Stand-ins with known balances for the providers the harness built.
        monkeypatch.setattr(h.services.verification, "provider", _Provider("textverified", balance=500))
        monkeypatch.setattr(h.services.messaging, "providers", {
            "twilio": _Provider("twilio", balance=12_345), "vonage": _Provider("vonage", error=TimeoutError("slow")),
        })
        async with db.transaction() as session:
            for n in range(2):
                await outbox.enqueue(session, platform="telegram", chat_id=str(7000 + n), kind="sms",
                                     message=OutgoingMessage(text="hi"))
            parked = await outbox.enqueue(session, platform="telegram", chat_id="7100", kind="sms",
                                          message=OutgoingMessage(text="x"))
            assert parked is not None
            parked.state = "parked"
        admin = h.user(ADMIN_ID)
        answer = await h.command(admin, "/health", timeout=15)
        text = answer["text"]
        assert "Health · CumApp" in text and "Database: ✅" in text
        assert "textverified: ✅" in text and "balance $5.00 (below $10.00)" in text
        assert "twilio: ✅" in text and "balance $123.45" in text
        assert "vonage: ❌ TimeoutError: slow" in text
        assert "Outbox: 2 waiting (0 being sent)" in text and "· 1 parked" in text
        assert "deliveries 1/3 failed (33.3%)" in text
        assert buttons(answer) == {"📤 Retry 1 parked": "hl:retry", "🔄 Refresh": "hl:refresh"}
        await h.press(admin, answer, "hl:refresh")
        await asyncio.sleep(0.3)  # the same figures leave the message as it was ("not modified" is fine)
        assert "Outbox: 2 waiting" in h.screen(ADMIN_ID)["text"]

        exposition = generate_latest(h.services.metrics.registry).decode()
        assert 'cumapp_provider_balance_cents{kind="verification",provider="textverified"} 500.0' in exposition
        assert 'cumapp_provider_up{kind="sms",provider="vonage"} 0.0' in exposition
        assert "cumapp_outbox_parked 1.0" in exposition
        details = (await health.collect(h.services)).as_dict()
        assert details["outbox"]["pending"] == 2 and details["providers"][0]["low_balance"] is True


# --- alerts ---------------------------------------------------------------------------------------------------------


async def _admin(db: Database) -> User:
    async with db.transaction() as session:
        admin = User(role="admin")
        session.add(admin)
        await session.flush()
        session.add(ChatIdentity(user_id=admin.id, platform="telegram", platform_user_id="1", chat_id="1"))
        session.add(User())  # a plain user is never alerted
    return admin


async def _alerts(db: Database) -> int:
    async with db.read() as session:
        return int(await session.scalar(
            select(func.count()).select_from(OutboxDelivery).where(OutboxDelivery.kind == "alert")) or 0)


async def test_alerts_are_deduplicated_per_key_and_capped_per_kind(services: Services) -> None:
    db = services.db
    await _admin(db)
    settings = services.settings
    async with db.transaction() as session:
        assert await alerts.alert_admins(session, settings, kind="provider down", key="twilio", text="down")
        assert not await alerts.alert_admins(session, settings, kind="provider down", key="twilio", text="down")
    assert await _alerts(db) == 1
    async with db.transaction() as session:
        sent = [await alerts.alert_admins(session, settings, kind="delivery parked", key=f"chat{n}", text="x")
                for n in range(6)]
    assert sent == [True, True, True, False, False, False]
    assert await _alerts(db) == 4
    async with db.read() as session:
        held = await session.get(AlertState, ("delivery parked", "chat5"))
        assert held is not None and held.suppressed == 1


@pytest.mark.postgres_only
async def test_the_same_new_alert_raised_twice_at_once_is_sent_once(services: Services) -> None:
    db = services.db
    await _admin(db)
    barrier = asyncio.Barrier(2)

    async def raise_alert() -> bool:
        async with db.transaction() as session:
            await barrier.wait()
            return await alerts.alert_admins(session, services.settings, kind="unknown destination",
                                             key="+15550001", text="who?")

    results = await asyncio.gather(raise_alert(), raise_alert())
    assert sorted(results) == [False, True]
    assert await _alerts(db) == 1


async def test_health_alerts_low_balance_and_a_provider_down_once(db: Database) -> None:
    settings = make_settings(db.url, low_balance_threshold_cents=1_000)
    await _admin(db)
    failing = _Provider("vonage", error=ConnectionError("refused"))
    services = SimpleNamespace(
        db=db, settings=settings, metrics=None, uptime_seconds=5.0,
        verification=SimpleNamespace(provider=_Provider("textverified", balance=250)),
        messaging=SimpleNamespace(providers={"vonage": failing}),
    )
    queued = []
    for _ in range(health.DOWN_AFTER_FAILURES + 1):
        queued += await health.check_and_alert(services)
    assert queued.count("provider balance") == 1 and queued.count("provider down") == 1
    assert failing.calls == health.DOWN_AFTER_FAILURES + 1
    async with db.read() as session:
        texts = [row.payload["text"] for row in await session.scalars(select(OutboxDelivery))]
    assert any("$2.50, below the threshold of $10.00" in body for body in texts)
