"""Admin flow /stats: a short summary of users, money, verifications, SMS and code-to-chat latency, and PNG charts
for the last 24 hours, 7 days or 30 days (buttons switch the period)."""

from __future__ import annotations

import asyncio

from bot.handlers.router import Request, action, command
from bot.handlers.screens import Button, Screen, toast
from core.admin import stats
from core.platform.i18n import Html, money

PURPOSES = ("verification", "sms", "number")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_text(req: Request, summary: stats.Summary) -> Html:
    """The summary message; every figure comes from `stats.collect`."""
    v = summary.verifications
    lines = [
        req.t("st_title", period=req.t(f"st_period_{summary.period}")),
        req.t("st_users", users=f"{summary.users:,}", active=f"{summary.active_users:,}",
              today=f"{summary.new_today:,}", new=f"{summary.new_in_period:,}"),
        req.t("st_money", revenue=money(summary.revenue_cents), cost=money(summary.provider_cost_cents),
              margin=money(summary.margin_cents)),
    ]
    parts = [
        req.t(f"st_purpose_{purpose}", amount=money(summary.revenue_by_purpose[purpose]))
        for purpose in PURPOSES if summary.revenue_by_purpose.get(purpose)
    ]
    if parts:
        lines.append(req.t("st_revenue_split", parts=Html(", ".join(parts))))
    lines.append(
        req.t("st_verifications", total=f"{summary.verifications_total:,}", success=f"{v['success']:,}",
              cancelled=f"{v['cancelled']:,}", expired=f"{v['expired']:,}", failed=f"{v['failed']:,}",
              open=f"{v['open']:,}")
    )
    lines.append(req.t("st_sms", inbound=f"{summary.sms_in:,}", outbound=f"{summary.sms_out:,}"))
    if summary.latency_count:
        lines.append(req.t("st_latency", p50=_seconds(summary.latency_p50), p95=_seconds(summary.latency_p95),
                           count=f"{summary.latency_count:,}"))
    else:
        lines.append(req.t("st_latency_none"))
    return Html("\n".join(lines))


def _period_buttons(req: Request, current: str) -> list[list[Button]]:
    row = []
    for period in stats.PERIODS:
        label = req.t(f"st_btn_{period}")
        row.append(Button(f"• {label} •" if period == current else label, action=f"st:{period}"))
    return [row]


async def _stats(req: Request, period: str) -> list[Screen]:
    summary, series = await stats.collect(req.db, period)
    # Drawing the charts is CPU work (~40 ms): off the event loop, so other chats keep being answered meanwhile.
    charts = await asyncio.to_thread(stats.render_charts, series, req.locale)
    unit = req.t(f"st_unit_{series.unit}")
    screens = [Screen(summary_text(req, summary), buttons=_period_buttons(req, period), edit=req.is_button)]
    for name, png in charts:
        screens.append(Screen(req.t(f"st_caption_{name}", unit=unit), photo=png, photo_name=f"{name}-{period}.png"))
    return screens


@command("stats", admin=True)
async def stats_command(req: Request) -> list[Screen]:
    """Summary and charts; `/stats 24h|7d|30d` picks the period (7 days by default)."""
    period = req.args[0].lower() if req.args and req.args[0].lower() in stats.PERIODS else stats.DEFAULT_PERIOD
    return await _stats(req, period)


@action("st", admin=True)
async def stats_period(req: Request) -> list[Screen] | Screen:
    """The period buttons under the summary."""
    period = req.args[0] if req.args else ""
    if period not in stats.PERIODS:
        return toast(req.t("error_stale_button"))
    return await _stats(req, period)
